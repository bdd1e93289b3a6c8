"""A peer says at WARNING, the default level of `syncws peer`, when it loses its server and when it is back."""

from __future__ import annotations

import logging

import pytest

import syncws

from ..helpers import wait_for
from ..peers import Env

pytestmark = pytest.mark.timeout(30)


def test_a_peer_warns_when_it_loses_its_server_and_when_it_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    """The server stopped: one WARNING naming the URL and the close code; a new server on the port: one WARNING saying it reconnected."""
    env = Env()
    port = env.server.port
    service = syncws.RemoteService(env.url, backoff_min=0.05, backoff_max=0.2)
    envs = [env]
    caplog.set_level(logging.WARNING, logger="syncws.peer")
    try:
        service.start(timeout=10)
        env.server.stop()
        assert wait_for(lambda: not service.connected, 5)
        assert wait_for(lambda: any("lost the connection to" in r.getMessage() for r in caplog.records), 5)
        lost = [r for r in caplog.records if "lost the connection to" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.WARNING
        assert env.url in lost[0].getMessage() and "code 1001" in lost[0].getMessage()
        envs.append(Env(port=port))
        assert wait_for(lambda: service.connected, 10)
        assert wait_for(lambda: any("reconnected to" in r.getMessage() for r in caplog.records), 5)
        back = [r for r in caplog.records if "reconnected to" in r.getMessage()]
        assert len(back) == 1 and back[0].levelno == logging.WARNING and env.url in back[0].getMessage()
    finally:
        service.stop()
        for e in envs:
            e.close()

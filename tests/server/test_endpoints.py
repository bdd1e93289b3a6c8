"""The ready-made endpoints of syncws.endpoints, mainly the /call gateway: timeouts, bad requests, failures."""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import syncws
from syncws.server.endpoints import CallGatewayHandler, gateway_timeout

pytestmark = pytest.mark.timeout(30)


class Gateway:
    """A started server with /wsData, its RequestHandler, a /call gateway and an in-process peer."""

    def __init__(self) -> None:
        self.server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), close_timeout=1.0).start()
        self.rh = syncws.RequestHandler("wsData", self.server)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=self.rh.callback)
        #: (name, "open"/"close") of the gateway's connections.
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.server.add_handler("/call", CallGatewayHandler, name="call", request_handler=self.rh, connNotify=lambda *e: self.events.put(e))
        #: Set by the peer's "block" command once it runs; it then waits for ``release``.
        self.blocked = threading.Event()
        self.release = threading.Event()
        self.calls = 0  # requests the peer received; guarded by calls_lock
        self.calls_lock = threading.Lock()
        self.service = syncws.RemoteService(self.server.url + "/wsData", backoff_min=0.05, backoff_max=0.2)
        self.service.register("echo", self._echo)
        self.service.register("block", self._block)
        self.service.start(timeout=10)

    def _echo(self, msg: dict[str, Any]) -> Any:
        with self.calls_lock:
            self.calls += 1
        return msg.get("data")

    def _block(self, msg: dict[str, Any]) -> str:
        self.blocked.set()
        assert self.release.wait(20), "the test never released the block command"
        return "released"

    def wait_event(self, kind: str, timeout: float = 10) -> None:
        """Wait until a gateway connection reports ``kind`` ("open" or "close")."""
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            if self.events.get(timeout=max(0.01, deadline - time.monotonic())) == ("call", kind):
                return
        raise AssertionError(f"no {kind!r} event")

    def ask(self, text: str, timeout: float = 10) -> dict[str, Any]:
        """Send ``text`` to /call on a fresh connection; the JSON answer."""
        conn = syncws.connect(self.server.url + "/call")
        try:
            conn.send(text)
            reply = conn.recv(timeout=timeout)
        finally:
            conn.close()
        assert isinstance(reply, str), reply
        return dict(json.loads(reply))

    def close(self) -> None:
        self.release.set()
        self.service.stop()
        self.server.stop()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    """A Gateway, stopped afterwards."""
    g = Gateway()
    try:
        yield g
    finally:
        g.close()


def test_gateway_timeout_values() -> None:
    """gateway_timeout takes any non-negative number (huge ones and inf as None: forever) and refuses NaN, negatives and non-numbers."""
    assert gateway_timeout(None) is None
    assert gateway_timeout(0) == 0.0 and gateway_timeout(2.5) == 2.5
    for forever in (math.inf, 1e300, 10**400, threading.TIMEOUT_MAX * 2):
        assert gateway_timeout(forever) is None
    for bad in (math.nan, -1, -0.5, -math.inf, -(10**400), "5", True, [1], {}):
        with pytest.raises(ValueError):
            gateway_timeout(bad)


@pytest.mark.parametrize("timeout_json", ["Infinity", "1e999", "1e300", "1" + "0" * 400, "null"], ids=["Infinity", "1e999", "1e300", "10**400", "null"])
def test_gateway_infinite_timeout_waits_for_the_reply(gateway: Gateway, timeout_json: str) -> None:
    """A /call request with an infinite or huge timeout waits for the peer's reply and gets status 200."""
    conn = syncws.connect(gateway.server.url + "/call")
    try:
        conn.send(f'{{"cmd": "block", "timeout": {timeout_json}}}')
        assert gateway.blocked.wait(10), "the request never reached the peer"
        gateway.release.set()
        reply = json.loads(str(conn.recv(timeout=10)))
    finally:
        conn.close()
    assert reply["status"] == 200 and reply["data"] == "released", reply


@pytest.mark.parametrize("timeout_json", ["NaN", "-1", "-Infinity", '"5"', "true", "[]"])
def test_gateway_answers_bad_timeouts_with_400(gateway: Gateway, timeout_json: str) -> None:
    """A /call request whose timeout is NaN, negative or not a number gets status 400 and never reaches the peer."""
    reply = gateway.ask(f'{{"cmd": "echo", "data": 1, "timeout": {timeout_json}}}')
    assert reply["status"] == 400 and "timeout" in reply["error"], reply
    assert gateway.ask('{"cmd": "echo", "data": 2, "timeout": 5}') == {"cmd": "echo", "callId": 1, "status": 200, "data": 2}
    with gateway.calls_lock:
        assert gateway.calls == 1


def test_gateway_answers_500_on_an_unexpected_error(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while forwarding a request is answered with status 500, and the gateway goes on working."""

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("injected fault")

    with monkeypatch.context() as patch:
        patch.setattr(gateway.rh, "doRequest", broken)
        reply = gateway.ask('{"cmd": "echo", "data": 1}')
    assert reply["status"] == 500 and "injected fault" in reply["error"], reply
    assert gateway.ask('{"cmd": "echo", "data": 3}')["data"] == 3


def test_gateway_logs_no_traceback_when_its_connection_closes_first(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    """When the /call connection is closing by the time the peer's reply comes, the gateway drops the reply without logging a traceback."""
    conn = syncws.connect(gateway.server.url + "/call")
    try:
        conn.send('{"cmd": "block", "timeout": 20}')
        assert gateway.blocked.wait(10), "the request never reached the peer"
        (handler,) = gateway.server.registry.connections("call")
        with caplog.at_level(logging.INFO):
            handler.close(1001, "going away")  # the gateway's reply can no longer be sent
            gateway.release.set()
            gateway.wait_event("close")
    finally:
        conn.close()
    assert [r for r in caplog.records if r.exc_info] == []
    assert gateway.ask('{"cmd": "echo", "data": 4}')["data"] == 4

"""RemoteService from a user's side: a URL that is not ws:// refused at once, and run_forever finishing its calls on Ctrl-C and SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

import syncws

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]

# A program that serves with run_forever, as a user's would. Its command
# `askServer` asks the server's `hold` and answers with what it says: a call
# in flight for as long as the test holds it. INFO logging shows when the
# service saw the signal.
PROGRAM = """
import logging, sys
import syncws
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
service = syncws.RemoteService(sys.argv[1], backoff_min=0.05, backoff_max=0.2)
service.register("askServer", lambda msg: service.request({"cmd": "hold"}, timeout=30)["data"])
service.run_forever(drain=20)
print("run_forever returned", flush=True)
"""


class Held:
    """A server whose RequestHandler answers ``hold`` only once the test releases it."""

    def __init__(self) -> None:
        self.arrived, self.release = threading.Event(), threading.Event()
        self.server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry()).start()
        self.handler = syncws.RequestHandler("wsData", self.server)
        self.handler.register("hold", self._hold)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=self.handler.callback)

    def _hold(self, request: dict[str, Any], conn: Any) -> str:
        self.arrived.set()
        self.release.wait(30)
        return "held and released"


@pytest.fixture
def held() -> Iterator[Held]:
    """A :class:`Held` server, stopped afterwards."""
    server = Held()
    try:
        yield server
    finally:
        server.release.set()
        server.server.stop()


def _lines(stream: Any, into: queue.Queue[Optional[str]]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _wait_line(lines: queue.Queue[Optional[str]], pattern: str, timeout: float = 15) -> str:
    """The first line from now containing ``pattern``; fails at EOF or after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen = []
    for _ in range(10_000):
        line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        if line is None:
            break
        if pattern in line:
            return line
        seen.append(line)
    raise AssertionError(f"no line with {pattern!r}; saw {''.join(seen[-20:])}")


def test_remote_service_refuses_an_http_url_at_once() -> None:
    """RemoteService("http://...") raises ValueError at once, naming the ws:// URL to give, instead of retrying until start's timeout."""
    with pytest.raises(ValueError) as raised:
        syncws.RemoteService("http://127.0.0.1:9/wsData")
    assert "ws://127.0.0.1:9/wsData" in str(raised.value)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_run_forever_finishes_the_call_in_flight_when_stopped(held: Held, sig: int) -> None:
    """run_forever on Ctrl-C or SIGTERM lets the call in flight finish and send its reply, then returns (the program exits 0)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, held.server.url + "/wsData"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: queue.Queue[Optional[str]] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, stderr), daemon=True).start()
    replies: list[Any] = []
    caller = None
    try:
        assert held.handler.wait_connected(20), "the program's service never connected"

        def ask() -> None:
            try:
                replies.append(held.handler.doRequest({"cmd": "askServer"}, timeout=30))
            except syncws.SyncWSError as exc:
                replies.append(exc)

        caller = threading.Thread(target=ask, name="test-caller")
        caller.start()
        assert held.arrived.wait(20), "askServer never asked the server"
        proc.send_signal(sig)
        _wait_line(stderr, "interrupted")  # the service saw the signal and drains
        held.release.set()
        caller.join(20)
        assert replies and isinstance(replies[0], dict), replies
        assert replies[0]["status"] == 200 and replies[0]["data"] == "held and released"
        assert proc.wait(20) == 0
        assert proc.stdout is not None and "run_forever returned" in proc.stdout.read()
    finally:
        held.release.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if caller is not None:
            caller.join(5)

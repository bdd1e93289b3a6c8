"""The live status page in a real headless Chromium, read through the DevTools protocol; and its auth.

The test's server serves ``add_status_page()``; Chromium loads ``/status``
with ``--remote-debugging-port=0``, and the test reads the page's figures
with ``Runtime.evaluate`` over a websocket-client connection to the page's
DevTools target, polling until they show what the server's ``stats()``
says. The Chromium test is skipped when there is no ``chromium`` on PATH
(in CI, tests/conftest.py turns that skip into a failure).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
import websocket

import syncws

from ..test_browser import CHROMIUM_FLAGS

NAME = "wsData"
SECRET = "Bearer s3cret"
NO_FIGURE = "\u2013"  # the en dash the page shows where it has no figure yet

#: The page's figures, read in one evaluation: the cards' values, the state line and the #requests table's rows.
READ_PAGE = """(() => {
  const text = (id) => { const e = document.getElementById(id); return e ? e.textContent : null; };
  return JSON.stringify({
    connections: text('connections-total'), rate: text('request-rate'), failures: text('failure-rate'), state: text('state'),
    requests: Array.from(document.querySelectorAll('#requests tbody tr'), (tr) => Array.from(tr.cells, (td) => td.textContent)),
  });
})()"""

# No proxy for loopback, whatever the environment says.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def number(text: Optional[str]) -> Optional[float]:
    """The page's number ("1,234.5" as en-US formats it), or None for NO_FIGURE or nothing."""
    try:
        return float((text or "").replace(",", ""))
    except ValueError:
        return None


class DevToolsPage:
    """Headless Chromium showing one URL, and a DevTools protocol connection to that page."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.tmp = tempfile.mkdtemp(prefix="syncws-status-")
        self.profile = os.path.join(self.tmp, "profile")
        self.log_path = os.path.join(self.tmp, "chromium.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.cdp: Optional[websocket.WebSocket] = None
        self.next_id = 0

    def launch(self, timeout: float = 30.0) -> None:
        """Start Chromium, wait for its DevTools port (DevToolsActivePort in the profile) and connect to the page."""
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["chromium", *CHROMIUM_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self.profile}", self.url],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg takes the renderers too
            )
        deadline = time.monotonic() + timeout
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        target = None
        for _ in range(1000):
            assert self.proc.poll() is None, f"chromium exited with {self.proc.returncode}:\n{self.log_tail()}"
            assert time.monotonic() < deadline, f"no DevTools page target for {self.url} within {timeout} s:\n{self.log_tail()}"
            target = self._page_target(port_file)
            if target is not None:
                break
            time.sleep(0.1)
        assert target is not None
        # No Origin header: Chromium refuses DevTools connections from origins it was not told to allow.
        self.cdp = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=10, suppress_origin=True)

    def _page_target(self, port_file: str) -> Optional[dict[str, Any]]:
        """The page's target from /json/list, or None while Chromium is not that far yet."""
        try:
            with open(port_file) as f:
                port = int(f.read().split()[0])
            with OPENER.open(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
                targets = json.load(response)
        except (OSError, ValueError, IndexError):  # no file yet, half written, or the port not answering yet
            return None
        return next((t for t in targets if t.get("type") == "page" and t.get("url") == self.url), None)

    def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """The value of ``expression`` in the page (Runtime.evaluate, returnByValue)."""
        assert self.cdp is not None
        self.next_id += 1
        call_id = self.next_id
        self.cdp.send(json.dumps({"id": call_id, "method": "Runtime.evaluate", "params": {"expression": expression, "returnByValue": True}}))
        deadline = time.monotonic() + timeout
        for _ in range(1000):  # only replies come: the test enables no domain that sends events
            self.cdp.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self.cdp.recv())
            if message.get("id") == call_id:
                result = message["result"]
                assert "exceptionDetails" not in result, f"{expression!r} raised in the page: {result['exceptionDetails']}"
                return result["result"].get("value")
            assert time.monotonic() < deadline, f"no answer to Runtime.evaluate within {timeout} s"
        raise AssertionError("too many DevTools messages without our answer")

    def read(self) -> dict[str, Any]:
        """The page's figures now (READ_PAGE)."""
        figures: dict[str, Any] = json.loads(self.evaluate(READ_PAGE))
        return figures

    def wait_until(self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        """Read the page every 0.2 s until ``check(figures)`` holds; AssertionError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        figures: dict[str, Any] = {}
        for _ in range(int(timeout / 0.2) + 2):
            figures = self.read()
            if check(figures):
                return figures
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        raise AssertionError(f"the page did not show {what} within {timeout} s; it showed {figures}")

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            if self.cdp is not None:
                self.cdp.close()
        finally:
            if self.proc is not None:
                if self.proc.poll() is None:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.proc.wait(10)
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def service(server: syncws.WebSocketServer) -> Iterator[tuple[syncws.RequestHandler, syncws.RemoteService]]:
    """A RequestHandler on /wsData of the server, with a connected RemoteService peer that adds; stopped afterwards."""
    handler = syncws.RequestHandler(NAME, server)
    server.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME, callback=handler.callback)
    peer = syncws.RemoteService(server.url + "/" + NAME)
    peer.command("add")(lambda msg: msg["a"] + msg["b"])
    peer.start(timeout=10)
    try:
        yield handler, peer
    finally:
        peer.stop()


@pytest.mark.timeout(90)
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (Debian's chromium package) on PATH")
def test_page_follows_connections_and_request_rate(server: syncws.WebSocketServer, service: tuple[syncws.RequestHandler, syncws.RemoteService]) -> None:
    """The page shows stats()'s connection count (its own websocket included) as clients come and go, and a request rate > 0 while requests run, 0 after."""
    handler, _ = service
    server.add_status_page()
    page = DevToolsPage(f"http://127.0.0.1:{server.port}/status")
    clients: list[syncws.ClientConnection] = []
    stop = threading.Event()
    done: list[int] = []
    errors: list[BaseException] = []

    def load() -> None:
        """doRequest in a loop, about 150 a second, until stopped (10 s at most)."""
        deadline = time.monotonic() + 10
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                assert handler.doRequest({"cmd": "add", "a": 2, "b": 3}, timeout=5)["data"] == 5
                done.append(1)
                stop.wait(0.005)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    loader = threading.Thread(target=load, name="test-status-load", daemon=True)
    try:
        page.launch()
        # The peer and the page's own websocket: what stats() counts, and what the page shows.
        first = page.wait_until("2 connections", lambda f: f["connections"] == "2", timeout=20)
        assert server.stats()["server"]["connections"] == 2
        assert (first["state"] or "").startswith("live"), first
        # No requests yet: NO_FIGURE until the page has two samples to take a rate from, then 0.
        assert first["rate"] == NO_FIGURE or number(first["rate"]) == 0, first
        page.wait_until("a request rate of 0", lambda f: number(f["rate"]) == 0)

        clients = [syncws.connect(server.url + "/echo", timeout=5) for _ in range(3)]
        page.wait_until("5 connections", lambda f: f["connections"] == "5")
        assert server.stats()["server"]["connections"] == 5

        loader.start()
        running = page.wait_until("a request rate > 0", lambda f: (number(f["rate"]) or 0) > 0)
        assert number(running["failures"]) == 0, running
        assert not errors

        stop.set()
        loader.join(10)
        assert not loader.is_alive() and not errors, errors
        total = len(done)
        assert total > 0
        # The rate falls back to 0 and the #requests table counts every call, all of them ok.
        after = page.wait_until(
            f"a rate of 0 and {total} requests",
            lambda f: number(f["rate"]) == 0 and any(row[0] == NAME and number(row[1]) == total for row in f["requests"]),
        )
        row = next(row for row in after["requests"] if row[0] == NAME)
        assert number(row[2]) == total and number(row[3]) == 0, row  # ok, error

        for client in clients:
            client.close()
        page.wait_until("2 connections again", lambda f: f["connections"] == "2")
    finally:
        stop.set()
        if loader.ident is not None:  # started
            loader.join(10)
        for client in clients:
            client.abort()
        page.close()


@pytest.mark.timeout(30)
def test_auth_refuses_page_json_and_websocket(server: syncws.WebSocketServer) -> None:
    """add_status_page(auth=...) answers 401 to the page, ?format=json and the websocket handshake without credentials, and serves all three with them."""
    server.add_status_page(auth=lambda request: request.headers.get("Authorization") == SECRET)
    http = f"http://127.0.0.1:{server.port}/status"

    for url in (http, http + "?format=json"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            OPENER.open(url, timeout=5)
        assert refused.value.code == 401, url
        refused.value.close()
    with pytest.raises(syncws.HandshakeError) as handshake:
        syncws.connect(server.url + "/status", timeout=5)
    assert handshake.value.status == 401
    with pytest.raises(syncws.HandshakeError) as wrong:
        syncws.connect(server.url + "/status", timeout=5, header={"Authorization": "Bearer wrong"})
    assert wrong.value.status == 401

    def get(url: str) -> tuple[int, str, bytes]:
        with OPENER.open(urllib.request.Request(url, headers={"Authorization": SECRET}), timeout=5) as response:
            return response.status, response.headers.get_content_type(), response.read()

    status, kind, body = get(http)
    assert (status, kind) == (200, "text/html") and b'id="connections-total"' in body
    status, kind, body = get(http + "?format=json")
    assert (status, kind) == (200, "application/json")
    assert json.loads(body)["server"]["url"] == server.url
    with syncws.connect(server.url + "/status", timeout=5, header={"Authorization": SECRET}) as conn:
        conn.send(json.dumps({"cmd": "stats", "callId": 1}))
        message = conn.recv(timeout=5)
    assert isinstance(message, str), message
    reply = json.loads(message)
    assert reply["status"] == 200 and reply["callId"] == 1
    assert reply["data"]["server"]["connections"] == 1  # this connection
    assert server.stats()["handshakes_refused"]["auth"] == 2  # the two handshakes: a plain GET is no handshake

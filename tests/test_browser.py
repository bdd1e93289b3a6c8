"""syncws.js in a real headless Chromium: requests both ways, multi-part bytes, errors, broadcasts, reconnection.

One Chromium for the module loads a page from the test's server; the page runs
``syncws.Peer`` against ``/wsData`` and answers the test's requests. Skipped
when there is no ``chromium`` on PATH (CI installs Debian's).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest

import syncws
from syncws.callformat import crc32
from syncws.static import javascript_client

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (Debian's chromium package) on PATH"),
]

NAME = "wsData"
PART_SIZE = 4096

#: What Chromium needs to run here: --headless=new and --no-sandbox (root, no user namespaces).
#: The rest keep it quiet and on loopback: no first-run UI, no update, sync or other background fetches.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# The page: a Peer with small parts and a fast reconnect. Every message that is
# not a request (a broadcast) goes back to the server as {"cmd": "ack", "got": msg}.
PAGE_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>syncws browser test</title></head>
<body>
<script src="/syncws.js"></script>
<script>
"use strict";
const peer = new syncws.Peer("ws://127.0.0.1:%(port)d/wsData", {partSize: %(part_size)d, backoffMin: 100, backoffMax: 400});
function pattern(n) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 7 + (i >> 8)) & 0xff;
  return out;
}
peer.register("add", (m) => m.a + m.b);
peer.register("later", (m) => new Promise((resolve) => setTimeout(() => resolve({i: m.i}), m.delay)));
peer.register("bytes", (m) => pattern(m.n));
peer.register("crc", (m) => syncws.crc32(new TextEncoder().encode(m.text)));
peer.register("fail", (m) => { throw new TypeError("page says no: " + m.why); });
peer.register("unencodable", (m) => { const o = {}; o.self = o; return o; });
peer.register("extensions", (m) => peer.socket.extensions);
peer.register("echo", (m) => m.text);
peer.register("hang", (m) => { peer.send({cmd: "ack", got: "hanging"}); return new Promise(() => {}); });
peer.onmessage = (msg) => {
  const got = msg instanceof ArrayBuffer ? {binary: msg.byteLength} : msg;
  peer.send({cmd: "ack", got: got});
};
peer.start();
</script>
</body></html>
"""


def pattern(n: int) -> bytes:
    """The bytes the page's ``bytes`` command makes."""
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(n))


class PageRequests(syncws.RequestHandler):
    """A RequestHandler that also passes the page's acks to a queue.

    Its ``callback`` stays a bound method of a RequestHandler, so
    DataWebSocketHandler still fails pending calls when a connection closes.
    """

    def __init__(self, name: str, server: syncws.WebSocketServer) -> None:
        super().__init__(name, server)
        self.acks: queue.Queue[Any] = queue.Queue()

    def callback(self, client: syncws.BaseWebSocketHandler, message: Any) -> None:
        """Acks to the queue; replies to the request table."""
        if isinstance(message, str):
            try:
                decoded = json.loads(message)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and decoded.get("cmd") == "ack":
                self.acks.put(decoded["got"])
                return
        super().callback(client, message)


class Browser:
    """The server, the page's RequestHandler, connection events and the Chromium process."""

    def __init__(self) -> None:
        self.registry = syncws.ConnectionRegistry()
        self.server = syncws.WebSocketServer("127.0.0.1", 0, registry=self.registry, ping_interval=None).start()
        self.rh = PageRequests(NAME, self.server)
        self.events: queue.Queue[str] = queue.Queue()
        self.server.add_handler(
            "/wsData", syncws.DataWebSocketHandler, name=NAME, callback=self.rh.callback, connNotify=lambda name, event: self.events.put(event)
        )
        self.server.add_static("/syncws.js", javascript_client(), "text/javascript")
        self.server.add_static("/page.html", (PAGE_TEMPLATE % {"port": self.server.port, "part_size": PART_SIZE}).encode())
        self.tmp = tempfile.mkdtemp(prefix="syncws-chromium-")
        self.log_path = os.path.join(self.tmp, "chromium.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def launch(self) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={os.path.join(self.tmp, 'profile')}", f"http://127.0.0.1:{self.server.port}/page.html"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg takes the renderers too
            )

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_event(self, event: str, timeout: float) -> None:
        """Wait for connNotify's ``event`` ("open" or "close"), skipping others."""
        deadline = time.monotonic() + timeout
        for _ in range(100):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                if self.events.get(timeout=remaining) == event:
                    return
            except queue.Empty:
                break
        raise AssertionError(f"no {event!r} event within {timeout} s; chromium said:\n{self.log_tail()}")

    def ack(self, timeout: float = 10.0) -> Any:
        try:
            return self.rh.acks.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no ack from the page within {timeout} s") from None

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc is not None:
                self.proc.wait(10)
        finally:
            self.server.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium with the page loaded and connected; killed (its whole process group) afterwards."""
    b = Browser()
    try:
        b.launch()
        b.wait_event("open", timeout=30)
        yield b
    finally:
        b.close()


@pytest.fixture
def page(browser: Browser) -> Browser:
    """The browser, with the page connected now (a test before may have closed its connection)."""
    deadline = time.monotonic() + 15
    while browser.registry.newest(NAME) is None and time.monotonic() < deadline:
        browser.wait_event("open", timeout=max(0.1, deadline - time.monotonic()))
    assert browser.proc is not None and browser.proc.poll() is None, f"chromium exited:\n{browser.log_tail()}"
    for _ in range(1000):  # acks a test before left behind
        try:
            browser.rh.acks.get_nowait()
        except queue.Empty:
            break
    return browser


def test_request_with_json_reply(page: Browser) -> None:
    """doRequest to the page returns the page function's JSON result with status 200, its cmd and callId."""
    reply = page.rh.doRequest({"cmd": "add", "a": 2, "b": 3}, timeout=10)
    assert reply["data"] == 5
    assert reply["status"] == 200 and reply["cmd"] == "add" and isinstance(reply["callId"], int)


def test_async_commands_answer_concurrent_requests(page: Browser) -> None:
    """Promise-returning commands answer 16 concurrent requests, each with its own result, whatever the finish order."""
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def ask(i: int) -> None:
        try:
            results[i] = page.rh.doRequest({"cmd": "later", "i": i, "delay": (i * 37) % 200}, timeout=10)["data"]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert not errors
    assert results == {i: {"i": i} for i in range(16)}


def test_bytes_reply_arrives_whole_in_several_parts(page: Browser) -> None:
    """A Uint8Array result arrives as the exact bytes, in several CRC-checked parts, with progress per part."""
    n = 10 * PART_SIZE + 123
    progress: list[tuple[int, int]] = []
    reply = page.rh.doRequest({"cmd": "bytes", "n": n}, timeout=10, progress=lambda done, total: progress.append((done, total)))
    assert isinstance(reply["data"], bytes)
    assert reply["data"] == pattern(n)
    assert len(progress) == 11
    assert progress[-1] == (n, n)


def test_empty_bytes_reply(page: Browser) -> None:
    """An empty Uint8Array arrives as b"" (size 0, no parts)."""
    assert page.rh.doRequest({"cmd": "bytes", "n": 0}, timeout=10)["data"] == b""


def test_page_crc32_matches_zlib(page: Browser) -> None:
    """syncws.crc32 in the browser equals callformat.crc32 (zlib's, the CRC the server checks parts with)."""
    text = "syncws \u00e9\u00e8 \U0001f600 " * 50
    assert page.rh.doRequest({"cmd": "crc", "text": text}, timeout=10)["data"] == crc32(text.encode("utf-8"))


def test_throwing_command_gives_500_with_js_error(page: Browser) -> None:
    """A command that throws gives RequestError 500 whose error is the JS error's "Name: message"."""
    with pytest.raises(syncws.RequestError) as info:
        page.rh.doRequest({"cmd": "fail", "why": "testing"}, timeout=10)
    assert info.value.status == 500
    assert info.value.error == "TypeError: page says no: testing"


def test_unknown_command_gives_404(page: Browser) -> None:
    """A request for a cmd the page never registered gets status 404 at once (docs/protocol.md), not a timeout."""
    with pytest.raises(syncws.RequestError) as info:
        page.rh.doRequest({"cmd": "noSuchCommand"}, timeout=3)
    assert info.value.status == 404


def test_unencodable_result_gives_500(page: Browser) -> None:
    """A result JSON.stringify cannot encode (a cycle) gives a 500 reply at once, as RemoteService does, not a timeout."""
    with pytest.raises(syncws.RequestError) as info:
        page.rh.doRequest({"cmd": "unencodable"}, timeout=3)
    assert info.value.status == 500
    assert "TypeError" in info.value.error


def test_broadcasts_reach_the_page(page: Browser) -> None:
    """sendWebSocketMessage reaches the page's onmessage: JSON as objects, other text as strings, binary as ArrayBuffer."""
    for k in range(3):
        syncws.sendWebSocketMessage(NAME, {"cmd": "tick", "n": k}, registry=page.registry)
        assert page.ack() == {"cmd": "tick", "n": k}
    syncws.sendWebSocketMessage(NAME, "plain text, not JSON", registry=page.registry)
    assert page.ack() == "plain text, not JSON"
    syncws.sendWebSocketMessage(NAME, b"\x00\x01\x02" * 10, registry=page.registry)
    assert page.ack() == {"binary": 30}


def test_page_reconnects_after_server_closes_and_pending_call_fails_at_once(page: Browser) -> None:
    """Closing the page's connection fails its pending call at once; the page reconnects by itself and answers again."""
    first = page.registry.newest(NAME)
    assert first is not None
    outcome: queue.Queue[BaseException] = queue.Queue()

    def hang() -> None:
        try:
            page.rh.doRequest({"cmd": "hang"}, timeout=30)
        except BaseException as exc:  # checked below
            outcome.put(exc)

    waiter = threading.Thread(target=hang)
    waiter.start()
    try:
        assert page.ack() == "hanging"  # the request reached the page
        started = time.monotonic()
        first.close(1001, "test closes")
        exc = outcome.get(timeout=10)
        assert isinstance(exc, syncws.ConnectionClosed)
        assert time.monotonic() - started < 5
        page.wait_event("open", timeout=15)
    finally:
        first.connection.abort()
        waiter.join(35)
    second = page.registry.newest(NAME)
    assert second is not None and second is not first
    assert page.rh.doRequest({"cmd": "add", "a": 40, "b": 2}, timeout=10)["data"] == 42


@pytest.mark.parametrize("request_fields", [{"data": 1}, {"cmd": 5}, {"cmd": None}, {"cmd": ["add"]}], ids=["no-cmd", "int-cmd", "null-cmd", "list-cmd"])
def test_request_without_a_str_cmd_gets_400_at_once(page: Browser, request_fields: dict[str, Any]) -> None:
    """A request whose cmd is missing or not a string gets a 400 reply with its callId at once, not silence until the timeout."""
    call_id, conn = page.rh.prepare_request({"cmd": "placeholder"})
    started = time.monotonic()
    conn.write_message(dict(request_fields, callId=call_id))
    with pytest.raises(syncws.RequestError) as info:
        page.rh.get_response(call_id, timeout=5)
    assert time.monotonic() - started < 2
    assert info.value.status == 400 and info.value.response["callId"] == call_id, info.value.response
    assert page.rh.doRequest({"cmd": "add", "a": 1, "b": 1}, timeout=10)["data"] == 2


def test_reply_like_message_goes_to_onmessage_unanswered(page: Browser) -> None:
    """A message with a callId and a status but no cmd is a reply, not a request: it reaches onmessage and gets no 400."""
    conn = page.registry.newest(NAME)
    assert conn is not None
    conn.write_message({"callId": 987654, "status": 200, "data": "stray"})
    assert page.ack() == {"callId": 987654, "status": 200, "data": "stray"}


def test_page_negotiates_permessage_deflate_and_exchanges_compressed_messages(page: Browser) -> None:
    """Chromium and the server agree on permessage-deflate (both sides say so) and long text goes both ways intact."""
    assert page.rh.doRequest({"cmd": "extensions"}, timeout=10)["data"] == "permessage-deflate"
    conn = page.registry.newest(NAME)
    assert conn is not None and conn.connection.extensions == "permessage-deflate"
    text = json.dumps({"rows": [{"id": i, "name": f"sensor {i}", "ok": True} for i in range(2000)]})
    assert page.rh.doRequest({"cmd": "echo", "text": text}, timeout=10)["data"] == text
    syncws.sendWebSocketMessage(NAME, {"cmd": "tick", "pad": "x" * 5000}, registry=page.registry)
    assert page.ack() == {"cmd": "tick", "pad": "x" * 5000}

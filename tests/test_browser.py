"""syncws.js in a real headless Chromium: calls both ways, multi-part bytes, errors, cancels, broadcasts, reconnection.

One Chromium for the module loads a page from the test's server; the page runs
``syncws.Peer`` against ``/wsData``, answers the test's requests and calls the
server's commands (registered on the same RequestHandler) with
``peer.request``. Skipped when there is no ``chromium`` on PATH (CI installs
Debian's).
"""

from __future__ import annotations

import json
import os
import queue
import random
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
from syncws.calls.callformat import crc32, encode_part_header, pack_part_header
from syncws.static import javascript_client

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (Debian's chromium package) on PATH"),
]

NAME = "wsData"
PART_SIZE = 4096  # the page's
SERVER_PART_SIZE = 256 * 1024  # the server's, for the page's requests

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
# not a request (a broadcast) goes back to the server as {"cmd": "ack", "got": msg};
# so do the page's reports (report(): sent now, or once the page is connected again).
# "ask" makes one request of the server and answers with how it ended; "spawn"
# starts a scenario that reports by itself, for those that close the connection.
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
const reports = [];
function report(value) {
  reports.push(value);
  flush();
}
function flush() {
  while (reports.length && peer.socket && peer.socket.readyState === WebSocket.OPEN) peer.send({cmd: "ack", got: reports.shift()});
}
let closedAt = null;
peer.onopen = flush;
peer.onclose = () => { closedAt = performance.now(); };

peer.register("add", (m) => m.a + m.b);
peer.register("later", (m) => new Promise((resolve) => setTimeout(() => resolve({i: m.i}), m.delay)));
peer.register("bytes", (m) => pattern(m.n));
peer.register("crc", (m) => syncws.crc32(new TextEncoder().encode(m.text)));
peer.register("fail", (m) => { throw new TypeError("page says no: " + m.why); });
peer.register("unencodable", (m) => { const o = {}; o.self = o; return o; });
peer.register("extensions", (m) => peer.socket.extensions);
peer.register("echo", (m) => m.text);
peer.register("hang", (m) => { peer.send({cmd: "ack", got: "hanging"}); return new Promise(() => {}); });
peer.register("watchCancel", (m, call) => new Promise((resolve) => {
  call.signal.addEventListener("abort", () => {
    report({cancelled: call.cancelled, aborted: call.signal.aborted, callId: call.callId});
    resolve("too late");
  });
}));
peer.onmessage = (msg) => {
  const got = msg instanceof ArrayBuffer ? {binary: msg.byteLength} : msg;
  peer.send({cmd: "ack", got: got});
};

// How a request of the page's ended, as JSON: the reply (binary data summed up) or the error.
function settled(promise, progress) {
  return promise.then((reply) => {
    const out = Object.assign({}, reply);
    if (reply.data instanceof ArrayBuffer) {
      const bytes = new Uint8Array(reply.data);
      out.data = {byteLength: bytes.length, crc32: syncws.crc32(bytes), head: Array.from(bytes.subarray(0, 8)), tail: Array.from(bytes.subarray(-8))};
      if (reply.dataType === "ndarray") out.data.int32 = Array.from(new Int32Array(reply.data));
    }
    return {ok: true, reply: out, progress: progress};
  }, (err) => ({
    ok: false, name: err.name, requestError: err instanceof syncws.RequestError, status: err.status, error: err.error,
    code: err.code, reason: err.reason, callId: err.callId, message: String(err.message),
  }));
}
peer.register("ask", (m) => {
  const progress = [];
  const options = Object.assign({}, m.options);
  if (m.progress) options.onProgress = (received, total) => progress.push([received, total]);
  return settled(peer.request(m.request, options), progress);
});
peer.register("askAll", (m) => Promise.all(m.requests.map((request) => settled(peer.request(request)))));
peer.register("badRequests", async () => {
  const before = peer.nextCallId;
  const cases = {
    notAnObject: () => peer.request("getSettings"),
    noCmd: () => peer.request({a: 1}),
    intCmd: () => peer.request({cmd: 5}),
    withStatus: () => peer.request({cmd: "getSettings", status: 200}),
    nanTimeout: () => peer.request({cmd: "getSettings"}, {timeout: NaN}),
  };
  const out = {};
  for (const [name, make] of Object.entries(cases)) {
    let promise;
    try {
      promise = make();
    } catch (err) {
      out[name] = "threw " + err.name;
      continue;
    }
    out[name] = await promise.then(() => "resolved", (err) => err.name);
  }
  out.callIdsUsed = peer.nextCallId - before;
  return out;
});
const scenarios = {
  closeWhilePending(m) {
    closedAt = null;
    for (let i = 0; i < m.n; i++) {
      settled(peer.request({cmd: "block", i: i})).then((out) => {
        out.sinceClose = closedAt === null ? null : performance.now() - closedAt;
        report(out);
      });
    }
  },
  stopWhilePending(m) {
    const pending = settled(peer.request({cmd: "getSettings"}));
    peer.stop();
    const after = settled(peer.request({cmd: "getSettings"}));
    Promise.all([pending, after]).then(([p, a]) => {
      peer.start();
      report({pending: p, after: a});
    });
  },
};
peer.register("spawn", (m) => { setTimeout(() => scenarios[m.name](m), 0); return "started"; });
peer.start();
</script>
</body></html>
"""


def pattern(n: int) -> bytes:
    """The bytes the page's ``bytes`` command makes."""
    return bytes((i * 7 + (i >> 8)) & 0xFF for i in range(n))


def blob(n: int) -> bytes:
    """The bytes the server's ``getBlob`` command returns: random, so that a part out of place changes the CRC."""
    return random.Random(n).randbytes(n)


class PageRequests(syncws.RequestHandler):
    """A RequestHandler that also passes the page's acks to a queue and notes the page's replies.

    Its ``callback`` stays a bound method of a RequestHandler, so
    DataWebSocketHandler still fails pending calls when a connection closes.
    """

    def __init__(self, name: str, server: syncws.WebSocketServer, part_size: int) -> None:
        super().__init__(name, server, part_size=part_size)
        self.acks: queue.Queue[Any] = queue.Queue()
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()  # every text message from the page with a status

    def callback(self, client: syncws.BaseWebSocketHandler, message: Any) -> None:
        """Acks to the queue; requests and replies to the RequestHandler."""
        if isinstance(message, str):
            try:
                decoded = json.loads(message)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and decoded.get("cmd") == "ack" and "callId" not in decoded:
                self.acks.put(decoded["got"])
                return
            if isinstance(decoded, dict) and "status" in decoded:
                self.replies.put(decoded)
        super().callback(client, message)


class ServerCommands:
    """The commands the page calls, registered on the page's RequestHandler, and what they saw."""

    def __init__(self, rh: syncws.RequestHandler) -> None:
        self.asked_on: queue.Queue[Any] = queue.Queue()  # the conn each getSettings was asked on
        self.arrived: queue.Queue[int] = queue.Queue()  # a block call began
        self.cancels: queue.Queue[tuple[int, bool]] = queue.Queue()  # (callId, cancelled) as waitForCancel ended
        rh.register("getSettings", self.get_settings)
        rh.register("getBlob", lambda request, conn: blob(request["n"]))
        rh.register("getArray", self.get_array)
        rh.register("badTR", self.bad_tr)
        rh.register("waitForCancel", self.wait_for_cancel)
        rh.register("block", self.block)
        rh.register("damaged", self.damaged)

    def reset(self) -> None:
        """Forget what a test before saw."""
        for q in (self.asked_on, self.arrived, self.cancels):
            while not q.empty():
                q.get_nowait()

    def get_settings(self, request: dict[str, Any], conn: Any) -> dict[str, Any]:
        self.asked_on.put(conn)
        return {"TR": 2.0, "run": 3}

    def get_array(self, request: dict[str, Any], conn: Any) -> Any:
        import numpy

        return numpy.arange(12, dtype="<i4").reshape(3, 4)

    def bad_tr(self, request: dict[str, Any], conn: Any) -> None:
        raise ValueError(f"bad TR {request['tr']}")

    def _until_cancelled(self) -> Any:
        """Wait until the call being answered is cancelled (10 s at most); return it."""
        call = syncws.current_call()
        call.wait_cancelled(10)
        return call

    def wait_for_cancel(self, request: dict[str, Any], conn: Any) -> str:
        call = self._until_cancelled()
        self.cancels.put((call.call_id, call.cancelled))
        return "too late"

    def block(self, request: dict[str, Any], conn: Any) -> None:
        self.arrived.put(request["i"])
        self._until_cancelled()

    def damaged(self, request: dict[str, Any], conn: Any) -> None:
        """Write a binary reply damaged as ``request["how"]`` says, by hand; the handler's own reply comes late."""
        call_id = syncws.current_call().call_id
        data = blob(1000)
        first, second = data[:500], data[500:]
        conn.write_message({"cmd": "damaged", "callId": call_id, "status": 200, "dataType": "bytes", "size": len(data), "parts": 2})
        how = request["how"]
        if how == "crc":
            conn.write_message(pack_part_header(call_id, 0, 2, 0, crc32(first) ^ 1) + first)
        elif how == "order":
            conn.write_message(encode_part_header(call_id, 1, 2, 500, second) + second)
        elif how == "size":
            conn.write_message(encode_part_header(call_id, 0, 2, 0, first) + first)
            conn.write_message(encode_part_header(call_id, 1, 2, 500, second[:400]) + second[:400])


class Browser:
    """The server, the page's RequestHandler and the server's commands, connection events and the Chromium process."""

    def __init__(self) -> None:
        self.registry = syncws.ConnectionRegistry()
        self.server = syncws.WebSocketServer("127.0.0.1", 0, registry=self.registry, ping_interval=None).start()
        self.rh = PageRequests(NAME, self.server, part_size=SERVER_PART_SIZE)
        self.commands = ServerCommands(self.rh)
        self.events: queue.Queue[str] = queue.Queue()
        self.server.add_handler(
            "/wsData", syncws.DataWebSocketHandler, name=NAME, callback=self.rh.callback, connNotify=lambda name, event: self.events.put(event)
        )
        self.server.add_static("/syncws.js", javascript_client(), "text/javascript")
        self.server.add_static("/page.html", (PAGE_TEMPLATE % {"port": self.server.port, "part_size": PART_SIZE}).encode())
        self.tmp = tempfile.mkdtemp(prefix="syncws-chromium-")
        self.log_path = os.path.join(self.tmp, "chromium.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def ask(self, request: dict[str, Any], timeout: float = 10, **fields: Any) -> dict[str, Any]:
        """Have the page make ``request`` of the server (``fields``: the page's "ask" options); how it ended."""
        return self.rh.doRequest({"cmd": "ask", "request": request, **fields}, timeout=timeout)["data"]

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
    for q in (browser.rh.acks, browser.rh.replies):  # what a test before left behind
        while not q.empty():
            q.get_nowait()
    browser.commands.reset()
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


# ---------------------------------------------------------------------- the page calls the server


def test_one_connection_both_directions(page: Browser) -> None:
    """On one connection the page calls the server (JSON, then bytes checked byte for byte on the page) while the server calls the page."""
    conn = page.registry.newest(NAME)
    assert conn is not None
    settings = page.ask({"cmd": "getSettings"})  # the server's doRequest waits while the page's request is answered
    assert settings["ok"], settings
    reply = settings["reply"]
    assert reply["status"] == 200 and reply["cmd"] == "getSettings" and reply["data"] == {"TR": 2.0, "run": 3}
    assert isinstance(reply["callId"], int) and reply["callId"] >= 1
    assert page.commands.asked_on.get(timeout=5) is conn

    n = 3 * 2**20 + 17
    got = page.ask({"cmd": "getBlob", "n": n}, progress=True, timeout=30)
    assert got["ok"], got
    expected = blob(n)
    assert got["reply"]["dataType"] == "bytes" and got["reply"]["size"] == n
    assert got["reply"]["data"] == {"byteLength": n, "crc32": crc32(expected), "head": list(expected[:8]), "tail": list(expected[-8:])}
    progress = got["progress"]
    assert progress and progress[-1] == [n, n] and all(total == n for _, total in progress)
    assert [received for received, _ in progress] == sorted({received for received, _ in progress})

    assert page.rh.doRequest({"cmd": "add", "a": 2, "b": 3}, timeout=10)["data"] == 5
    assert page.registry.newest(NAME) is conn


def test_page_gets_an_empty_bytes_reply(page: Browser) -> None:
    """Empty bytes from the server (size 0, no parts) arrive as an empty ArrayBuffer."""
    got = page.ask({"cmd": "getBlob", "n": 0})
    assert got["ok"], got
    assert got["reply"]["dataType"] == "bytes" and got["reply"]["data"]["byteLength"] == 0


def test_concurrent_page_requests_each_get_their_own_reply(page: Browser) -> None:
    """16 requests in flight at once (bytes of different sizes and JSON, answered by the server's pool in any order) each get their own reply."""
    sizes = [i * 131_072 + i for i in range(1, 13)]
    requests = [{"cmd": "getBlob", "n": n} for n in sizes] + [{"cmd": "getSettings"}] * 4
    got = page.rh.doRequest({"cmd": "askAll", "requests": requests}, timeout=30)["data"]
    assert all(out["ok"] for out in got), [out for out in got if not out["ok"]]
    for n, out in zip(sizes, got):
        assert out["reply"]["data"]["byteLength"] == n and out["reply"]["data"]["crc32"] == crc32(blob(n))
    assert [out["reply"]["data"] for out in got[len(sizes) :]] == [{"TR": 2.0, "run": 3}] * 4
    assert len({out["reply"]["callId"] for out in got}) == len(requests)


def test_page_gets_an_ndarray_reply_with_dtype_and_shape(page: Browser) -> None:
    """A numpy array from the server arrives as an ArrayBuffer of its bytes, its dtype and shape on the reply."""
    pytest.importorskip("numpy")
    got = page.ask({"cmd": "getArray"})
    assert got["ok"], got
    reply = got["reply"]
    assert reply["dataType"] == "ndarray" and reply["dtype"] == "<i4" and reply["shape"] == [3, 4]
    assert reply["data"]["int32"] == list(range(12))


def test_page_request_for_unknown_command_rejects_with_404(page: Browser) -> None:
    """peer.request for a cmd the server never registered rejects with a RequestError of status 404."""
    got = page.ask({"cmd": "noSuchCommand"})
    assert not got["ok"] and got["name"] == "RequestError" and got["requestError"], got
    assert got["status"] == 404


def test_page_request_to_raising_command_rejects_with_500(page: Browser) -> None:
    """peer.request for a command that raises rejects with a RequestError of status 500 carrying "ValueError: message"."""
    got = page.ask({"cmd": "badTR", "tr": -1})
    assert not got["ok"] and got["requestError"], got
    assert got["status"] == 500 and got["error"] == "ValueError: bad TR -1"


@pytest.mark.parametrize(
    "how, problem",
    [("crc", "CRC-32 mismatch"), ("order", "out of order"), ("size", "do not add up")],
    ids=["crc-mismatch", "part-out-of-order", "size-mismatch"],
)
def test_damaged_binary_reply_rejects_with_502(page: Browser, how: str, problem: str) -> None:
    """A binary reply with a bad CRC-32, a part out of order or parts short of its size rejects with RequestError 502 at once."""
    got = page.ask({"cmd": "damaged", "how": how}, timeout=5)
    assert not got["ok"] and got["requestError"], got
    assert got["status"] == 502 and problem in got["error"], got


def test_page_request_timeout_rejects_and_the_server_sees_the_cancel(page: Browser) -> None:
    """A request past its timeout rejects with RequestTimeout and the server's command sees current_call().cancelled turn True."""
    got = page.ask({"cmd": "waitForCancel"}, options={"timeout": 300})
    assert not got["ok"] and got["name"] == "RequestTimeout", got
    call_id, cancelled = page.commands.cancels.get(timeout=5)
    assert cancelled and call_id == got["callId"]


def test_late_reply_to_a_timed_out_request_is_dropped_silently(page: Browser) -> None:
    """A reply (and a part) that comes after the page gave up on its call does not reach onmessage."""
    got = page.ask({"cmd": "waitForCancel"}, options={"timeout": 200})
    assert got["name"] == "RequestTimeout", got
    late = got["callId"]
    page.commands.cancels.get(timeout=5)
    conn = page.registry.newest(NAME)
    assert conn is not None
    conn.write_message({"cmd": "waitForCancel", "callId": late, "status": 200, "data": "late"})
    conn.write_message(encode_part_header(late, 0, 1, 0, b"late") + b"late")
    conn.write_message({"cmd": "tick", "n": "after"})
    assert page.ack() == {"cmd": "tick", "n": "after"}  # the first thing onmessage saw


def test_pending_page_requests_reject_at_once_when_the_server_closes(page: Browser) -> None:
    """When the server closes the connection, every pending peer.request rejects with ConnectionClosed (its code and reason) at once."""
    first = page.registry.newest(NAME)
    assert first is not None
    assert page.rh.doRequest({"cmd": "spawn", "name": "closeWhilePending", "n": 3}, timeout=10)["data"] == "started"
    for _ in range(3):
        page.commands.arrived.get(timeout=10)  # all three reached the server
    first.close(1001, "test closes")
    outcomes = [page.ack(timeout=15) for _ in range(3)]  # reported once the page is connected again
    for got in outcomes:
        assert not got["ok"] and got["name"] == "ConnectionClosed", got
        assert got["code"] == 1001 and got["reason"] == "test closes"
        assert got["sinceClose"] is not None and got["sinceClose"] < 100, got  # ms after the socket's close event


def test_stop_rejects_pending_requests_and_later_ones_are_not_connected(page: Browser) -> None:
    """peer.stop() rejects a pending request with ConnectionClosed 1000 "stopped"; a request while stopped rejects with NotConnected."""
    assert page.rh.doRequest({"cmd": "spawn", "name": "stopWhilePending"}, timeout=10)["data"] == "started"
    got = page.ack(timeout=15)  # reported once the page has started again
    pending, after = got["pending"], got["after"]
    assert pending["name"] == "ConnectionClosed" and pending["code"] == 1000 and pending["reason"] == "stopped", pending
    assert after["name"] == "NotConnected", after


def test_malformed_page_request_rejects_with_type_error_and_sends_nothing(page: Browser) -> None:
    """peer.request never throws: a msg that is not an object with a string cmd (or has a status) rejects with TypeError, before a callId is used."""
    got = page.rh.doRequest({"cmd": "badRequests"}, timeout=10)["data"]
    assert got == {
        "notAnObject": "TypeError",
        "noCmd": "TypeError",
        "intCmd": "TypeError",
        "withStatus": "TypeError",
        "nanTimeout": "RangeError",
        "callIdsUsed": 0,
    }


def test_server_timeout_cancels_the_page_command_and_its_reply_is_not_sent(page: Browser) -> None:
    """When doRequest to the page times out, the page's command sees call.cancelled (and call.signal aborts); its reply never comes."""
    with pytest.raises(syncws.RequestTimeout) as info:
        page.rh.doRequest({"cmd": "watchCancel"}, timeout=0.3)
    assert page.ack(timeout=5) == {"cancelled": True, "aborted": True, "callId": info.value.call_id}
    assert page.rh.doRequest({"cmd": "add", "a": 1, "b": 1}, timeout=10)["data"] == 2  # after any late reply, on the same connection
    replies = []
    while not page.rh.replies.empty():
        replies.append(page.rh.replies.get_nowait())
    assert [r["callId"] for r in replies if r.get("cmd") == "watchCancel"] == []
SUBPROTOCOL_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>syncws subprotocols</title></head>
<body>
<script src="/syncws.js"></script>
<script>
"use strict";
const raw = new WebSocket("ws://127.0.0.1:%(port)d/proto", ["v1.json"]);
raw.onopen = () => raw.send(JSON.stringify({raw: raw.protocol}));
const peer = new syncws.Peer("ws://127.0.0.1:%(port)d/proto", {protocols: ["v1.json", "v2.json"]});
peer.onopen = () => peer.send({peer: peer.socket.protocol});
peer.start();
</script>
</body></html>
"""


def test_browser_offers_subprotocols_and_sees_the_server_choice() -> None:
    """Chromium's WebSocket offering v1.json, and syncws.js's Peer offering v1.json and v2.json, get the server's choice (v2.json first)."""
    seen: queue.Queue[tuple[str, Any]] = queue.Queue()

    class Reporter(syncws.BaseWebSocketHandler):
        def open(self) -> None:
            seen.put(("server", self.selected_subprotocol))

        def on_message(self, message: Any) -> None:
            seen.put(("page", json.loads(message)))

    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), ping_interval=None).start()
    server.add_handler("/proto", Reporter, subprotocols=["v2.json", "v1.json"])
    server.add_static("/syncws.js", javascript_client(), "text/javascript")
    server.add_static("/proto.html", (SUBPROTOCOL_PAGE % {"port": server.port}).encode())
    tmp = tempfile.mkdtemp(prefix="syncws-chromium-")
    proc = subprocess.Popen(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={os.path.join(tmp, 'profile')}", f"http://127.0.0.1:{server.port}/proto.html"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        events = [seen.get(timeout=30) for _ in range(4)]
        assert sorted(value for side, value in events if side == "server") == ["v1.json", "v2.json"]
        reports = {k: v for side, value in events if side == "page" for k, v in value.items()}
        assert reports == {"raw": "v1.json", "peer": "v2.json"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
def test_page_negotiates_permessage_deflate_and_exchanges_compressed_messages(page: Browser) -> None:
    """Chromium and the server agree on permessage-deflate (both sides say so) and long text goes both ways intact."""
    assert page.rh.doRequest({"cmd": "extensions"}, timeout=10)["data"] == "permessage-deflate"
    conn = page.registry.newest(NAME)
    assert conn is not None and conn.connection.extensions == "permessage-deflate"
    text = json.dumps({"rows": [{"id": i, "name": f"sensor {i}", "ok": True} for i in range(2000)]})
    assert page.rh.doRequest({"cmd": "echo", "text": text}, timeout=10)["data"] == text
    syncws.sendWebSocketMessage(NAME, {"cmd": "tick", "pad": "x" * 5000}, registry=page.registry)
    assert page.ack() == {"cmd": "tick", "pad": "x" * 5000}

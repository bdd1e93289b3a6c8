"""The server over real sockets: handshake answers, framing, limits, close and shutdown."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time

import pytest
import websocket
from websockets.sync.client import connect as websockets_connect

import syncws
from syncws import frames

from ..helpers import EchoHandler, RawClient, make_server, stop_with_a_handshake_in_progress, syncws_threads, wait_for

pytestmark = pytest.mark.timeout(60)


def test_start_returns_listening_server(server: syncws.WebSocketServer) -> None:
    """start() returns the server once its port accepts connections, and url names it."""
    assert server.port > 0
    assert server.url == f"ws://127.0.0.1:{server.port}"
    socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


def test_echo_text_and_binary_with_websocket_client(server: syncws.WebSocketServer) -> None:
    """Text comes back as text and binary as binary to a websocket-client peer."""
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    try:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send_binary(b"\x00\xff" * 1000)
        assert ws.recv() == b"\x00\xff" * 1000
    finally:
        ws.close()


def test_echo_with_websockets_client(server: syncws.WebSocketServer) -> None:
    """The websockets package's sync client, an independent implementation, gets its messages echoed."""
    with websockets_connect(server.url + "/echo", open_timeout=5, max_size=None) as ws:
        ws.send("text")
        assert ws.recv(timeout=5) == "text"
        ws.send(os.urandom(100_000))
        reply = ws.recv(timeout=5)
        assert isinstance(reply, bytes) and len(reply) == 100_000


def test_16mib_binary_reaches_on_message_intact() -> None:
    """A 16 MiB binary message from websocket-client reaches on_message as bytes, intact."""
    received: queue.Queue = queue.Queue()

    class Sink(syncws.BaseWebSocketHandler):
        def on_message(self, message):  # type: ignore[no-untyped-def]
            received.put(message)

    srv = make_server()
    srv.add_handler("/sink", Sink)
    payload = os.urandom(16 * 1024 * 1024)
    ws = websocket.create_connection(srv.url + "/sink", timeout=10)
    try:
        ws.send_binary(payload)
        message = received.get(timeout=30)
        assert type(message) is bytes and message == payload
    finally:
        ws.close()
        srv.stop()


def test_fragmented_text_is_reassembled(server: syncws.WebSocketServer) -> None:
    """A text message in three fragments, with a ping between them, arrives whole; the ping is answered."""
    raw = RawClient(server.port)
    assert raw.handshake().startswith(b"HTTP/1.1 101")
    raw.send_frame(frames.OP_TEXT, b"frag", fin=False)
    raw.send_frame(frames.OP_PING, b"p")
    raw.send_frame(frames.OP_CONTINUATION, "mé".encode(), fin=False)
    raw.send_frame(frames.OP_CONTINUATION, b"nt", fin=True)
    assert raw.recv_frame() == (True, frames.OP_PONG, b"p")
    assert raw.recv_frame() == (True, frames.OP_TEXT, "fragmént".encode())
    raw.close()


def test_close_frame_is_answered(server: syncws.WebSocketServer) -> None:
    """A client's close frame gets a close frame with the same code, then the server closes TCP."""
    raw = RawClient(server.port)
    raw.handshake()
    raw.send_frame(frames.OP_CLOSE, frames.encode_close(1000, "done"))
    assert raw.recv_close() == (1000, "done")
    assert raw.at_eof()


@pytest.mark.parametrize(
    "send, code",
    [
        (lambda raw: raw.send_frame(frames.OP_TEXT, b"x", rsv=4), 1002),
        (lambda raw: raw.send_frame(0x3, b"x"), 1002),
        (lambda raw: raw.send_frame(frames.OP_TEXT, b"x", mask=False), 1002),
        (lambda raw: raw.send_frame(frames.OP_CONTINUATION, b"x"), 1002),
        (lambda raw: raw.send_frame(frames.OP_PING, b"x" * 126), 1002),
        (lambda raw: raw.send_frame(frames.OP_TEXT, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"), 1007),
        (lambda raw: raw.send_frame(frames.OP_CLOSE, b"\x03\xe8\xff\xfe"), 1007),
    ],
    ids=["rsv", "opcode", "unmasked", "continuation", "long-ping", "utf8", "close-utf8"],
)
def test_bad_frames_get_their_close_code(server: syncws.WebSocketServer, send, code: int) -> None:  # type: ignore[no-untyped-def]
    """Each protocol violation is answered with its RFC close code and the TCP connection ends."""
    raw = RawClient(server.port)
    raw.handshake()
    send(raw)
    assert raw.recv_close()[0] == code
    raw.send_frame(frames.OP_CLOSE, frames.encode_close(code))
    assert raw.at_eof()


def test_bad_utf8_fails_at_first_fragment(server: syncws.WebSocketServer) -> None:
    """Invalid UTF-8 in the first fragment of a text message fails it with 1007 before the message ends."""
    raw = RawClient(server.port)
    raw.handshake()
    raw.send_frame(frames.OP_TEXT, b"ok\xff", fin=False)
    assert raw.recv_close()[0] == 1007


def test_oversize_message_refused_from_header() -> None:
    """A frame claiming more than max_message_size gets close 1009 without its payload being sent."""
    srv = make_server(max_message_size=1000)
    raw = RawClient(srv.port)
    raw.handshake()
    # Claim 2**62 bytes and send none of them: the answer must come from the header alone.
    raw.send_raw(bytes((0x82, 0xFF)) + (1 << 62).to_bytes(8, "big") + os.urandom(4))
    assert raw.recv_close()[0] == 1009
    srv.stop()


def test_oversize_fragmented_message_refused() -> None:
    """Fragments that add up past max_message_size get close 1009."""
    srv = make_server(max_message_size=1000)
    raw = RawClient(srv.port)
    raw.handshake()
    raw.send_frame(frames.OP_BINARY, b"x" * 600, fin=False)
    raw.send_frame(frames.OP_CONTINUATION, b"x" * 600, fin=True)
    assert raw.recv_close()[0] == 1009
    srv.stop()


_UPGRADE = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
_KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n" + _UPGRADE + _KEY + b"Sec-WebSocket-Version: 13\r\n\r\n",
            b"404",
        ),
        (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
        (
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n",
            b"400",
        ),
        (
            b"GET /echo HTTP/1.1\r\nHost: x\r\n" + _UPGRADE + _KEY + b"Sec-WebSocket-Version: 8\r\n\r\n",
            b"426",
        ),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (b"garbage\r\n\r\n", b"400"),
        (b"GET /echo HTTP/1.1\r\nbad header line\r\n\r\n", b"400"),
        (b"GET /echo HTTP/1.1\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    ],
    ids=["unknown-path", "not-upgrade", "bad-key", "bad-version", "post", "garbage", "bad-header", "too-large"],
)
def test_bad_handshakes_get_http_errors(server: syncws.WebSocketServer, request_bytes: bytes, status: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A bad handshake gets its HTTP error status, no upgrade, and no traceback in the log."""
    raw = RawClient(server.port)
    raw.send_raw(request_bytes)
    head = raw.read_head()
    assert head.split(b" ")[1] == status
    assert raw.at_eof()
    assert not any(r.exc_info for r in caplog.records)


def test_too_many_headers_refused() -> None:
    """More header fields than max_headers get HTTP 431."""
    srv = make_server(max_headers=5)
    raw = RawClient(srv.port)
    extra = "".join(f"X-H{i}: v\r\n" for i in range(10))
    assert raw.handshake(extra=extra).split(b" ")[1] == b"431"
    srv.stop()


def test_slow_handshake_is_dropped() -> None:
    """A client that does not finish its handshake within handshake_timeout is disconnected."""
    srv = make_server(handshake_timeout=0.5)
    raw = RawClient(srv.port)
    raw.send_raw(b"GET /echo HTTP/1.1\r\n")
    assert raw.at_eof(timeout=5)
    srv.stop()


def test_stop_returns_when_client_never_answers_close() -> None:
    """stop() returns within close_timeout and a little more even if a client ignores the close frame."""
    srv = make_server(close_timeout=1.0)
    raw = RawClient(srv.port)
    raw.handshake()
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 4.0
    assert raw.recv_close()[0] == 1001
    srv.stop()  # a second call is harmless


def test_stop_from_a_handler_does_not_wait_for_that_handler_and_its_on_close_runs_after() -> None:
    """A handler that calls stop() gets it back without close_timeout's wait for its own connection; its on_close runs once it returns."""
    events: queue.Queue[str] = queue.Queue()

    class Stopper(syncws.BaseWebSocketHandler):
        def on_message(self, message: object) -> None:
            self.server.stop()
            events.put("stop returned")

        def on_close(self) -> None:
            events.put("on_close")

    srv = make_server(close_timeout=60)
    srv.add_handler("/stop", Stopper, name="stop")
    ws = websocket.create_connection(srv.url + "/stop", timeout=10)
    try:
        ws.send("stop, please")
        assert events.get(timeout=20) == "stop returned"  # well before close_timeout
        assert events.get(timeout=20) == "on_close"
        assert wait_for(lambda: not syncws_threads(), timeout=10)
    finally:
        ws.close()
        srv.stop()


def test_stop_cuts_short_a_handshake_in_progress() -> None:
    """stop() ends a connection still in its handshake at once, instead of after handshake_timeout: the client sees
    its socket closed, stop() returns well before close_timeout, and no syncws thread is left."""
    srv = make_server(handshake_timeout=30, close_timeout=5)
    silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    # Accepted in order: once this one has its 101, the silent socket is in its handshake.
    websocket.create_connection(srv.url + "/echo", timeout=5).close()
    stop_with_a_handshake_in_progress(srv, silent)


def test_stop_leaves_no_threads_and_frees_port() -> None:
    """After stop() no syncws thread is left and the port can be bound again."""
    srv = make_server()
    clients = [websocket.create_connection(srv.url + "/echo", timeout=5) for _ in range(5)]
    assert wait_for(lambda: len(srv.clients) == 5)
    port = srv.port
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    for ws in clients:
        try:
            ws.recv()  # receives the close frame and answers it
        except websocket.WebSocketConnectionClosedException:
            pass
        ws.close()
    stopper.join(10)
    assert not stopper.is_alive()
    assert wait_for(lambda: not syncws_threads())
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    probe.bind(("127.0.0.1", port))
    probe.close()


def test_context_manager_starts_and_stops() -> None:
    """``with WebSocketServer(...)`` serves inside the block and stops at its end."""
    with syncws.WebSocketServer(registry=syncws.ConnectionRegistry()) as srv:
        srv.add_handler("/echo", EchoHandler)
        ws = websocket.create_connection(srv.url + "/echo", timeout=5)
        ws.send("x")
        assert ws.recv() == "x"
        ws.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", srv.port), timeout=1)


def test_connection_threads_are_named(server: syncws.WebSocketServer) -> None:
    """The accept loop runs on syncws-server; a connection on syncws-conn-N, or with the reactor engine on syncws-io (and syncws-watchdog)."""
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    ws.send("hi")
    assert ws.recv() == "hi"  # the handler ran: a reactor's worker is started
    names = lambda: {t.name for t in syncws_threads()}  # noqa: E731
    assert "syncws-server" in names()
    if server.engine == "reactor":
        # The worker that ran the echo on the loop's own thread takes the loop's name again when it leads.
        assert wait_for(lambda: "syncws-io" in names() and "syncws-watchdog" in names())
    else:
        assert any(n.startswith("syncws-conn-") for n in names())
    ws.close()


def test_import_leaves_root_logger_alone() -> None:
    """Importing syncws (and so websocket-server) adds no handler to the root logger."""
    import subprocess
    import sys

    code = "import logging, syncws; print(len(logging.getLogger().handlers))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip() == "0"


def test_keepalive_drops_silent_peer() -> None:
    """A peer that answers no ping is dropped after ping_interval plus ping_timeout."""
    closed = threading.Event()

    class Watch(syncws.BaseWebSocketHandler):
        def on_close(self) -> None:
            super().on_close()
            closed.set()

    srv = make_server(ping_interval=0.2, ping_timeout=0.3)
    srv.add_handler("/watch", Watch)
    raw = RawClient(srv.port)
    raw.handshake("/watch")  # then never reads nor answers the ping
    assert closed.wait(5)
    srv.stop()


def test_keepalive_keeps_answering_peer() -> None:
    """A peer that answers pings stays connected past several ping intervals."""
    srv = make_server(ping_interval=0.1, ping_timeout=0.3)
    ws = websocket.create_connection(srv.url + "/echo", timeout=5)
    pings = 0
    while pings < 5:  # bounded: five pings answered by websocket-client's recv
        opcode, _ = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_PING:
            ws.pong(b"")
            pings += 1
    ws.send("still here")
    assert ws.recv() == "still here"
    ws.close()
    srv.stop()


def test_handler_error_is_logged_once_and_connection_lives(server: syncws.WebSocketServer, caplog: pytest.LogCaptureFixture) -> None:
    """An exception in on_message is logged and the connection keeps serving."""

    class Flaky(syncws.BaseWebSocketHandler):
        def on_message(self, message):  # type: ignore[no-untyped-def]
            if message == "boom":
                raise RuntimeError("boom")
            self.write_message(message)

    server.add_handler("/flaky", Flaky)
    ws = websocket.create_connection(server.url + "/flaky", timeout=5)
    with caplog.at_level(logging.ERROR, logger="syncws"):
        ws.send("boom")
        ws.send("after")
        assert ws.recv() == "after"
    assert sum("boom" in (r.exc_text or str(r.exc_info)) for r in caplog.records) == 1
    ws.close()


def test_client_recv_timeout_then_message(server: syncws.WebSocketServer) -> None:
    """ClientConnection.recv(timeout) raises TimeoutError when nothing comes, and the connection stays usable."""
    conn = syncws.connect(server.url + "/echo")
    with pytest.raises(TimeoutError):
        conn.recv(timeout=0.05)
    conn.send("late")
    assert conn.recv(timeout=5) == "late"
    conn.close()
    assert conn.close_code == 1000


def test_close_timeout_holds_while_peer_keeps_sending() -> None:
    """After our close frame, a peer that keeps sending data instead of closing is dropped after close_timeout."""
    closed = threading.Event()

    class Closer(syncws.BaseWebSocketHandler):
        def open(self) -> None:
            super().open()
            self.close(1000, "bye")

        def on_close(self) -> None:
            super().on_close()
            closed.set()

    srv = make_server(close_timeout=0.5)
    srv.add_handler("/closer", Closer)
    raw = RawClient(srv.port)
    raw.handshake("/closer")
    assert raw.recv_close() == (1000, "bye")
    for _ in range(2000):  # bounded: keep talking until the server gives up on us
        if closed.is_set():
            break
        try:
            raw.send_frame(frames.OP_TEXT, b"still talking")
        except OSError:
            break
        closed.wait(0.01)
    assert closed.wait(5)
    srv.stop()


def test_add_handler_refuses_a_class_that_is_not_a_handler(server: syncws.WebSocketServer) -> None:
    """add_handler with a class that is not a BaseWebSocketHandler raises TypeError at the call, and serves nothing there."""
    with pytest.raises(TypeError, match="BaseWebSocketHandler"):
        server.add_handler("/x", dict)  # type: ignore[arg-type]
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(server.url + "/x", timeout=5)
    assert refused.value.status_code == 404


def test_add_handler_refuses_a_path_already_served(server: syncws.WebSocketServer) -> None:
    """A second add_handler on the same path raises ValueError, and the first handler keeps serving it."""
    with pytest.raises(ValueError, match="already served"):
        server.add_handler("/echo", syncws.RejectWebSocketHandler)
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    ws.send("still echo")
    assert ws.recv() == "still echo"
    ws.close()


def test_client_recv_timeout_holds_while_the_server_keeps_pinging() -> None:
    """ClientConnection.recv(timeout) raises TimeoutError on time although the server pings faster than the timeout."""
    stop = threading.Event()

    class Pinger(syncws.BaseWebSocketHandler):
        def open(self) -> None:
            super().open()
            threading.Thread(target=self._ping, daemon=True).start()

        def _ping(self) -> None:
            for _ in range(1000):  # at most 10 s
                if stop.wait(0.01):
                    break
                try:
                    self.ping(b"p")
                except syncws.SyncWSError:
                    return
            self.write_message("done")

    srv = make_server()
    srv.add_handler("/pinger", Pinger)
    conn = syncws.connect(srv.url + "/pinger")
    try:
        with pytest.raises(TimeoutError):
            conn.recv(timeout=0.3)
        stop.set()
        assert conn.recv(timeout=10) == "done"
    finally:
        conn.close()
        srv.stop()

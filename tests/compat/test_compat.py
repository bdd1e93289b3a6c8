"""syncws.compat.WebsocketServer against programs written the way websocket-server 0.6.4's README and examples write them."""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as websockets_connect

import syncws
from syncws.compat.websocket_server_api import WebsocketServer, websocket_server

from ..helpers import EchoHandler, self_signed

pytestmark = pytest.mark.timeout(60)

# websocket-server's own example program (server.py, the one its README points to), verbatim except
# for three lines: the import, PORT=0, and run_forever(threaded=True) so that it runs inside the test.
README_PROGRAM = """\
from syncws.compat.websocket_server_api import WebsocketServer


# Called for every client connecting (after handshake)
def new_client(client, server):
    print("New client connected and was given id %d" % client['id'])
    server.send_message_to_all("Hey all, a new client has joined us")


# Called for every client disconnecting
def client_left(client, server):
    print("Client(%d) disconnected" % client['id'])


# Called when a client sends a message
def message_received(client, server, message):
    if len(message) > 200:
        message = message[:200]+'..'
    print("Client(%d) said: %s" % (client['id'], message))


PORT=0
server = WebsocketServer(port = PORT)
server.set_fn_new_client(new_client)
server.set_fn_client_left(client_left)
server.set_fn_message_received(message_received)
server.run_forever(threaded=True)
"""


class LineQueue(io.TextIOBase):
    """A stand-in for stdout that puts each printed line on a queue, whatever thread prints it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: queue.Queue[str] = queue.Queue()
        self._partial = ""
        self._lock = threading.Lock()  # guards _partial

    def write(self, text: str) -> int:  # type: ignore[override]
        with self._lock:
            self._partial += text
            *done, self._partial = self._partial.split("\n")
        for line in done:
            self.lines.put(line)
        return len(text)

    def next(self) -> str:
        return self.lines.get(timeout=10)


class Events:
    """Callbacks that record what they were given on queues."""

    def __init__(self, server: WebsocketServer) -> None:
        self.new: queue.Queue[dict[str, Any]] = queue.Queue()
        self.left: queue.Queue[dict[str, Any]] = queue.Queue()
        self.messages: queue.Queue[tuple[dict[str, Any], Any]] = queue.Queue()
        server.set_fn_new_client(lambda client, server: self.new.put(client))
        server.set_fn_client_left(lambda client, server: self.left.put(client))
        server.set_fn_message_received(lambda client, server, message: self.messages.put((client, message)))


@pytest.fixture
def server() -> Iterator[WebsocketServer]:
    """A compat server on port 0, run with run_forever(threaded=True), stopped afterwards."""
    srv = WebsocketServer(port=0)
    srv.run_forever(threaded=True)
    yield srv
    srv.stop()


def url(server: WebsocketServer, path: str = "/") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def connect(server: WebsocketServer, path: str = "/") -> websocket.WebSocket:
    return websocket.create_connection(url(server, path), timeout=10)


def test_readme_program_runs_unchanged_but_for_its_import() -> None:
    """websocket-server's example program runs on syncws.compat: new_client greets everyone, messages are printed cut
    to 200 characters, and client_left reports the departure."""
    out = LineQueue()
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(out):
        exec(README_PROGRAM, namespace)
        server = namespace["server"]
        try:
            first = connect(server)
            assert first.recv() == "Hey all, a new client has joined us"
            assert out.next() == "New client connected and was given id 1"
            second = connect(server, "/chat")
            assert second.recv() == "Hey all, a new client has joined us"
            assert first.recv() == "Hey all, a new client has joined us"
            assert out.next() == "New client connected and was given id 2"
            first.send("x" * 300)
            assert out.next() == "Client(1) said: " + "x" * 200 + ".."
            first.close()
            assert out.next() == "Client(1) disconnected"
            second.close()
            assert out.next() == "Client(2) disconnected"
        finally:
            server.shutdown_gracefully()


def test_issue_program_echoes_on_any_path() -> None:
    """The program that got a 404 from syncws.WebSocketServer echoes on syncws.compat, on / and on any other path."""
    server = WebsocketServer(port=0)
    server.set_fn_message_received(lambda client, server, msg: server.send_message(client, msg))
    server.run_forever(threaded=True)
    try:
        for path in ("/", "/some/path?with=query"):
            ws = connect(server, path)
            ws.send("echo me")
            assert ws.recv() == "echo me"
            ws.close()
    finally:
        server.shutdown_gracefully()


def test_connecting_client_is_in_send_message_to_all_at_once(server: WebsocketServer) -> None:
    """A client that has its 101 is in clients and gets send_message_to_all, every time (websocket-server's race)."""
    events = Events(server)
    for i in range(50):
        if i % 2:
            with websockets_connect(url(server, "/race"), open_timeout=10) as ws2:
                assert i + 1 in [c["id"] for c in server.clients]
                server.send_message_to_all(f"hello {i}")
                assert ws2.recv(timeout=10) == f"hello {i}"
        else:
            ws = connect(server, "/race")
            assert i + 1 in [c["id"] for c in server.clients]
            server.send_message_to_all(f"hello {i}")
            assert ws.recv() == f"hello {i}"
            ws.close()
        assert events.left.get(timeout=10)["id"] == i + 1


def test_clients_are_the_callbacks_dicts_with_increasing_ids(server: WebsocketServer) -> None:
    """clients lists, oldest first, the very dicts new_client got: id 1, 2, ..., the handler and the address."""
    events = Events(server)
    a, b = connect(server), connect(server)  # a has its 101, and so its id, before b connects
    # Each new_client runs on its own connection's thread: the two may come in either order.
    got = {c["id"]: c for c in (events.new.get(timeout=10), events.new.get(timeout=10))}
    first, second = got[1], got[2]
    assert [c["id"] for c in server.clients] == [1, 2]
    assert server.clients[0] is first and server.clients[1] is second
    assert first["address"] == a.sock.getsockname() and first["handler"].client_address == first["address"]
    assert server.handler_to_client(second["handler"]) is second
    a.close()
    assert events.left.get(timeout=10) is first
    b.close()
    assert events.left.get(timeout=10) is second


def test_send_message_reaches_one_client_and_handler_methods_work(server: WebsocketServer) -> None:
    """send_message and the handler's send_message go to that client only; send_pong sends a pong; connection is its socket."""
    events = Events(server)
    a, b = connect(server), connect(server)
    ca = min((events.new.get(timeout=10), events.new.get(timeout=10)), key=lambda c: c["id"])  # a's: id 1, whichever came first
    server.send_message(ca, "for a")
    ca["handler"].send_message(b"bytes that are UTF-8 \xc3\xa9")
    assert a.recv() == "for a"
    assert a.recv() == "bytes that are UTF-8 é"
    assert ca["handler"].send_message(b"\xff") is False  # not text: refused, as websocket-server does
    ca["handler"].send_pong("beat")
    opcode, frame = a.recv_data_frame(control_frame=True)
    assert (opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"beat")
    assert isinstance(ca["handler"].connection, socket.socket)
    assert ca["handler"].connection.getpeername() == a.sock.getsockname()
    assert ca["handler"].keep_alive is True
    b.settimeout(0.2)
    with pytest.raises(websocket.WebSocketTimeoutException):
        b.recv()
    a.close()
    b.close()


def test_handler_send_close_starts_the_closing_handshake(server: WebsocketServer) -> None:
    """client["handler"].send_close(status, reason) closes that client with its status and reason; client_left follows."""
    events = Events(server)
    ws = connect(server)
    client = events.new.get(timeout=10)
    client["handler"].send_close(4000, b"go away")
    assert close_frame(ws) == (4000).to_bytes(2, "big") + b"go away"
    assert events.left.get(timeout=10) is client
    assert client["handler"].keep_alive is False


def test_binary_messages_arrive_as_bytes_and_write_message_sends_binary(server: WebsocketServer) -> None:
    """A binary message reaches message_received as bytes (websocket-server drops it); write_message sends bytes as binary."""
    events = Events(server)
    with websockets_connect(url(server), open_timeout=10) as ws:
        client = events.new.get(timeout=10)
        ws.send(b"\x00\x01" * 100_000)
        got_client, message = events.messages.get(timeout=10)
        assert got_client is client and message == b"\x00\x01" * 100_000
        ws.send(["frag", "mented"])  # fragmentation: one message in two frames
        assert events.messages.get(timeout=10)[1] == "fragmented"
        client["handler"].write_message(b"\xff\xfe")
        assert ws.recv(timeout=10) == b"\xff\xfe"


def test_deny_then_allow_new_connections(server: WebsocketServer) -> None:
    """While denied, a new client completes its handshake and gets a close frame with the status and reason, without
    joining clients or calling new_client; after allow_new_connections clients join again."""
    events = Events(server)
    server.deny_new_connections(status=1013, reason=b"try later")
    denied = connect(server)
    opcode, frame = denied.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert frame.data == (1013).to_bytes(2, "big") + b"try later"
    denied.close()
    assert server.clients == []
    server.allow_new_connections()
    ws = connect(server)
    assert events.new.get(timeout=10)["id"] == 1
    assert events.new.empty()
    ws.close()


def close_frame(ws: websocket.WebSocket) -> bytes:
    """The payload of the next frame, which must be a close frame."""
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    return bytes(frame.data)


def test_disconnect_clients_gracefully_sends_close_and_server_lives(server: WebsocketServer) -> None:
    """disconnect_clients_gracefully(status, reason) closes every client with them and returns once each has left and
    client_left has run for it; new clients still connect."""
    events = Events(server)
    # The websockets client answers a close frame on its own thread, whatever the test does meanwhile.
    with websockets_connect(url(server), open_timeout=10) as a, websockets_connect(url(server), open_timeout=10) as b:
        events.new.get(timeout=10), events.new.get(timeout=10)
        server.disconnect_clients_gracefully(1001, b"moving")
        assert server.clients == []
        assert {events.left.get_nowait()["id"], events.left.get_nowait()["id"]} == {1, 2}  # client_left ran before the return
        for ws in (a, b):
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert (ws.close_code, ws.close_reason) == (1001, "moving")
    c = connect(server)
    assert events.new.get(timeout=10)["id"] == 3
    c.close()


def test_disconnect_clients_abruptly_leaves_clients_unaware_until_they_send(server: WebsocketServer) -> None:
    """disconnect_clients_abruptly empties clients and runs client_left before it returns, and tells the client nothing
    (websocket-server's documented behaviour); the client's next message still reaches message_received, then its
    connection drops without a close frame."""
    events = Events(server)
    ws = connect(server)
    client = events.new.get(timeout=10)
    server.disconnect_clients_abruptly()
    assert server.clients == []
    assert events.left.get_nowait() is client
    assert client["handler"].keep_alive is False
    assert select.select([ws.sock], [], [], 0.3)[0] == []  # nothing reaches the client
    ws.send("one more")
    assert events.messages.get(timeout=10) == (client, "one more")
    assert ws.sock.recv(16) == b""  # end of stream, no close frame before it
    ws.close()


def test_shutdown_gracefully_closes_clients_and_stops() -> None:
    """shutdown_gracefully(status, reason) sends each client a close frame with them, ends the accept loop and frees the port."""
    server = WebsocketServer(port=0)
    events = Events(server)
    server.run_forever(threaded=True)
    ws = connect(server)
    events.new.get(timeout=10)
    stopper = threading.Thread(target=server.shutdown_gracefully, kwargs={"status": 1000, "reason": b"done"})
    stopper.start()
    assert close_frame(ws) == (1000).to_bytes(2, "big") + b"done"
    ws.close()
    stopper.join(10)
    assert not stopper.is_alive()
    assert events.left.get(timeout=10)["id"] == 1
    assert server.thread is not None and not server.thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_shutdown_abruptly_stops_and_leaves_clients_unaware_until_they_send() -> None:
    """shutdown_abruptly empties clients, ends the accept loop (its thread too) and frees the port before it returns; the
    client hears nothing until it sends: that message still reaches message_received, then the connection drops."""
    server = WebsocketServer(port=0)
    events = Events(server)
    server.run_forever(threaded=True)
    ws = connect(server)
    client = events.new.get(timeout=10)
    server.shutdown_abruptly()
    assert server.clients == [] and events.left.get_nowait() is client
    assert server.thread is not None and not server.thread.is_alive()
    assert server.socket.fileno() == -1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)
    assert select.select([ws.sock], [], [], 0.3)[0] == []
    ws.send("after the shutdown")
    assert events.messages.get(timeout=10) == (client, "after the shutdown")
    assert ws.sock.recv(16) == b""
    ws.close()


def test_run_forever_blocks_until_shutdown_and_socketserver_names_work() -> None:
    """run_forever() serves on the calling thread until shutdown(); port, host, server_address, socket, thread and
    server_close() are socketserver's."""
    server = WebsocketServer(host="127.0.0.1", port=0)
    assert server.host == "127.0.0.1" and server.server_address == ("127.0.0.1", server.port)
    assert server.socket.getsockname()[1] == server.port
    runner = threading.Thread(target=server.run_forever, name="test-run-forever")
    runner.start()
    ws = connect(server)
    assert server.thread is runner
    ws.close()
    server.shutdown()
    runner.join(15)
    assert not runner.is_alive()
    server.server_close()


def test_callback_exception_is_logged_and_connection_lives(server: WebsocketServer, caplog: pytest.LogCaptureFixture) -> None:
    """An exception in message_received is logged on syncws.compat and the client stays connected."""

    def fails(client: dict[str, Any], server: WebsocketServer, message: str) -> None:
        if message == "boom":
            raise RuntimeError("boom")
        server.send_message(client, "still here")

    server.set_fn_message_received(fails)
    with caplog.at_level(logging.ERROR, logger="syncws.compat.websocket_server_api"):
        ws = connect(server)
        ws.send("boom")
        ws.send("again")
        assert ws.recv() == "still here"
        ws.close()
    assert any("failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_loglevel_sets_compat_logger_only() -> None:
    """loglevel sets syncws.compat's logger level; the root logger keeps its level and handlers."""
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    compat_logger = logging.getLogger("syncws.compat.websocket_server_api")
    level = compat_logger.level
    try:
        server = WebsocketServer(port=0, loglevel=logging.DEBUG)
        server.server_close()
        assert compat_logger.level == logging.DEBUG
        assert (root.level, list(root.handlers)) == before
    finally:
        compat_logger.setLevel(level)


def test_tls_with_key_and_cert_files(tmp_path: Path) -> None:
    """key= and cert= file paths serve wss://, for websocket-client and the websockets client alike."""
    cert_path, key_path = self_signed(tmp_path)
    server = WebsocketServer(port=0, key=str(key_path), cert=str(cert_path))
    server.set_fn_message_received(lambda client, server, msg: server.send_message(client, msg))
    server.run_forever(threaded=True)
    try:
        ws = websocket.create_connection(f"wss://127.0.0.1:{server.port}/", timeout=10, sslopt={"ca_certs": str(cert_path)})
        ws.send("secure")
        assert ws.recv() == "secure"
        ws.close()
        context = ssl.create_default_context(cafile=str(cert_path))
        with websockets_connect(f"wss://127.0.0.1:{server.port}/x", ssl=context, open_timeout=10) as ws2:
            ws2.send("also secure")
            assert ws2.recv(timeout=10) == "also secure"
    finally:
        server.shutdown_gracefully()
    with pytest.raises(ValueError):
        WebsocketServer(port=0, cert=str(cert_path))


# What syncws.WebSocketServer has of websocket-server's names, each shown to work below; every other name is absent.
SYNCWS_KEEPS = {"clients", "send_message_to_all", "port", "host", "thread", "socket", "server_address", "server_close", "shutdown", "serve_forever"}


def websocket_server_names() -> set[str]:
    """The public names of websocket-server's API class and server objects."""
    plain = websocket_server.WebsocketServer(port=0)
    try:
        names = {n for n in dir(plain) if not n.startswith("_")} | {n for n in dir(websocket_server.API) if not n.startswith("_")}
    finally:
        plain.server_close()
    return names


def test_syncws_server_has_websocket_server_names_that_work_or_none() -> None:
    """Each websocket-server name on syncws.WebSocketServer works (clients, send_message_to_all, socketserver's); the
    callbacks, deny/allow, run_forever and the shutdown and disconnect methods are absent, not silently dead."""
    names = websocket_server_names()
    assert {"set_fn_new_client", "deny_new_connections", "run_forever", "shutdown_gracefully"} <= names
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry())
    server.add_handler("/echo", EchoHandler)
    server.start()
    try:
        present = {n for n in names if hasattr(server, n)}
        socketserver_names = {n for n in present if not hasattr(websocket_server.API, n)} - SYNCWS_KEEPS
        # What remains present comes from socketserver.TCPServer, which both servers are.
        plain_tcp = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler, bind_and_activate=False)
        plain_tcp.server_close()
        assert all(hasattr(plain_tcp, n) for n in socketserver_names), socketserver_names
        assert not {"key", "cert", "id_counter", "handler_to_client", "new_client", "set_fn_new_client"} & present
        assert present & set(dir(websocket_server.API)) == {"send_message_to_all"}
        ws = websocket.create_connection(server.url + "/echo", timeout=10)
        assert len(server.clients) == 1 and server.clients[0]["address"] == ws.sock.getsockname()
        server.send_message_to_all("to all")
        assert ws.recv() == "to all"
        assert server.server_address == ("127.0.0.1", server.port) and server.host == "127.0.0.1"
        assert server.socket.getsockname()[1] == server.port and server.thread is not None and server.thread.is_alive()
        ws.close()
    finally:
        server.stop()
    assert not server.thread.is_alive()

"""How clients leave a syncws.compat.WebsocketServer: when they are out of ``clients``, what their socket does
afterwards, and how long the disconnects wait, as websocket-server 0.6.4's own test suite expects."""

from __future__ import annotations

import queue
import select
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest
import websocket

from syncws.compat import WebSocketHandler
from syncws.compat.websocket_server_api import WebsocketServer

from ..helpers import self_signed

pytestmark = pytest.mark.timeout(60)


class Events:
    """Callbacks that record what they were given on queues (each runs on the thread the server calls it on)."""

    def __init__(self, server: WebsocketServer) -> None:
        self.new: queue.Queue[dict[str, Any]] = queue.Queue()
        self.left: queue.Queue[dict[str, Any]] = queue.Queue()
        self.messages: queue.Queue[tuple[dict[str, Any], Any]] = queue.Queue()
        server.set_fn_new_client(lambda client, server: self.new.put(client))
        server.set_fn_client_left(lambda client, server: self.left.put(client))
        server.set_fn_message_received(lambda client, server, message: self.messages.put((client, message)))


@pytest.fixture
def started() -> Iterator[list[WebsocketServer]]:
    """Servers a test starts, stopped afterwards."""
    servers: list[WebsocketServer] = []
    yield servers
    for server in servers:
        server.stop()


def serve(started: list[WebsocketServer], **options: Any) -> tuple[WebsocketServer, Events]:
    """A compat server on port 0, run with run_forever(threaded=True), and its recorded events."""
    server = WebsocketServer(port=0, **options)
    events = Events(server)
    server.run_forever(threaded=True)
    started.append(server)
    return server, events


def connect(server: WebsocketServer, sslopt: Optional[dict[str, Any]] = None) -> websocket.WebSocket:
    scheme = "ws" if sslopt is None else "wss"
    return websocket.create_connection(f"{scheme}://127.0.0.1:{server.port}/", timeout=10, sslopt=sslopt)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_client_that_closes_is_gone_once_its_close_returns(started: list[WebsocketServer], tmp_path: Path, tls: bool) -> None:
    """Once websocket-client's close() has returned (it waits for the answering close frame), the client is out of
    clients, and its handler's socket is open and shut down: a send raises BrokenPipeError, as with websocket-server.
    client_left follows. Many times over, as the order must hold every time."""
    options: dict[str, Any] = {}
    sslopt = None
    if tls:
        cert, key = self_signed(tmp_path)
        options = {"cert": str(cert), "key": str(key)}
        sslopt = {"ca_certs": str(cert)}
    server, events = serve(started, **options)
    for _ in range(20):
        ws = connect(server, sslopt)
        client = events.new.get(timeout=10)
        handler = client["handler"]
        ws.close()
        assert server.clients == []
        with pytest.raises(BrokenPipeError):
            handler.connection.send(b"late")
        assert events.left.get(timeout=10) is client
        assert handler.keep_alive is False


def test_a_client_let_go_of_that_stays_silent_is_dropped_after_close_timeout(started: list[WebsocketServer]) -> None:
    """disconnect_clients_abruptly tells the client nothing; one that sends nothing either is dropped, without a close
    frame, once close_timeout has passed."""
    server, events = serve(started, close_timeout=0.3)
    ws = connect(server)
    client = events.new.get(timeout=10)
    server.disconnect_clients_abruptly()
    assert events.left.get_nowait() is client
    assert ws.sock.recv(16) == b""  # blocks until the drop: end of stream, no close frame before it
    ws.close()


def test_disconnect_clients_gracefully_drops_a_silent_client_after_close_timeout(started: list[WebsocketServer]) -> None:
    """A client that never answers the close frame is dropped after close_timeout; disconnect_clients_gracefully returns
    then, with client_left run for it, and the client finds the close frame, then the end of the stream."""
    server, events = serve(started, close_timeout=0.3)
    ws = connect(server)  # websocket-client reads only when asked: it cannot answer meanwhile
    client = events.new.get(timeout=10)
    server.disconnect_clients_gracefully(4001, b"bye")
    assert server.clients == []
    assert events.left.get_nowait() is client
    opcode, frame = ws.recv_data_frame(control_frame=True)
    assert (opcode, frame.data) == (websocket.ABNF.OPCODE_CLOSE, (4001).to_bytes(2, "big") + b"bye")
    assert ws.sock.recv(16) == b""
    ws.close()


def test_a_disconnect_called_from_a_callback_does_not_wait_for_its_own_client(started: list[WebsocketServer]) -> None:
    """disconnect_clients_gracefully from message_received returns at once, though its own client cannot finish its
    closing handshake until the callback returns (close_timeout is long: waiting for it would show)."""
    server, events = serve(started, close_timeout=30)
    returned: queue.Queue[bool] = queue.Queue()

    def disconnect_all(client: dict[str, Any], server: WebsocketServer, message: str) -> None:
        server.disconnect_clients_gracefully()
        returned.put(True)

    server.set_fn_message_received(disconnect_all)
    ws = connect(server)
    client = events.new.get(timeout=10)
    ws.send("everyone out")
    assert returned.get(timeout=10)
    assert server.clients == []
    opcode, _ = ws.recv_data_frame(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    ws.close()
    assert events.left.get(timeout=10) is client


def test_disconnect_clients_gracefully_refuses_a_bad_status_before_closing_anyone(started: list[WebsocketServer]) -> None:
    """A status outside 1000 to 4999 raises ValueError and closes no client."""
    server, events = serve(started)
    ws = connect(server)
    events.new.get(timeout=10)
    with pytest.raises(ValueError):
        server.disconnect_clients_gracefully(999)
    assert len(server.clients) == 1
    assert select.select([ws.sock], [], [], 0)[0] == []
    ws.close()
    events.left.get(timeout=10)


def test_shutdown_waits_for_the_accept_thread(started: list[WebsocketServer]) -> None:
    """socketserver's shutdown() returns with the thread of run_forever(threaded=True) ended, as programs check."""
    server, _ = serve(started)
    assert server.thread is not None and server.thread.is_alive()
    server.shutdown()
    assert not server.thread.is_alive()
    server.server_close()


def test_shutdown_from_another_thread_while_run_forever_blocks() -> None:
    """run_forever() on a thread of the program's own: shutdown() from elsewhere ends it (and does not join the
    program's thread, which goes on after run_forever returns)."""
    server = WebsocketServer(port=0)
    done = threading.Event()

    def run() -> None:
        server.run_forever()
        done.set()

    runner = threading.Thread(target=run, name="test-run-forever")
    runner.start()
    ws = connect(server)
    ws.send("serving")
    ws.close()
    server.shutdown()
    assert done.wait(10)
    runner.join(10)
    server.server_close()


def test_handshake_classmethods_are_websocket_servers() -> None:
    """WebSocketHandler.calculate_response_key and make_handshake_response give websocket-server's values (RFC 6455's example)."""
    assert WebSocketHandler.calculate_response_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert WebSocketHandler.make_handshake_response("dGhlIHNhbXBsZSBub25jZQ==") == (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    )

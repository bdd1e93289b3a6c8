"""A websocket on the I/O loop (Stream): real clients are echoed, answered and closed as RFC 6455 says, with one loop thread for all."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any, Optional, Union

import pytest
import websocket

from syncws.exceptions import ConnectionClosed
from syncws.protocol import frames
from syncws.protocol.handshake import accept_response, check_upgrade, parse_http_request
from syncws.protocol.protocol import Protocol
from syncws.reactor.handler_pool import HandlerPool
from syncws.reactor.loop import IOLoop
from syncws.reactor.stream import Stream

from ..helpers import wait_for

pytestmark = pytest.mark.timeout(60)


class Reactor:
    """A listening socket whose connections, once their opening handshake is done on an accept thread, run as Streams on one loop."""

    def __init__(self, **stream_options: Any) -> None:
        self.loop = IOLoop(name="test-io").start()
        self.pool = HandlerPool(max_workers=2000, idle_timeout=1.0, name="test-worker")
        self.options = stream_options
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.listener.getsockname()[1]
        self.streams: queue.Queue[Stream] = queue.Queue()
        self.closes: queue.Queue[tuple[int, str]] = queue.Queue()
        self.echo = True
        self.gate: Optional[threading.Event] = None  # when set, on_message waits on it first
        self.handled: list[Union[str, bytes]] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except OSError:
                return
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            head, rest = head.split(b"\r\n\r\n", 1)
            request = parse_http_request(head, address)
            check_upgrade(request.headers)
            sock.sendall(accept_response(request))
            holder: list[Stream] = []

            def on_message(message: Union[str, bytes], holder: list[Stream] = holder) -> None:
                if self.gate is not None:
                    self.gate.wait(30)
                self.handled.append(message)
                if self.echo:
                    try:
                        holder[0].send(message)
                    except ConnectionClosed:
                        pass  # the client left first

            stream = Stream(
                self.loop,
                sock,
                Protocol(is_client=False),
                self.pool,
                on_message,
                lambda code, reason: self.closes.put((code, reason)),
                initial_data=rest,
                **self.options,
            )
            holder.append(stream)
            stream.start()
            self.streams.put(stream)

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept thread; close() alone would not
        self.listener.close()
        self._accepting.join(5)
        assert self.loop.stop(5)
        assert self.pool.stop(5)


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    made = Reactor()
    yield made
    made.close()


def test_text_and_binary_are_echoed_in_order(reactor: Reactor) -> None:
    """A websocket-client's text and binary messages, small and 3 MiB, come back unchanged and in order."""
    ws = websocket.create_connection(reactor.url, timeout=10)
    try:
        big = bytes(range(256)) * (3 * 4096)
        for message in ("hello", b"\x00\xff" * 10, big, "é" * 1000):
            if isinstance(message, bytes):
                ws.send_binary(message)
            else:
                ws.send(message)
        assert [ws.recv() for _ in range(4)] == ["hello", b"\x00\xff" * 10, big, "é" * 1000]
    finally:
        ws.close()


def test_a_ping_is_answered_with_its_payload_on_the_loop(reactor: Reactor) -> None:
    """A client's ping gets a pong with the same payload, even while the handler is blocked."""
    reactor.gate = threading.Event()
    ws = websocket.create_connection(reactor.url, timeout=10)
    try:
        ws.send("blocks the handler")
        ws.ping(b"are you there")
        opcode, payload = ws.recv_data(control_frame=True)
        assert (opcode, payload) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    finally:
        reactor.gate.set()
        ws.close()


def raw_client(reactor: Reactor) -> socket.socket:
    """A plain socket past the opening handshake (for frames websocket-client would not send, or would answer itself)."""
    raw = socket.create_connection(("127.0.0.1", reactor.port), timeout=10)
    raw.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101")
    return raw


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (masked with a zero key, which leaves the payload as it is)."""
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def test_the_clients_close_is_echoed_and_on_close_hears_its_code(reactor: Reactor) -> None:
    """A client's close 4001 "done here" is echoed with its code and reason, the server closes TCP, and on_close runs once with both."""
    raw = raw_client(reactor)
    raw.sendall(masked_frame(0x8, (4001).to_bytes(2, "big") + b"done here"))
    data = raw.makefile("rb").read()  # to the end: the server closed the TCP connection
    assert data == b"\x88\x0b" + (4001).to_bytes(2, "big") + b"done here"
    assert reactor.closes.get(timeout=10) == (4001, "done here")
    assert reactor.closes.empty()
    raw.close()


def test_a_protocol_error_closes_with_1002(reactor: Reactor) -> None:
    """An unmasked frame from a client (a broken rule) is answered with close 1002 and the socket closed; on_close hears 1002."""
    raw = raw_client(reactor)
    raw.sendall(b"\x81\x02hi")  # unmasked text frame
    data = raw.makefile("rb").read()
    assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == 1002
    assert reactor.closes.get(timeout=10)[0] == 1002
    raw.close()


def test_a_server_close_completes_the_handshake(reactor: Reactor) -> None:
    """stream.close(1001) sends a close frame; the client's answer ends it: on_close hears the code of the close received, the socket is closed."""
    raw = raw_client(reactor)
    stream = reactor.streams.get(timeout=10)
    stream.close(1001, "going away")
    assert raw.recv(4) == b"\x88\x0c" + (1001).to_bytes(2, "big")
    raw.sendall(masked_frame(0x8, (1001).to_bytes(2, "big")))
    assert reactor.closes.get(timeout=10) == (1001, "")
    assert stream.closed
    raw.close()


def test_a_thousand_connections_on_one_loop_thread() -> None:
    """1,000 clients connected at once are each echoed, served by one loop thread and workers only while handlers run."""
    reactor = Reactor()
    clients: list[socket.socket] = []
    try:
        for _ in range(1000):
            ws = websocket.create_connection(reactor.url, timeout=10)
            clients.append(ws)
        for i, ws in enumerate(clients):
            ws.send(f"m{i}")
        assert [ws.recv() for ws in clients] == [f"m{i}" for i in range(1000)]
        loop_threads = [t for t in threading.enumerate() if t.name == "test-io"]
        assert len(loop_threads) == 1
    finally:
        for ws in clients:
            ws.close()
        reactor.close()


def test_a_slow_handler_holds_its_clients_messages_back_in_tcp(reactor: Reactor) -> None:
    """With its handler blocked, a client's 1,000 messages fill the lane to its limit and no further; once it goes on, all arrive in order."""
    reactor.gate = threading.Event()
    slow = websocket.create_connection(reactor.url, timeout=10)
    try:
        for _ in range(1000):
            slow.send("x" * 1000)
        lane = reactor.streams.get(timeout=10).lane
        assert wait_for(lambda: lane.pending == lane.limit)  # the lane filled up...
        assert not wait_for(lambda: lane.pending > lane.limit, timeout=0.5)  # ...and stays at its limit: the rest waits in TCP
        reactor.gate.set()
        assert [slow.recv() for _ in range(1000)] == ["x" * 1000] * 1000
    finally:
        reactor.gate.set()
        slow.close()


def test_keepalive_aborts_a_peer_that_never_answers_pings() -> None:
    """A peer that sends nothing and answers no ping is dropped with 1006 after ping_interval + ping_timeout, as on the thread engine."""
    reactor = Reactor(ping_interval=0.2, ping_timeout=0.2)
    try:
        ws = websocket.create_connection(reactor.url, timeout=10)  # websocket-client answers pings only when it reads
        assert reactor.closes.get(timeout=10) == (1006, "keepalive ping timeout")
        ws.close()
    finally:
        reactor.close()


def test_a_tcp_stream_sends_without_nagles_delay(reactor: Reactor) -> None:
    """A stream on a TCP socket sets TCP_NODELAY: a small reply is not held back waiting for the client's delayed ACK."""
    ws = websocket.create_connection(reactor.url, timeout=10)
    try:
        stream = reactor.streams.get(timeout=10)
        assert stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        ws.close()


def test_the_thread_that_makes_a_stream_loads_numpy_so_the_loop_never_imports_it(reactor: Reactor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a stream exists, numpy (where installed) is loaded: the loop does not stop for its import in the middle of a large message."""
    if not frames.HAVE_NUMPY:
        pytest.skip("numpy is not installed, or SYNCWS_NO_NUMPY is set")
    monkeypatch.setattr(frames, "_np", None)  # as in a process that has not loaded it yet
    ws = websocket.create_connection(reactor.url, timeout=10)
    try:
        reactor.streams.get(timeout=10)
        assert frames._np is not None
    finally:
        ws.close()

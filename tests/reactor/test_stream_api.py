"""A Stream's connection API, the thread engine's (send_parts, send_nowait, pong, the preamble, on_closing, meter, close state), against real clients."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any, Callable, Optional, Union

import pytest
import websocket

from syncws.exceptions import ConnectionClosed
from syncws.observe.counters import EndpointCounters
from syncws.protocol import frames
from syncws.protocol.deflate import DeflateOptions, PerMessageDeflate, accept_offers
from syncws.protocol.handshake import accept_response, check_upgrade, parse_http_request
from syncws.protocol.protocol import Protocol
from syncws.reactor import stream_writing
from syncws.reactor.stream import Stream
from syncws.reactor.stream_writing import STALL

from ..helpers import RawClient, wait_for
from .test_stream import Reactor

pytestmark = pytest.mark.timeout(60)

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


class ApiReactor(Reactor):
    """test_stream's Reactor, with what the connection API needs: each stream gets the reactor's
    EndpointCounters as its meter and an on_closing that records into ``closings``, before it starts.

    Options: ``hold_preamble`` passes the 101 to the Stream as ``preamble=`` instead of sending it;
    ``compression`` accepts a client's permessage-deflate offer; ``sndbuf`` shrinks the server
    socket's send buffer (so that what a client does not read waits in the stream, not the kernel).
    """

    def __init__(
        self, *, hold_preamble: bool = False, compression: Optional[DeflateOptions] = None, sndbuf: Optional[int] = None, **stream_options: Any
    ) -> None:
        # Set before the accept thread starts (in Reactor.__init__), which reads them.
        self.hold_preamble, self.compression, self.sndbuf = hold_preamble, compression, sndbuf
        self.counters = EndpointCounters("/")
        self.closings: queue.Queue[tuple[int, str]] = queue.Queue()
        super().__init__(**stream_options)

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
            deflate, extensions = None, None
            offer = request.headers.get("Sec-WebSocket-Extensions")
            if self.compression is not None and offer:
                accepted = accept_offers(offer, self.compression)
                if accepted is not None:
                    extensions, agreement = accepted
                    deflate = PerMessageDeflate(agreement, False, self.compression)
            response = accept_response(request, extensions=extensions)
            if not self.hold_preamble:
                sock.sendall(response)
            holder: list[Stream] = []

            def on_message(message: Union[str, bytes], holder: list[Stream] = holder) -> None:
                if self.gate is not None:
                    self.gate.wait(30)
                self.handled.append(message)
                if self.echo:
                    try:
                        holder[0].send(message)
                    except ConnectionClosed:
                        pass

            stream = Stream(
                self.loop,
                sock,
                Protocol(is_client=False, deflate=deflate),
                self.pool,
                on_message,
                lambda code, reason: self.closes.put((code, reason)),
                initial_data=rest,
                preamble=response if self.hold_preamble else b"",
                **self.options,
            )
            if self.sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            stream.meter = self.counters
            stream.on_closing = lambda code, reason: self.closings.put((code, reason))
            holder.append(stream)
            stream.start()
            self.streams.put(stream)


@pytest.fixture
def make_reactor() -> Iterator[Callable[..., ApiReactor]]:
    """Make ApiReactors with options; each is closed after the test."""
    made: list[ApiReactor] = []

    def make(**options: Any) -> ApiReactor:
        made.append(ApiReactor(**options))
        return made[-1]

    yield make
    for reactor in made:
        reactor.close()


@pytest.fixture
def reactor(make_reactor: Callable[..., ApiReactor]) -> ApiReactor:
    """An ApiReactor with the default options that echoes nothing."""
    made = make_reactor()
    made.echo = False  # what the client receives is what the test sends
    return made


def connect(reactor: Reactor) -> tuple[websocket.WebSocket, Stream]:
    """A websocket-client connected to ``reactor``, and its server-side Stream."""
    ws = websocket.create_connection(reactor.url, timeout=10)
    return ws, reactor.streams.get(timeout=10)


def read_to_eof(raw: RawClient) -> bytes:
    """Everything ``raw`` receives until the server closes the TCP connection."""
    data, raw.buffer = raw.buffer, b""
    raw.sock.settimeout(10)
    while True:
        chunk = raw.sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def one_closing(reactor: ApiReactor) -> tuple[int, str]:
    """The only on_closing call, once on_close has run (the stream's last call)."""
    reactor.closes.get(timeout=10)
    closing = reactor.closings.get(timeout=1)
    assert reactor.closings.empty(), "on_closing was called more than once"
    return closing


# ---------------------------------------------------------------------- send_parts


def test_send_parts_arrive_as_one_binary_message(make_reactor: Callable[..., ApiReactor]) -> None:
    """send_parts of bytes, a large bytearray and a memoryview reaches the client as one binary message, the parts joined."""
    reactor = make_reactor(sndbuf=16 * 1024)  # the large part is written in pieces, partly from the loop
    ws, stream = connect(reactor)
    try:
        parts = (b"head:", bytearray(range(256)) * 1024, memoryview(b":tail"))
        stream.send_parts(*parts)
        assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"".join(parts))
    finally:
        ws.shutdown()


def test_send_parts_is_never_compressed(make_reactor: Callable[..., ApiReactor]) -> None:
    """With permessage-deflate agreed and binary compressed by default, send() compresses a binary message and send_parts does not."""
    reactor = make_reactor(compression=DeflateOptions(compress_binary=True, min_size=0))
    raw = RawClient(reactor.port, timeout=10)
    try:
        assert raw.handshake("/", "Sec-WebSocket-Extensions: permessage-deflate\r\n").startswith(b"HTTP/1.1 101")
        stream = reactor.streams.get(timeout=10)
        assert stream.extensions.startswith("permessage-deflate")
        data = b"abc" * 1000
        stream.send(data)
        stream.send_parts(data[:1000], data[1000:])
        first = raw._read(2)
        assert first[0] == 0x80 | 0x40 | frames.OP_BINARY  # FIN, RSV1 (compressed)
        compressed = raw._read(first[1] & 0x7F)
        assert zlib.decompressobj(-15).decompress(compressed + b"\x00\x00\xff\xff") == data
        second = raw._read(2)
        assert second[0] == 0x80 | frames.OP_BINARY  # FIN, no RSV1
        assert second[1] & 0x7F == 126 and int.from_bytes(raw._read(2), "big") == len(data)
        assert raw._read(len(data)) == data
    finally:
        raw.close()


# ---------------------------------------------------------------------- send_nowait


def test_send_nowait_to_a_reading_client_arrives_in_order(make_reactor: Callable[..., ApiReactor]) -> None:
    """10 MB of send_nowait through a 32 KiB send queue reach a client that reads, all and in order, and it is not closed."""
    reactor = make_reactor(max_send_queue=32 * 1024, sndbuf=16 * 1024)
    reactor.echo = False
    ws = websocket.create_connection(reactor.url, timeout=10, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024),))
    stream = reactor.streams.get(timeout=10)
    messages = [f"{i:06d}" + "x" * 16000 for i in range(600)]
    received: queue.Queue[Union[str, BaseException]] = queue.Queue()

    def read() -> None:
        try:
            for _ in messages:
                received.put(ws.recv())
        except BaseException as exc:  # reported to the test thread
            received.put(exc)

    threading.Thread(target=read, daemon=True).start()
    try:
        for message in messages:
            stream.send_nowait(message)
        assert [received.get(timeout=10) for _ in messages] == messages
        assert not stream.closed
        assert reactor.counters.snapshot()["closed_send_queue_full"] == 0
        assert wait_for(lambda: stream.send_queue_bytes == 0)
    finally:
        ws.shutdown()


def test_send_nowait_to_a_client_that_never_reads_closes_it_with_1008(make_reactor: Callable[..., ApiReactor]) -> None:
    """A client that reads nothing is closed with 1008 "send queue full" once send_nowait overflows; the sender is held about STALL, no more."""
    reactor = make_reactor(max_send_queue=256 * 1024, sndbuf=32 * 1024)
    reactor.echo = False
    raw = RawClient(reactor.port, timeout=10)
    raw.handshake("/")  # and never reads again
    stream = reactor.streams.get(timeout=10)
    held: list[float] = []  # how long each send_nowait that returned took
    outcome: queue.Queue[Optional[BaseException]] = queue.Queue()

    def broadcast() -> None:
        try:
            for _ in range(2000):  # 125 MiB: far more than the kernel's buffers and the queue hold
                started = time.monotonic()
                stream.send_nowait(b"\0" * 65536)
                held.append(time.monotonic() - started)
        except BaseException as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    threading.Thread(target=broadcast, daemon=True).start()
    try:
        stopped = outcome.get(timeout=30)
        assert isinstance(stopped, ConnectionClosed), stopped  # the send after the one given up
        assert (stopped.code, stopped.reason) == (1008, "send queue full")
        assert STALL <= max(held) < STALL + 4  # one call waited out STALL, then returned
        assert reactor.closes.get(timeout=10) == (1008, "send queue full")
        assert reactor.closings.get(timeout=1) == (1008, "send queue full")
        assert reactor.closings.empty()
        snapshot = reactor.counters.snapshot()
        assert snapshot["closed_send_queue_full"] == 1
        assert snapshot["messages_out"] == len(held) - 1  # the message that found the queue full is not sent, nor counted
        assert stream.closed and (stream.close_code, stream.close_reason) == (1008, "send queue full")
    finally:
        raw.close()


def test_concurrent_broadcasts_to_a_slow_reader_wait_while_it_reads(make_reactor: Callable[..., ApiReactor]) -> None:
    """Eight threads' send_nowait past max_send_queue to a client that reads slowly but steadily all arrive: none is given up for a stall."""
    reactor = make_reactor(max_send_queue=64 * 1024, sndbuf=16 * 1024)
    raw = RawClient(reactor.port, timeout=10)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    raw.handshake("/")
    stream = reactor.streams.get(timeout=10)
    senders, size = 8, 32 * 1024
    pace = threading.Event()  # never set: its wait paces the reader
    received = bytearray()

    def read_slowly() -> None:  # 8 KiB every 50 ms: far slower than the senders, never still for long
        while len(received) < senders * (size + 4):  # each frame: a 4-byte header, then the payload
            chunk = raw.sock.recv(8192)
            if not chunk:
                return
            received.extend(chunk)
            pace.wait(0.05)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    outcomes: queue.Queue[Optional[BaseException]] = queue.Queue()

    def broadcast(i: int) -> None:
        try:
            stream.send_nowait(bytes([i]) * size)
            outcomes.put(None)
        except BaseException as exc:
            outcomes.put(exc)

    try:
        for i in range(senders):
            threading.Thread(target=broadcast, args=(i,), daemon=True).start()
        assert [outcomes.get(timeout=30) for _ in range(senders)] == [None] * senders
        reader.join(30)
        assert len(received) == senders * (size + 4)
        assert not stream.closed and reactor.counters.snapshot()["closed_send_queue_full"] == 0
    finally:
        raw.close()


@pytest.mark.parametrize("method", ["send", "send_parts", "send_nowait"])
def test_a_send_waiting_for_room_raises_when_the_stream_is_aborted(
    make_reactor: Callable[..., ApiReactor], method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends to a peer that reads nothing end with ConnectionClosed (the abort's code) once aborted, the waiting one too; those that returned are counted."""
    monkeypatch.setattr(stream_writing, "STALL", 30.0)  # send_nowait waits until the abort, not STALL
    reactor = make_reactor(high_water=64 * 1024, max_send_queue=64 * 1024, sndbuf=16 * 1024)
    reactor.echo = False
    raw = RawClient(reactor.port, timeout=10)
    raw.handshake("/")  # and never reads again
    stream = reactor.streams.get(timeout=10)
    send = getattr(stream, method)
    returned = 0
    outcome: queue.Queue[Optional[BaseException]] = queue.Queue()

    def fill() -> None:
        nonlocal returned
        try:
            for _ in range(1000):  # ends with the abort: the call waiting across it raises, or the one after it
                send(b"\0" * 65536)
                returned += 1
        except BaseException as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    threading.Thread(target=fill, daemon=True).start()
    try:
        assert wait_for(lambda: stream.send_queue_bytes > 64 * 1024)  # the sender waits for room
        # No room comes for long (the client reads nothing), though the kernel may still take a little:
        # the call in progress waits until the abort, or returns just before it and the next one raises.
        stream.abort(4003, "kicked")
        stopped = outcome.get(timeout=10)
        assert isinstance(stopped, ConnectionClosed), f"{method} went on after the abort: {stopped}"
        assert stopped.code == 4003
        assert reactor.counters.snapshot()["messages_out"] == returned
    finally:
        raw.close()


# ---------------------------------------------------------------------- pong


def test_pong_reaches_the_client_as_a_pong_frame(reactor: ApiReactor) -> None:
    """stream.pong(payload) is received by the client as a pong frame with that payload."""
    ws, stream = connect(reactor)
    try:
        stream.pong(b"heartbeat")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert (opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"heartbeat")
    finally:
        ws.shutdown()


def test_a_pong_payload_over_125_bytes_is_refused(reactor: ApiReactor) -> None:
    """pong() with more than 125 bytes raises ValueError and sends nothing; the stream stays open."""
    ws, stream = connect(reactor)
    try:
        with pytest.raises(ValueError):
            stream.pong(b"x" * 126)
        stream.send("still open")
        assert ws.recv() == "still open"
    finally:
        ws.shutdown()


# ---------------------------------------------------------------------- preamble


def test_the_handshake_completes_only_after_flush_preamble(make_reactor: Callable[..., ApiReactor]) -> None:
    """With the 101 held as the stream's preamble, a websocket-client's handshake waits until flush_preamble()."""
    reactor = make_reactor(hold_preamble=True)
    connected: queue.Queue[Union[websocket.WebSocket, BaseException]] = queue.Queue()

    def open_client() -> None:
        try:
            connected.put(websocket.create_connection(reactor.url, timeout=10))
        except BaseException as exc:
            connected.put(exc)

    threading.Thread(target=open_client, daemon=True).start()
    stream = reactor.streams.get(timeout=10)
    with pytest.raises(queue.Empty):
        connected.get(timeout=0.5)  # the handshake is not complete: no 101 yet
    stream.flush_preamble()
    ws = connected.get(timeout=10)
    assert isinstance(ws, websocket.WebSocket), ws
    try:
        ws.send("hello")
        assert ws.recv() == "hello"  # echoed: the stream runs as usual past the preamble
    finally:
        ws.shutdown()


def test_the_first_send_carries_the_101_ahead_of_its_frame(make_reactor: Callable[..., ApiReactor]) -> None:
    """Without flush_preamble, nothing reaches the client until the first send, which writes the 101 and then its frame."""
    reactor = make_reactor(hold_preamble=True)
    raw = RawClient(reactor.port, timeout=10)
    try:
        raw.send_raw(UPGRADE)
        stream = reactor.streams.get(timeout=10)
        raw.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            raw.sock.recv(1)  # nothing yet, not even the 101
        raw.sock.settimeout(10)
        stream.send("first")
        assert raw.read_head().startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert raw.buffer + raw._read(7 - len(raw.buffer)) == b"\x81\x05first"  # right after the head's blank line
    finally:
        raw.close()


def test_flush_preamble_writes_the_101_once(make_reactor: Callable[..., ApiReactor]) -> None:
    """flush_preamble() twice, then a send: the client gets the 101 once, then the frame, nothing in between."""
    reactor = make_reactor(hold_preamble=True)
    raw = RawClient(reactor.port, timeout=10)
    try:
        raw.send_raw(UPGRADE)
        stream = reactor.streams.get(timeout=10)
        stream.flush_preamble()
        stream.flush_preamble()
        stream.send(b"\x01\x02")
        assert raw.read_head().startswith(b"HTTP/1.1 101 ")
        assert raw.recv_frame() == (True, frames.OP_BINARY, b"\x01\x02")
        stream.close()
        assert raw.recv_close() == (1000, "")
        raw.send_frame(frames.OP_CLOSE, (1000).to_bytes(2, "big"))
        assert b"HTTP" not in read_to_eof(raw)
    finally:
        raw.close()


# ---------------------------------------------------------------------- on_closing


def test_on_closing_hears_our_close_once(reactor: ApiReactor) -> None:
    """stream.close(1000, "bye"): on_closing is called once with (1000, "bye"), and the client sees that close frame."""
    ws, stream = connect(reactor)
    try:
        stream.close(1000, "bye")
        opcode, frame = ws.recv_data_frame(control_frame=True)  # websocket-client answers it
        assert (opcode, frame.data) == (websocket.ABNF.OPCODE_CLOSE, (1000).to_bytes(2, "big") + b"bye")
        assert one_closing(reactor) == (1000, "bye")
        assert stream.wait_closed(10)
    finally:
        ws.shutdown()


def test_on_closing_hears_the_peers_close_once(reactor: ApiReactor) -> None:
    """The client's close 4001: on_closing is called once with (4001, its reason)."""
    ws, stream = connect(reactor)
    ws.close(status=4001, reason=b"done here", timeout=10)  # waits for the server's answer
    assert one_closing(reactor) == (4001, "done here")
    assert stream.wait_closed(10)


def test_on_closing_hears_a_lost_socket_once(reactor: ApiReactor) -> None:
    """The client's socket closed without a close frame: on_closing is called once with 1006."""
    ws, stream = connect(reactor)
    ws.shutdown()
    assert one_closing(reactor)[0] == 1006
    assert stream.wait_closed(10)


def test_on_closing_hears_an_abort_once(reactor: ApiReactor) -> None:
    """stream.abort(): on_closing is called once with 1006, on_close hears 1006, and the client gets no close frame, only the end of TCP."""
    raw = RawClient(reactor.port, timeout=10)
    try:
        raw.handshake("/")
        stream = reactor.streams.get(timeout=10)
        stream.abort()
        assert reactor.closings.get(timeout=10) == (1006, "")
        assert read_to_eof(raw) == b""
        assert reactor.closes.get(timeout=10) == (1006, "")
        assert reactor.closings.empty()
    finally:
        raw.close()


def test_close_after_abort_sends_no_close_frame(reactor: ApiReactor) -> None:
    """close() called after abort() but before the loop closed the socket writes nothing: the peer sees only the end of TCP."""
    raw = RawClient(reactor.port, timeout=10)
    try:
        raw.handshake("/")
        stream = reactor.streams.get(timeout=10)
        busy, go_on = threading.Event(), threading.Event()
        reactor.loop.call_soon(lambda: (busy.set(), go_on.wait(10)))  # hold the loop: abort's closing of the socket waits
        assert busy.wait(10)
        stream.abort()
        stream.close(1000, "too late")
        go_on.set()
        assert read_to_eof(raw) == b""
        assert reactor.closes.get(timeout=10) == (1006, "")
    finally:
        go_on.set()
        raw.close()


def test_on_closing_hears_a_protocol_error_once(reactor: ApiReactor) -> None:
    """An unmasked frame from the client: on_closing is called once with 1002, the code of the close frame sent."""
    raw = RawClient(reactor.port, timeout=10)
    try:
        raw.handshake("/")
        raw.send_frame(frames.OP_TEXT, b"hi", mask=False)
        assert raw.recv_close()[0] == 1002
        raw.send_frame(frames.OP_CLOSE, (1002).to_bytes(2, "big"))
        assert one_closing(reactor)[0] == 1002
    finally:
        raw.close()


# ---------------------------------------------------------------------- meter


def test_meter_counts_messages_and_payload_bytes_exactly(reactor: ApiReactor) -> None:
    """The meter counts each message in and out once with its payload bytes (UTF-8 for text), every send kind, and no control frame."""
    ws, stream = connect(reactor)
    try:
        ws.send("héllo wörld ✓")
        ws.send_binary(b"\x00\x01\x02")
        ws.ping(b"not counted")
        assert wait_for(lambda: len(reactor.handled) == 2)
        stream.send("ünïcode ✓")
        stream.send(b"\xff" * 10)
        stream.send({"k": "é"})
        stream.send_parts(b"ab", bytearray(b"cde"), memoryview(b"fgh"))
        stream.send_nowait("nowait é")
        stream.send_encoded_nowait(frames.OP_BINARY, b"encoded")
        stream.pong(b"not counted either")
        sent = [ws.recv() for _ in range(6)]
        json_text = sent[2]
        assert json.loads(sent.pop(2)) == {"k": "é"}  # JSON text, however encode_message spells it
        assert sent == ["ünïcode ✓", b"\xff" * 10, b"abcdefgh", "nowait é", b"encoded"]
        snapshot = reactor.counters.snapshot()
        assert (snapshot["messages_in"], snapshot["bytes_in"]) == (2, len("héllo wörld ✓".encode()) + 3)
        sizes = [len(m.encode() if isinstance(m, str) else m) for m in [*sent, json_text]]
        assert (snapshot["messages_out"], snapshot["bytes_out"]) == (6, sum(sizes))
    finally:
        ws.shutdown()


# ---------------------------------------------------------------------- close state


def test_close_code_and_reason_are_the_peers_close(reactor: ApiReactor) -> None:
    """close_code and close_reason are None and "" while open, the client's 4001 and reason once it closed."""
    ws, stream = connect(reactor)
    assert (stream.close_code, stream.close_reason, stream.closed) == (None, "", False)
    ws.close(status=4001, reason=b"done here", timeout=10)
    assert stream.wait_closed(10)
    assert (stream.close_code, stream.close_reason, stream.closed) == (4001, "done here", True)
    assert reactor.closes.get(timeout=10) == (4001, "done here")


def test_close_code_after_our_close_is_the_answer_received(reactor: ApiReactor) -> None:
    """After stream.close(4002, "bye") answered with 4002 "ok", close_code and close_reason are the answer's."""
    raw = RawClient(reactor.port, timeout=10)
    try:
        raw.handshake("/")
        stream = reactor.streams.get(timeout=10)
        stream.close(4002, "bye")
        assert raw.recv_close() == (4002, "bye")
        raw.send_frame(frames.OP_CLOSE, (4002).to_bytes(2, "big") + b"ok")
        assert stream.wait_closed(10)
        assert (stream.close_code, stream.close_reason) == (4002, "ok")
        assert read_to_eof(raw) == b""  # the server closed TCP
    finally:
        raw.close()


def test_close_code_is_the_abort_code_at_once(reactor: ApiReactor) -> None:
    """After abort(4003, "kicked") returns, close_code and close_reason say so, sends fail with them, and on_close hears them."""
    ws, stream = connect(reactor)
    try:
        stream.abort(4003, "kicked")
        assert (stream.close_code, stream.close_reason) == (4003, "kicked")
        with pytest.raises(ConnectionClosed) as raised:
            stream.send("too late")
        assert (raised.value.code, raised.value.reason) == (4003, "kicked")
        assert reactor.closes.get(timeout=10) == (4003, "kicked")
        assert stream.wait_closed(10)
    finally:
        ws.shutdown()


def test_wait_closed_is_false_while_open_and_true_after_close(reactor: ApiReactor) -> None:
    """wait_closed(timeout) returns False after the timeout while the stream is open, True once it closed."""
    ws, stream = connect(reactor)
    try:
        assert stream.wait_closed(0.2) is False
        stream.close()
        assert ws.recv_data_frame(control_frame=True)[0] == websocket.ABNF.OPCODE_CLOSE  # and answered
        assert stream.wait_closed(10) is True
        assert stream.closed
    finally:
        ws.shutdown()


def test_every_send_raises_connection_closed_once_our_close_went_out(reactor: ApiReactor) -> None:
    """After close(), before the peer answers, send, send_parts, send_nowait, send_encoded_nowait, ping and pong raise ConnectionClosed."""
    raw = RawClient(reactor.port, timeout=10)
    try:
        raw.handshake("/")
        stream = reactor.streams.get(timeout=10)
        stream.close(1000)
        for send in (
            lambda: stream.send("x"),
            lambda: stream.send_parts(b"x"),
            lambda: stream.send_nowait("x"),
            lambda: stream.send_encoded_nowait(frames.OP_TEXT, b"x"),
            lambda: stream.ping(b"x"),
            lambda: stream.pong(b"x"),
        ):
            with pytest.raises(ConnectionClosed):
                send()
        assert not stream.closed  # still waiting for the answer
        assert raw.recv_close() == (1000, "")
        raw.send_frame(frames.OP_CLOSE, (1000).to_bytes(2, "big"))
        assert read_to_eof(raw) == b""  # nothing was written after our close frame
        assert stream.wait_closed(10)
    finally:
        raw.close()


def test_send_after_the_stream_closed_raises_connection_closed(reactor: ApiReactor) -> None:
    """Once the closing handshake is over and the socket closed, send raises ConnectionClosed with the close code."""
    ws, stream = connect(reactor)
    ws.close(status=4001, reason=b"done here", timeout=10)
    assert stream.wait_closed(10)
    with pytest.raises(ConnectionClosed) as raised:
        stream.send("too late")
    assert raised.value.code == 4001
    with pytest.raises(ConnectionClosed):
        stream.send_nowait("too late")


# ---------------------------------------------------------------------- the rest of the API


def test_the_stream_shows_its_settings_placer_and_queue(make_reactor: Callable[..., ApiReactor]) -> None:
    """name and max_send_queue are the stream's options, extensions "" without any agreed, placer is the protocol reader's, release() is harmless."""
    reactor = make_reactor(name="api-test", max_send_queue=12345)
    ws, stream = connect(reactor)
    try:
        assert (stream.name, stream.max_send_queue, stream.extensions, stream.send_queue_bytes) == ("api-test", 12345, "", 0)
        assert stream.placer is None

        def placer(prefix: bytes, length: int) -> Optional[memoryview]:
            return None

        stream.placer = placer
        assert stream.placer is placer and stream.protocol.reader.placer is placer
        stream.release()
        ws.send("still served")
        assert wait_for(lambda: reactor.handled == ["still served"])
    finally:
        ws.shutdown()


def test_small_sends_from_many_threads_all_arrive_each_threads_in_order(make_reactor: Callable[..., ApiReactor]) -> None:
    """16 threads sending 500 small messages each on one stream at once (frames left to the thread writing): all 8,000 arrive, each thread's in order."""
    reactor = make_reactor()
    reactor.echo = False
    ws = websocket.create_connection(reactor.url, timeout=10)
    stream = reactor.streams.get(timeout=10)
    go = threading.Barrier(16)
    failures: queue.Queue[BaseException] = queue.Queue()

    def send(thread: int) -> None:
        try:
            go.wait(10)
            for n in range(500):
                stream.send(f"{thread}:{n}")
        except BaseException as exc:  # reported to the test thread
            failures.put(exc)

    senders = [threading.Thread(target=send, args=(t,)) for t in range(16)]
    try:
        for sender in senders:
            sender.start()
        seen: dict[int, list[int]] = {t: [] for t in range(16)}
        for _ in range(16 * 500):
            thread, n = ws.recv().split(":")
            seen[int(thread)].append(int(n))
        for sender in senders:
            sender.join(10)
        assert failures.empty(), failures.get()
        assert all(numbers == list(range(500)) for numbers in seen.values())
        assert stream.send_queue_bytes == 0 and not stream._left
    finally:
        ws.shutdown()

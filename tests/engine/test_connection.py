"""One Connection over a socket pair: large payloads read in short, unaligned pieces."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from syncws import frames
from syncws.engine.connection import Connection
from syncws.protocol.payload import PLACE_PREFIX, PlacedPayload

pytestmark = pytest.mark.timeout(60)

SHORT_READ = 4093  # odd and prime: no read ends on a mask-key boundary for long


class ShortReads(socket.socket):
    """A real socket whose reads return at most SHORT_READ bytes, as a slow network would."""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        return super().recv_into(view[: min(len(view), nbytes or len(view), SHORT_READ)], 0, flags)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return super().recv(min(bufsize, SHORT_READ), flags)


@pytest.fixture(params=["numpy", "pure Python"])
def masking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with the numpy accelerator (where installed) and without it."""
    if request.param == "numpy":
        if not frames.HAVE_NUMPY:
            pytest.skip("numpy is not installed")
    else:
        monkeypatch.setattr(frames, "HAVE_NUMPY", False)
    yield request.param


def _receive_through_short_reads(frame: bytes, is_client: bool, placer: Any = None) -> Any:
    """Write ``frame`` into one end of a socket pair; return what a Connection on the other end (with ``placer``) reads."""
    near, far = socket.socketpair()
    reader = ShortReads(fileno=far.detach())
    writer = threading.Thread(target=near.sendall, args=(frame,), daemon=True)
    conn = Connection(reader, is_client=is_client, max_message_size=None, ping_interval=None)
    conn.placer = placer
    try:
        writer.start()
        return conn.recv()
    finally:
        writer.join(10)
        near.close()
        reader.close()


@pytest.mark.parametrize("size", [65536, (1 << 20) + 3])
def test_large_masked_payload_read_in_short_pieces(masking: str, size: int) -> None:
    """A server reading a large masked binary frame in odd-sized pieces returns bytes equal to the payload."""
    payload = os.urandom(size)
    message = _receive_through_short_reads(frames.encode_frame(frames.OP_BINARY, payload, mask_key=os.urandom(4)), is_client=False)
    assert type(message) is bytes and message == payload


def test_large_unmasked_payload_read_in_short_pieces(masking: str) -> None:
    """A client reading a large unmasked binary frame in odd-sized pieces returns bytes equal to the payload."""
    payload = os.urandom((1 << 20) + 1)
    message = _receive_through_short_reads(frames.encode_frame(frames.OP_BINARY, payload), is_client=True)
    assert type(message) is bytes and message == payload


def test_large_fragments_are_joined_in_order(masking: str) -> None:
    """A binary message in three large masked fragments of odd sizes arrives whole and in order."""
    parts = [os.urandom(n) for n in (70_001, 65_539, 200_003)]
    opcodes = [frames.OP_BINARY, frames.OP_CONTINUATION, frames.OP_CONTINUATION]
    stream = b"".join(
        frames.encode_frame(op, part, fin=i == len(parts) - 1, mask_key=os.urandom(4)) for i, (op, part) in enumerate(zip(opcodes, parts))
    )
    message = _receive_through_short_reads(stream, is_client=False)
    assert type(message) is bytes and message == b"".join(parts)


def test_claimed_length_no_memory_can_hold_closes_with_1009(caplog: pytest.LogCaptureFixture) -> None:
    """With no size limit, a frame claiming 2**62 bytes closes the connection with 1009 instead of raising MemoryError."""
    near, far = socket.socketpair()
    conn = Connection(far, is_client=False, max_message_size=None, ping_interval=None, close_timeout=1.0)
    try:
        near.sendall(frames.encode_header(frames.OP_BINARY, 1 << 62, mask_key=os.urandom(4)))
        assert conn.recv() is None
        assert conn.close_code == 1009
        close_frame = near.recv(64)
        assert close_frame[0] == 0x80 | frames.OP_CLOSE and int.from_bytes(close_frame[2:4], "big") == 1009
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        near.close()
        far.close()


class Pair:
    """A Connection on one end of a socket pair; the test writes raw frames into the other end."""

    def __init__(self, is_client: bool, **options: Any) -> None:
        self.near, far = socket.socketpair()
        options.setdefault("ping_interval", None)
        self.conn = Connection(far, is_client=is_client, **options)
        self.masked = not is_client  # a client's peer (a server) does not mask

    def frame(self, opcode: int, payload: bytes, fin: bool = True) -> bytes:
        return frames.encode_frame(opcode, payload, fin=fin, mask_key=os.urandom(4) if self.masked else None)

    def write(self, data: bytes) -> None:
        self.near.sendall(data)

    def close(self) -> None:
        self.near.close()
        self.conn.release()


@pytest.fixture
def client_pair() -> Iterator[Pair]:
    """A client-side Connection whose peer is the test, writing unmasked frames."""
    pair = Pair(is_client=True)
    yield pair
    pair.close()


def test_recv_timeout_holds_while_pings_keep_arriving(client_pair: Pair) -> None:
    """recv(timeout) raises TimeoutError at its timeout even though a ping arrives every few milliseconds."""
    stop = threading.Event()

    def ping_flood() -> None:
        for _ in range(2000):  # at most 10 s
            if stop.wait(0.005):
                return
            try:
                client_pair.write(frames.encode_frame(frames.OP_PING, b"p"))
            except OSError:
                return

    flood = threading.Thread(target=ping_flood, daemon=True)
    flood.start()
    try:
        with pytest.raises(TimeoutError):
            client_pair.conn.recv(timeout=0.3)
    finally:
        stop.set()
        flood.join(5)
    client_pair.write(frames.encode_frame(frames.OP_TEXT, b"after the pings"))
    assert client_pair.conn.recv(timeout=5) == "after the pings"


def test_recv_timeout_keeps_a_message_in_parts_for_the_next_call(client_pair: Pair) -> None:
    """A timeout between fragments, and inside a header, loses nothing: the next recv returns the whole message."""
    first = client_pair.frame(frames.OP_TEXT, "héllo ".encode()[:2], fin=False)  # "h" and half of "é"
    rest = client_pair.frame(frames.OP_CONTINUATION, "héllo ".encode()[2:] + b"world")
    client_pair.write(first + rest[:1])  # the second frame's header, cut after its first byte
    with pytest.raises(TimeoutError):
        client_pair.conn.recv(timeout=0.2)
    client_pair.write(rest[1:])
    assert client_pair.conn.recv(timeout=5) == "héllo world"


def test_recv_timeout_resumes_a_large_payload(client_pair: Pair) -> None:
    """A timeout in the middle of a large frame's payload keeps what was read; the next recv completes it."""
    payload = os.urandom(300_007)
    frame = client_pair.frame(frames.OP_BINARY, payload)
    client_pair.write(frame[:100_000])
    with pytest.raises(TimeoutError):
        client_pair.conn.recv(timeout=0.2)
    writer = threading.Thread(target=client_pair.write, args=(frame[100_000:],), daemon=True)
    writer.start()
    assert client_pair.conn.recv(timeout=10) == payload
    writer.join(5)


@pytest.mark.parametrize("timeout", [float("nan"), -1.0])
def test_recv_refuses_a_bad_timeout(client_pair: Pair, timeout: float) -> None:
    """recv with a NaN or negative timeout raises ValueError and reads nothing."""
    client_pair.write(client_pair.frame(frames.OP_TEXT, b"still here"))
    with pytest.raises(ValueError):
        client_pair.conn.recv(timeout=timeout)
    assert client_pair.conn.recv(timeout=float("inf")) == "still here"


def test_many_empty_fragments_hold_no_memory() -> None:
    """100,000 empty continuation frames in one message cost no memory per fragment, and a ping among them is answered."""
    import tracemalloc

    count = 100_000
    pair = Pair(is_client=False, max_message_size=1 << 20)
    mask = os.urandom(4)
    empty = frames.encode_frame(frames.OP_CONTINUATION, b"", fin=False, mask_key=mask)
    stream = b"".join(
        [
            frames.encode_frame(frames.OP_BINARY, b"a", fin=False, mask_key=mask),
            empty * (count // 2),
            frames.encode_frame(frames.OP_PING, b"sync", mask_key=mask),
            empty * (count // 2),
            frames.encode_frame(frames.OP_CONTINUATION, b"z", mask_key=mask),
        ]
    )
    writer = threading.Thread(target=pair.write, args=(stream,), daemon=True)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        writer.start()
        message = pair.conn.recv(timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.join(10)
    try:
        assert message == b"az"
        assert pair.near.recv(64) == frames.encode_frame(frames.OP_PONG, b"sync")
        # A list of fragments cost about 88 bytes each (8.8 MB here); one buffer costs a constant.
        assert peak - before < 1 << 20
    finally:
        pair.close()


def test_many_tiny_text_fragments_are_checked_and_joined() -> None:
    """A text message of 5,000 one-byte fragments, a character split across two of them, arrives whole."""
    pair = Pair(is_client=False)
    data = ("x" * 2000 + "é" + "y" * 2998).encode()
    frames_out = [pair.frame(frames.OP_TEXT if i == 0 else frames.OP_CONTINUATION, data[i : i + 1], fin=i == len(data) - 1) for i in range(len(data))]
    writer = threading.Thread(target=pair.write, args=(b"".join(frames_out),), daemon=True)
    writer.start()
    try:
        assert pair.conn.recv(timeout=30) == data.decode()
    finally:
        writer.join(10)
        pair.close()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"a": 1}, (frames.OP_TEXT, b'{"a": 1}')),
        ([1, "x"], (frames.OP_TEXT, b'[1, "x"]')),
        ("text", (frames.OP_TEXT, b"text")),
        (b"bytes", (frames.OP_BINARY, b"bytes")),
        (bytearray(b"ba"), (frames.OP_BINARY, b"ba")),
        (memoryview(b"mv"), (frames.OP_BINARY, b"mv")),
    ],
)
def test_send_takes_text_bytes_and_json(message: Any, expected: tuple[int, bytes]) -> None:
    """send takes str as text, bytes-like as binary, and a dict or list as JSON text."""
    pair = Pair(is_client=False)
    try:
        pair.conn.send(message)
        data = pair.near.recv(64)
        assert (data[0] & 0x0F, data[2:]) == expected
    finally:
        pair.close()


@pytest.mark.parametrize("message", [{1, 2}, 42, None, 3.5, (1, 2)])
def test_send_refuses_what_it_cannot_send(message: Any) -> None:
    """send raises a TypeError naming what it takes, and sends nothing, for a set, a number, None or a tuple."""
    pair = Pair(is_client=True)
    try:
        with pytest.raises(TypeError, match=r"str .* bytes-like .* dict or list"):
            pair.conn.send(message)
        pair.conn.send("next")
        assert pair.near.recv(64)[0] == 0x80 | frames.OP_TEXT
    finally:
        pair.close()


def test_many_threads_sending_at_once_lose_nothing_and_keep_each_threads_order() -> None:
    """Eight threads sending on one connection, small messages and 20 KiB ones mixed: every message arrives, each thread's in order."""
    near, far = socket.socketpair()
    sender = Connection(far, is_client=False, ping_interval=None)
    receiver = Connection(near, is_client=True, ping_interval=None)
    threads, per_thread, big = 8, 300, 20 * 1024

    def send_all(t: int) -> None:
        for i in range(per_thread):
            if i % 7 == 3:  # over the size a sender may leave to the lock's holder: it waits for the lock
                sender.send(f"{t}:{i}:".encode() + bytes(big))
            else:
                sender.send(f"{t}:{i}")

    workers = [threading.Thread(target=send_all, args=(t,), daemon=True) for t in range(threads)]
    try:
        for worker in workers:
            worker.start()
        seen: dict[int, list[int]] = {t: [] for t in range(threads)}
        for _ in range(threads * per_thread):
            message = receiver.recv(timeout=30)
            text = message.decode("latin-1") if isinstance(message, bytes) else message
            t, i = map(int, text.split(":")[:2])
            seen[t].append(i)
        for worker in workers:
            worker.join(10)
        assert all(order == list(range(per_thread)) for order in seen.values()), {t: order[:10] for t, order in seen.items()}
    finally:
        receiver.release()
        sender.release()
        near.close()


def test_placed_payload_lands_unmasked_in_the_placers_view_through_short_reads(masking: str) -> None:
    """A large masked binary payload that a placer takes arrives in its view, unmasked, even in odd-sized reads; the message is its prefix."""
    payload = os.urandom(PLACE_PREFIX) + os.urandom(300_001)
    target = bytearray(len(payload) - PLACE_PREFIX)
    offered: list[bytes] = []

    def placer(prefix: bytes, length: int) -> memoryview:
        offered.append(prefix)
        return memoryview(target)

    message = _receive_through_short_reads(frames.encode_frame(frames.OP_BINARY, payload, fin=True, mask_key=os.urandom(4)), False, placer)
    assert isinstance(message, PlacedPayload) and message.length == len(payload)
    assert offered == [payload[:PLACE_PREFIX]] and bytes(message) == payload[:PLACE_PREFIX]
    assert target == payload[PLACE_PREFIX:]


def test_payload_a_placer_declines_arrives_as_bytes() -> None:
    """A large binary payload whose placer returns None (or a view of the wrong size) arrives as plain bytes."""
    payload = os.urandom(200_000)
    for answer in (None, memoryview(bytearray(10))):
        frame = frames.encode_frame(frames.OP_BINARY, payload, fin=True, mask_key=os.urandom(4))
        message = _receive_through_short_reads(frame, False, lambda prefix, length, answer=answer: answer)
        assert type(message) is bytes and message == payload

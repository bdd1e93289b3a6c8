"""The send buffer of a stream: bytes in order, large immutable pieces shared instead of copied, mutable ones copied."""

from __future__ import annotations

import os

import pytest

from syncws.reactor.send_buffer import SHARE_FROM, SendBuffer

pytestmark = pytest.mark.timeout(30)


class Socket:
    """Takes at most ``room`` bytes per send, and keeps them."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.got = bytearray()
        self.seen: list[object] = []

    def send(self, data: object) -> int:
        view = memoryview(data)  # type: ignore[arg-type]
        self.seen.append(view.obj)
        taken = view[: self.room]
        self.got += taken
        return len(taken)


def drain(buffer: SendBuffer, sock: Socket) -> bytes:
    for _ in range(10_000):  # bounded: each round takes up to sock.room bytes
        if not buffer:
            break
        assert buffer.send_with(sock.send) > 0
    return bytes(sock.got)


def test_pieces_go_out_in_order_whatever_the_socket_takes_at_a_time() -> None:
    """Small and large pieces, bytes and bytearrays, come out end to end in the order they went in, through partial sends."""
    pieces = [b"a" * 10, os.urandom(SHARE_FROM * 3 + 7), bytearray(b"b" * 100), b"c", os.urandom(SHARE_FROM)]
    buffer = SendBuffer()
    for piece in pieces:
        buffer.append(piece)
    assert len(buffer) == sum(map(len, pieces))
    assert drain(buffer, Socket(room=50_001)) == b"".join(pieces)
    assert len(buffer) == 0 and not buffer


def test_a_large_bytes_piece_waits_as_a_view_of_the_senders_object() -> None:
    """A large bytes payload is not copied: what the socket is given is a view of that very object."""
    payload = os.urandom(SHARE_FROM * 4)
    buffer = SendBuffer()
    buffer.append(memoryview(payload)[1000:])  # the rest of a frame the socket took in part
    sock = Socket(room=SHARE_FROM)
    buffer.send_with(sock.send)
    assert sock.seen[0] is payload


def test_a_mutable_piece_is_copied_so_later_changes_do_not_reach_the_wire() -> None:
    """A bytearray changed after it was buffered goes out as it was when it was buffered."""
    payload = bytearray(SHARE_FROM * 2)
    buffer = SendBuffer()
    buffer.append(payload)
    payload[:] = b"x" * len(payload)
    assert drain(buffer, Socket(room=SHARE_FROM)) == bytes(SHARE_FROM * 2)


def test_a_view_with_items_of_several_bytes_counts_and_sends_its_bytes() -> None:
    """A memoryview of 4-byte items is buffered as its bytes: its size is its nbytes, not its item count."""
    data = os.urandom(SHARE_FROM * 2)
    buffer = SendBuffer()
    buffer.append(memoryview(data).cast("I"))
    buffer.append(memoryview(bytearray(b"abcd")).cast("I"))
    assert len(buffer) == len(data) + 4
    assert drain(buffer, Socket(room=SHARE_FROM)) == data + b"abcd"


def test_small_pieces_run_together_into_one_send() -> None:
    """Many small frames go to the socket in one send call, as one stretch."""
    buffer = SendBuffer()
    for i in range(100):
        buffer.append(bytes([i]) * 10)
    sock = Socket(room=1 << 20)
    assert buffer.send_with(sock.send) == 1000
    assert len(sock.seen) == 1


def test_send_with_stops_at_a_partial_send_and_clear_forgets_everything() -> None:
    """A send that takes part of a piece ends the round (the socket is full); clear() leaves nothing to send."""
    buffer = SendBuffer()
    buffer.append(os.urandom(SHARE_FROM * 2))
    buffer.append(b"tail")
    assert buffer.send_with(Socket(room=100).send) == 100
    assert len(buffer) == SHARE_FROM * 2 + 4 - 100
    buffer.clear()
    assert len(buffer) == 0 and buffer.send_with(Socket(room=100).send) == 0

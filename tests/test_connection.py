"""One Connection over a socket pair: large payloads read in short, unaligned pieces."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from syncws import frames
from syncws.connection import Connection

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


def _receive_through_short_reads(frame: bytes, is_client: bool) -> Any:
    """Write ``frame`` into one end of a socket pair; return what a Connection on the other end reads."""
    near, far = socket.socketpair()
    reader = ShortReads(fileno=far.detach())
    writer = threading.Thread(target=near.sendall, args=(frame,), daemon=True)
    conn = Connection(reader, is_client=is_client, max_message_size=None, ping_interval=None)
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

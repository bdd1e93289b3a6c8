"""The Transport over a socket pair, without the protocol: waits, deadlines, write timeouts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from syncws.engine.transport import LEFT_FRAME_LIMIT, Abort, ReadTimeout, Transport
from syncws.exceptions import SendTimeout

pytestmark = pytest.mark.timeout(30)


class Ends:
    """A Transport on one end of a socket pair; the test is the peer on the other end."""

    def __init__(self, tick: float = 0.05, send_timeout: float = 0.3) -> None:
        self.near, far = socket.socketpair()
        self.lock = threading.Lock()
        self.idle_calls = 0
        self.broken = threading.Event()
        self.io = Transport(far, tick=tick, send_timeout=send_timeout, write_lock=self.lock, on_idle=self._idle, on_broken=self.broken.set)

    def _idle(self) -> None:
        self.idle_calls += 1

    def close(self) -> None:
        self.near.close()
        self.io.close()


@pytest.fixture
def ends() -> Iterator[Ends]:
    pair = Ends()
    yield pair
    pair.close()


def test_read_waits_with_the_idle_hook_each_tick(ends: Ends) -> None:
    """A read with nothing to read calls the idle hook every tick, then returns what arrives."""
    threading.Timer(0.3, ends.near.sendall, (b"late",)).start()
    assert ends.io.recv_some() == b"late"
    assert ends.idle_calls >= 2


def test_deadline_raises_before_anything_is_read(ends: Ends) -> None:
    """Once the deadline passes, a read raises ReadTimeout and leaves the bytes that come later in the socket."""
    ends.io.deadline = time.monotonic() + 0.1
    with pytest.raises(ReadTimeout):
        ends.io.recv_some()
    ends.io.deadline = None
    ends.near.sendall(b"kept")
    assert ends.io.recv_some() == b"kept"


def test_read_after_a_deadline_waits_whole_ticks_again() -> None:
    """A read with a short deadline lowers the wait for data; the next read without one waits a whole tick at a time again."""
    pair = Ends(tick=0.2)
    try:
        pair.io.deadline = time.monotonic() + 0.01
        with pytest.raises(ReadTimeout):
            pair.io.recv_some()
        pair.io.deadline = None
        pair.idle_calls = 0
        started = time.monotonic()
        threading.Timer(0.5, pair.near.sendall, (b"late",)).start()
        assert pair.io.recv_some() == b"late"
        # Whole ticks: about elapsed / 0.2 idle calls; still waiting 10 ms at a time would make some 50.
        assert pair.idle_calls <= (time.monotonic() - started) / 0.2 + 2, pair.idle_calls
    finally:
        pair.close()


def test_end_of_stream_aborts_the_read(ends: Ends) -> None:
    """A read at the end of the stream raises Abort."""
    ends.near.shutdown(socket.SHUT_WR)
    with pytest.raises(Abort):
        ends.io.recv_some()


def test_write_to_a_peer_that_reads_nothing_times_out(ends: Ends) -> None:
    """A write that makes no progress for send_timeout reports the stream broken, then raises SendTimeout."""
    with ends.lock, pytest.raises(SendTimeout):
        ends.io.write(bytes(64 << 20))
    assert ends.broken.is_set()


def test_preamble_goes_out_ahead_of_the_first_write() -> None:
    """The preamble is written once, ahead of the first write."""
    near, far = socket.socketpair()
    lock = threading.Lock()
    io = Transport(far, tick=0.05, send_timeout=1.0, write_lock=lock, on_idle=lambda: None, on_broken=lambda: None, preamble=b"HTTP ")
    try:
        with lock:
            io.write(b"one")
            io.write(b"two")
        assert near.recv(64) == b"HTTP onetwo"
    finally:
        near.close()
        io.close()


def test_frames_left_go_out_ahead_of_the_next_frame_but_never_inside_one(ends: Ends) -> None:
    """Frames left while the lock is held are written before the next write that starts a frame, not before a continuing one."""
    with ends.lock:
        assert ends.io.leave(b"A") and ends.io.leave(b"B")
        ends.io.write(b"C")
        assert ends.near.recv(16) == b"ABC"
        assert ends.io.leave(b"E")
        ends.io.write(b"D", continuing=True)
        assert ends.near.recv(16) == b"D"
        ends.io.write(b"")
        assert ends.near.recv(16) == b"E"


def test_only_small_frames_and_a_few_may_be_left(ends: Ends) -> None:
    """leave refuses a frame over 16 KiB, and any once 32 wait, so that what waits stays bounded."""
    assert not ends.io.leave(bytes(LEFT_FRAME_LIMIT + 1))
    assert all(ends.io.leave(b"x") for _ in range(32))
    assert not ends.io.leave(b"x")
    with ends.lock:
        assert ends.io.drop_left() == 32

"""Heaps trimmed after a large message, and never after small ones: the trimmer and a Connection's debts, over a socket pair."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from syncws import frames
from syncws.engine import memory
from syncws.engine.connection import Connection
from syncws.engine.memory import Trimmer

pytestmark = pytest.mark.timeout(30)

LARGE = 100_000  # a "large" message in these tests (TRIM_AFTER is set to it)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """Stands in for malloc_trim: counts the calls and the padding asked for."""

    def __init__(self) -> None:
        self.pads: list[int] = []

    def __call__(self, pad: int) -> int:
        self.pads.append(pad)
        return 1


def test_trimmer_runs_at_most_once_per_interval() -> None:
    """A trim asked for within the interval after another does not run and says the debt stands; after it, it runs."""
    calls, clock = Calls(), Clock()
    trimmer = Trimmer(calls, interval=1.0, clock=clock)
    assert trimmer.trim() is True
    clock.now += 0.5
    assert trimmer.trim() is False
    clock.now += 0.5
    assert trimmer.trim() is True
    assert calls.pads == [0, 0] and trimmer.runs == 2


def test_trimmer_without_malloc_trim_or_disabled_settles_every_debt() -> None:
    """Where there is no malloc_trim, or trimming is turned off, every debt is settled at once and nothing runs."""
    assert Trimmer(None).trim() is True and not Trimmer(None).available
    calls = Calls()
    off = Trimmer(calls)
    off.enabled = False
    assert off.trim() is True and not off.available and calls.pads == []


def test_process_trimmer_is_there_on_glibc_only() -> None:
    """The process's trimmer has malloc_trim on Linux with glibc, and nothing elsewhere; trimming for real does not fail."""
    import platform
    import sys

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert (memory._malloc_trim() is not None) == glibc
    assert Trimmer(memory._malloc_trim(), interval=0.0).trim() is True


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """The process's trimmer replaced by one that counts its calls, with no interval, and TRIM_AFTER set to LARGE."""
    calls = Calls()
    monkeypatch.setattr(memory, "trimmer", Trimmer(calls, interval=0.0))
    monkeypatch.setattr(memory, "TRIM_AFTER", LARGE)
    yield calls


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, Connection]]:
    """A client Connection on one end of a socket pair; the test writes unmasked frames into the other."""
    near, far = socket.socketpair()
    conn = Connection(far, is_client=True, ping_interval=None)
    yield near, conn
    near.close()
    conn.release()


def test_small_messages_never_trim(counted: Calls, pair: tuple[socket.socket, Connection]) -> None:
    """Thousands of small messages, some just under the threshold, and fragmented ones, never make a connection trim."""
    near, conn = pair
    for i in range(2000):
        near.sendall(frames.encode_frame(frames.OP_TEXT, b"x" * (i % 300)))
        assert conn.recv(timeout=5) == "x" * (i % 300)
    near.sendall(frames.encode_frame(frames.OP_BINARY, bytes(LARGE - 1)))
    assert conn.recv(timeout=5) == bytes(LARGE - 1)
    near.sendall(frames.encode_frame(frames.OP_TEXT, b"a", fin=False) + frames.encode_frame(frames.OP_CONTINUATION, b"b"))
    assert conn.recv(timeout=5) == "ab"
    near.sendall(frames.encode_frame(frames.OP_TEXT, b"y"))
    assert conn.recv(timeout=5) == "y"
    assert counted.pads == []


@pytest.mark.parametrize("opcode", [frames.OP_BINARY, frames.OP_TEXT])
def test_a_large_message_makes_two_trims_once_handled(counted: Calls, pair: tuple[socket.socket, Connection], opcode: int) -> None:
    """After a large message: one trim when the next is awaited (it has been handled), one more a wait later, then none."""
    near, conn = pair
    near.sendall(frames.encode_frame(opcode, b"z" * LARGE))
    assert len(conn.recv(timeout=5) or "") == LARGE
    assert counted.pads == []  # handed out, not handled yet
    near.sendall(frames.encode_frame(frames.OP_TEXT, b"next"))
    assert conn.recv(timeout=5) == "next"
    assert counted.pads == [0]
    for _ in range(3):
        near.sendall(frames.encode_frame(frames.OP_TEXT, b"more"))
        assert conn.recv(timeout=5) == "more"
    assert counted.pads == [0, 0]


def test_iterating_lets_go_of_each_message_before_the_next(pair: tuple[socket.socket, Connection], monkeypatch: pytest.MonkeyPatch) -> None:
    """While iterating a connection waits for the next message, it holds no reference to the last one."""
    near, conn = pair
    messages = iter(conn)
    near.sendall(frames.encode_frame(frames.OP_BINARY, b"first"))
    assert next(messages) == b"first"
    seen: list[set[str]] = []
    read_more = conn._read_more

    def watched() -> None:
        seen.append(set(messages.gi_frame.f_locals))  # type: ignore[attr-defined]  # the iterator's locals while it waits
        read_more()

    monkeypatch.setattr(conn, "_read_more", watched)
    near.sendall(frames.encode_frame(frames.OP_BINARY, b"second"))
    assert next(messages) == b"second"
    assert seen and all("message" not in names for names in seen)

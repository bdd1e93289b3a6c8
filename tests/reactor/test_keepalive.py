"""A stream's keepalive on the loop's timer heap, driven by a clock the test moves by hand.

The real :class:`~syncws.reactor.timers.Timers` and
:class:`~syncws.reactor.stream.Keepalive`; only the clock is the test's, so
that each test states when a ping goes out without waiting for it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from syncws.reactor.stream import Keepalive
from syncws.reactor.timers import Timers

from .test_timers import Clock


class Peer:
    """What the keepalive does to a connection: the pings it sends and whether it expired it."""

    def __init__(self, interval: float = 10.0, timeout: float = 5.0) -> None:
        self.clock = Clock()
        self.timers = Timers(self.clock)
        loop: Any = SimpleNamespace(timers=self.timers)  # Keepalive uses only the loop's timers
        self.pings: list[float] = []
        self.expired: list[float] = []
        self.keepalive = Keepalive(loop, interval, timeout, self._ping, lambda: self.expired.append(self.clock.now))
        self.keepalive.arm()

    def _ping(self) -> bool:
        self.pings.append(self.clock.now)
        return True

    def at(self, now: float) -> None:
        """Move the clock to ``now`` (seconds after the start) and run what is due."""
        self.clock.now = 100.0 + now
        self.timers.run_due()


def test_a_silent_peer_is_pinged_after_the_interval() -> None:
    """A peer not heard from for ping_interval gets a ping then, not before."""
    peer = Peer(interval=10.0)
    peer.at(9.9)
    assert peer.pings == []
    peer.at(10.0)
    assert peer.pings == [110.0]


def test_a_chatty_peer_is_never_pinged_and_holds_one_timer() -> None:
    """A peer heard from every 2 s for a minute gets no ping, and its keepalive keeps a single timer in the heap."""
    peer = Peer(interval=10.0)
    for second in range(2, 62, 2):
        peer.at(second)
        peer.keepalive.arm()
        assert len(peer.timers._heap) == 1
    assert peer.pings == []
    peer.at(70.0)
    assert peer.pings == [170.0]  # a whole interval after it was last heard from, at 60 s


def test_a_peer_that_never_answers_expires_after_the_timeout() -> None:
    """No pong within ping_timeout of the ping: the connection is expired then."""
    peer = Peer(interval=10.0, timeout=5.0)
    peer.at(10.0)
    peer.at(14.9)
    assert peer.expired == []
    peer.at(15.0)
    assert peer.expired == [115.0]


def test_after_a_pong_the_next_ping_waits_a_whole_interval() -> None:
    """A pong 1 s after the ping: no expiry, and the next ping goes out a whole interval after the pong."""
    peer = Peer(interval=10.0, timeout=5.0)
    peer.at(10.0)
    peer.at(11.0)
    peer.keepalive.arm()  # the read that brought the pong
    peer.keepalive.pong()
    peer.at(15.0)
    assert peer.expired == []
    peer.at(20.9)
    assert peer.pings == [110.0]
    peer.at(21.0)
    assert peer.pings == [110.0, 121.0]


def test_a_stopped_keepalive_pings_no_more() -> None:
    """Once stopped (the connection ended), no ping and no expiry ever comes."""
    peer = Peer(interval=10.0, timeout=5.0)
    peer.keepalive.stop()
    peer.at(100.0)
    assert (peer.pings, peer.expired) == ([], [])


def test_with_a_timeout_longer_than_the_interval_pings_keep_their_interval() -> None:
    """ping_timeout 20 s, ping_interval 1 s: a peer that answers each ping at once is pinged every second, not every 20."""
    peer = Peer(interval=1.0, timeout=20.0)
    for second in range(1, 6):
        peer.at(second + 0.0)
        assert len(peer.pings) == second
        peer.keepalive.arm()  # the read that brought the pong, at once
        peer.keepalive.pong()
    assert peer.expired == []

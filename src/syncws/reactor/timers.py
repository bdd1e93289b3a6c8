"""Deadlines of many connections in one heap, for a thread that waits on all of them at once: :class:`Timers`.

The engine's I/O thread owns every open socket, so it also owns every
deadline (keepalive, ping timeout, close timeout, handshake timeout, idle
send timeout): it asks :meth:`Timers.next_delay` how long it may block in
``select()``, and calls :meth:`Timers.run_due` when it wakes. A connection
with nothing due costs an entry in the heap and no wake-up at all.

A cancelled timer stays in the heap until it reaches the top (lazy
deletion: cancelling is O(1)); when cancelled entries pass half of the heap,
it is rebuilt without them, so a connection that re-arms its keepalive on
every message does not grow the heap beyond its live timers.

No I/O and no threads of its own. Threads: one owner thread (the I/O
thread) arms, cancels and runs timers; nothing here is locked, by design:
other threads ask the owner to arm or cancel (through its own queue).
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Callable, Optional

__all__ = ["Timer", "Timers"]


class Timer:
    """One armed deadline: ``callback()`` runs at ``when`` (``time.monotonic()``) unless cancelled first."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False


class Timers:
    """A heap of :class:`Timer` (see the module docstring); the owner thread's alone.

    Args:
        clock: what "now" is; ``time.monotonic`` unless a test gives its own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # ties run in the order they were armed
        self._cancelled = 0  # cancelled timers still in the heap

    def __len__(self) -> int:
        """Timers armed and not cancelled."""
        return len(self._heap) - self._cancelled

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Arm ``callback`` for the moment ``when``; the timer, to cancel it."""
        timer = Timer(when, callback)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Arm ``callback`` for ``delay`` seconds from now."""
        return self.call_at(self.clock() + delay, callback)

    def cancel(self, timer: Optional[Timer]) -> None:
        """Cancel ``timer`` (None, or one already run or cancelled: nothing happens)."""
        if timer is None or timer.cancelled:
            return
        timer.cancelled = True  # still in the heap: run_due marks the timers it ran as cancelled
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    def next_delay(self, cap: Optional[float] = None) -> Optional[float]:
        """Seconds until the earliest live timer (0 when one is due), at most ``cap``; None: none armed and no cap."""
        self._drop_cancelled_top()
        if not self._heap:
            return cap
        delay = max(0.0, self._heap[0][0] - self.clock())
        return delay if cap is None else min(delay, cap)

    def run_due(self) -> int:
        """Run every live timer that is due, earliest first; how many ran.

        A timer armed by a callback for a moment already passed runs in the
        same call; an exception in a callback propagates after that timer is
        marked run (the owner decides what a failed deadline means).
        """
        ran = 0
        now = self.clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                self._cancelled -= 1
                continue
            timer.cancelled = True  # run: a cancel() from now on is a no-op
            ran += 1
            timer.callback()
        return ran

    def _drop_cancelled_top(self) -> None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
            self._cancelled -= 1

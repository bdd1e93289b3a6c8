"""A server's graceful stop: the work in flight, and the wait for it to end.

:class:`Drain` counts what a server has in flight: every message a handler
is still handling (``on_message`` running, and so whatever reply it is
about to write), plus what components report through checks added with
:meth:`Drain.add_check` (a :class:`~syncws.RequestHandler` reports the calls
waiting for their replies). ``WebSocketServer.stop(drain=...)`` stops
accepting, then waits in :meth:`Drain.wait` until that count is zero, the
time is up, or :meth:`Drain.cut` ends the wait early (a second ``stop()``,
a second SIGTERM).

Threads: :meth:`started` and :meth:`ended` run on the connection threads
around each message; :meth:`wait` on the thread in ``stop()``; :meth:`add_check`,
:meth:`in_flight` and :meth:`cut` are safe from any thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Optional

__all__ = ["Drain", "DrainCheck", "check_drain"]

logger = logging.getLogger("syncws.server.server")  # its records are the server's: one logger to configure

#: Returns how many units of work a component has in flight now (0: none). Called on stop()'s thread.
DrainCheck = Callable[[], int]

#: How often a drain looks at the count again. The work in flight reports no event of its
#: own (a reply finishes a call on some connection's thread, not the server's), so the
#: count is polled: a stop that drains ends at most this much after its last call did.
POLL_INTERVAL = 0.02


def check_drain(drain: Optional[float]) -> float:
    """``drain`` as seconds to wait: None and 0 mean no drain; NaN and negatives raise ValueError."""
    if drain is None:
        return 0.0
    seconds = float(drain)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"drain must be None or a non-negative number of seconds, not {drain!r}")
    return seconds


class Drain:
    """The work a server has in flight, and the wait for it to end."""

    def __init__(self) -> None:
        # Synchronize access to _checks.
        self._lock = threading.Lock()
        self._checks: list[DrainCheck] = []
        # The connection threads inside a handler's on_message now, by thread ident
        # (cheaper than Thread objects on this per-message path). No lock: it only
        # changes by set.add and set.discard, each one atomic (a set's own lock on a
        # free-threaded build), and is read through one copy, atomic too; a lock
        # here would be two more acquisitions for every message of every connection.
        self._handling: set[int] = set()
        self._cut = threading.Event()

    def add_check(self, check: DrainCheck) -> None:
        """Count ``check()`` as work in flight while draining. Safe from any thread."""
        with self._lock:
            self._checks.append(check)

    def started(self) -> None:
        """Count the calling connection thread as busy: it starts to handle a message."""
        self._handling.add(threading.get_ident())

    def ended(self) -> None:
        """The calling connection thread is done with its message."""
        self._handling.discard(threading.get_ident())

    def in_flight(self) -> int:
        """The work in flight now: messages being handled (but the caller's own) and what the checks report.

        A check that raises is logged and counts as nothing, so that it cannot hold a stop up.
        """
        me = threading.get_ident()
        with self._lock:
            checks = list(self._checks)
        count = sum(1 for thread in self._handling.copy() if thread != me)
        for check in checks:
            try:
                count += max(0, int(check()))
            except Exception:
                logger.exception("drain check %r failed", check)
        return count

    def cut(self) -> None:
        """End a :meth:`wait` now, or the next one at once. Safe from any thread."""
        self._cut.set()

    def wait(self, seconds: float) -> bool:
        """Wait until nothing is in flight, for at most ``seconds`` (the thread in stop()); True when it all ended."""
        deadline = time.monotonic() + seconds
        while True:
            left = self.in_flight()
            if left == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._cut.wait(min(POLL_INTERVAL, remaining)):
                logger.info("drain %s with %d still in flight", "cut short" if self._cut.is_set() else "expired", left)
                return False

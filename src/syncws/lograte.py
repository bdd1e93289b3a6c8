"""Rate-limited logging per key: :class:`RateLimitedLog`.

A peer that sends junk must not flood the log: a connection's junk is logged
at most once per interval, and the next line it gets says how many were
suppressed in between. Keys are the connection objects themselves, held
weakly, so the state of a connection goes when the connection does.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable

__all__ = ["RateLimitedLog", "DEFAULT_INTERVAL"]

#: Seconds between two lines for one key, by default.
DEFAULT_INTERVAL = 10.0


class _KeyState:
    """When a key last got a line, and how many of its lines were suppressed since."""

    __slots__ = ("last", "suppressed")

    def __init__(self, last: float) -> None:
        self.last = last
        self.suppressed = 0


class RateLimitedLog:
    """Logs at most one line per ``interval`` seconds for each key; the next line counts what was suppressed.

    ``log(key, level, msg, *args)`` takes the place of ``logger.log(level,
    msg, *args)``. The key is any weak-referenceable, hashable object (a
    connection): its state is dropped when the key is garbage-collected, or at
    once with :meth:`forget`, which also logs the count still suppressed.
    Safe from any thread; the logger is called outside the lock.

    Args:
        logger: where the lines go.
        interval: seconds between two lines of one key.
        clock: the monotonic clock (``time.monotonic``).
    """

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        # Synchronize access to _keys and to each _KeyState in it.
        self._lock = threading.Lock()
        self._keys: weakref.WeakKeyDictionary[Any, _KeyState] = weakref.WeakKeyDictionary()

    def log(self, key: Any, level: int, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` had a line within the interval; True if it was logged."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        with self._lock:
            state = self._keys.get(key)
            if state is None:
                self._keys[key] = _KeyState(now)
                suppressed = 0
            elif now - state.last < self.interval:
                state.suppressed += 1
                return False
            else:
                suppressed, state.suppressed, state.last = state.suppressed, 0, now
        if suppressed:
            self.logger.log(level, msg + " (%d similar messages suppressed in the last %.0f s)", *args, suppressed, self.interval)
        else:
            self.logger.log(level, msg, *args)
        return True

    def forget(self, key: Any, level: int = logging.WARNING, what: str = "") -> None:
        """Drop the state of ``key`` (its connection closed); log the count it still had suppressed, if any."""
        with self._lock:
            state = self._keys.pop(key, None)
        if state is not None and state.suppressed:
            self.logger.log(level, "%s%d similar messages suppressed before the connection closed", f"{what}: " if what else "", state.suppressed)

    def __len__(self) -> int:
        """How many keys have state now."""
        with self._lock:
            return len(self._keys)

"""Freed memory handed back to the system after a large message, where the C library allows it (glibc's ``malloc_trim``).

glibc keeps the memory a program frees in its heaps, for the next
allocations. After a large message (tens of MiB) has been handled, what it
left there (the pieces it was inflated in, the objects a JSON request was
parsed into, a message that fell below glibc's mmap threshold) would stay
resident until reused. ``malloc_trim(0)`` hands the free pages back
(``MADV_DONTNEED``). It is no cure-all: it leaves the free top of a
thread's heap (glibc 2.36 trims only the main heap's top), which is where a
large block freed on a connection's thread may sit; docs/tuning.md says
how to make glibc map such blocks on their own instead.

A trim walks every heap under its locks: some microseconds when little is
free, some milliseconds with tens of thousands of free blocks. So it is
never run for small messages: a connection owes a trim only once it hands
out a message of :data:`TRIM_AFTER` bytes or more, pays it when it next
waits for the socket (the message has been handled by then), and the
process runs at most one trim per :data:`TRIM_INTERVAL` seconds (a debt
that finds the interval not over is paid at a later wait).

Threads: :meth:`Trimmer.trim` is safe from any thread (a lock guards the
time of the last trim); each connection's debt is its reader thread's.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
import time
from typing import Callable, Optional

__all__ = ["TRIM_AFTER", "TRIM_INTERVAL", "Trimmer", "trimmer"]

logger = logging.getLogger(__name__)

#: A message of at least this many bytes makes its connection owe a trim.
TRIM_AFTER = 16 * 1024 * 1024
#: Seconds between two trims in the process, at least.
TRIM_INTERVAL = 1.0


def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's ``malloc_trim``, or None on any other C library (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        function = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError) as exc:
        logger.debug("no malloc_trim: %r", exc)
        return None
    function.argtypes, function.restype = (ctypes.c_size_t,), ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


class Trimmer:
    """Runs ``malloc_trim(0)`` at most once per ``interval`` seconds. Safe from any thread.

    Args:
        trim: the function to run (``malloc_trim``); None: nothing to run,
            :meth:`trim` always says it is done.
        interval: the least time between two runs.
        clock: the time, in seconds (``time.monotonic``).
    """

    def __init__(self, trim: Optional[Callable[[int], int]], interval: float = TRIM_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self._trim = trim
        self.interval = interval
        self._clock = clock
        # Guards _last: two threads that owe a trim at once run one between them.
        self._lock = threading.Lock()
        self._last = -interval  # no trim yet
        #: False: no trims at all (a debt is settled as if trimmed). Any thread.
        self.enabled = True
        #: How many trims ran (for tests and figures).
        self.runs = 0

    @property
    def available(self) -> bool:
        """Whether there is a trim to run here (glibc, and :attr:`enabled`)."""
        return self._trim is not None and self.enabled

    def trim(self) -> bool:
        """Trim, unless one ran less than ``interval`` ago; True when the debt is settled (trimmed now, or nothing to trim with)."""
        if self._trim is None or not self.enabled:
            return True
        with self._lock:
            now = self._clock()
            if now - self._last < self.interval:
                return False
            self._last = now
            self.runs += 1
        # Outside the lock: the call takes glibc's own locks, and the GIL is released meanwhile (ctypes).
        self._trim(0)
        return True


#: The process's trimmer: every connection's debts are paid through it.
trimmer = Trimmer(_malloc_trim())

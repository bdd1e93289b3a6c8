"""Timeouts as the whole library takes them: ``None`` or ``inf`` waits forever; NaN and negatives are refused.

Every blocking call of syncws that takes ``timeout`` checks it here before it
does anything, so that a bad value raises ValueError at once and a very large
one (which ``threading`` and ``select`` refuse with OverflowError) means
"forever" instead of failing after a request went out.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from typing import Optional

__all__ = ["check_timeout", "deadline", "remaining"]

# Beyond this, threading's waits raise OverflowError; nobody waits that long anyway.
_FOREVER = min(threading.TIMEOUT_MAX, 1e9)


def check_timeout(timeout: Optional[float], name: str = "timeout") -> Optional[float]:
    """Return ``timeout`` as seconds to wait, or None for "forever".

    None and any non-negative number are valid; ``math.inf``, and anything
    beyond what ``threading`` can wait (where ``Condition.wait`` would raise
    OverflowError), mean forever and come back as None. NaN and negative
    values raise ValueError, and what is not a number raises TypeError, so
    that a caller can check before anything is sent.
    """
    if timeout is None:
        return None
    if type(timeout) is float or type(timeout) is int:  # the common case, without the ABC check below
        if timeout >= 0:
            return None if timeout >= _FOREVER else float(timeout)
        if timeout < 0:
            raise ValueError(f"{name} must not be negative, got {timeout!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(timeout).__name__}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an int too large for a float: forever, unless it is negative
        if timeout < 0:
            raise ValueError(f"{name} must not be negative") from None
        return None
    if math.isnan(seconds):
        raise ValueError(f"{name} must not be NaN")
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, got {timeout!r}")
    return None if seconds >= _FOREVER else seconds


def deadline(timeout: Optional[float], name: str = "timeout") -> Optional[float]:
    """The ``time.monotonic()`` moment at which ``timeout`` runs out, or None for never (checked as above)."""
    seconds = check_timeout(timeout, name)
    return None if seconds is None else time.monotonic() + seconds


def remaining(at: Optional[float]) -> Optional[float]:
    """Seconds left until the deadline ``at`` (never negative), or None when there is none."""
    return None if at is None else max(0.0, at - time.monotonic())

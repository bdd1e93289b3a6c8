"""One RequestHandler's calls counted: outcomes, calls pending, and how long they took.

:class:`RequestCounters` is written by the threads that call ``doRequest``
(or ``get_response``), each once its call has ended, and read by ``stats()``
and a metrics scrape from any thread. Durations go two ways: a histogram of
fixed buckets since the start (what Prometheus sums across servers), and a
sliding window of the latest calls for percentiles (what a person reads).
Nothing here does I/O.
"""

from __future__ import annotations

import bisect
import collections
import math
import threading
import time
from typing import Any, Callable, Optional

from ..exceptions import ConnectionClosed, NotConnected, RequestCancelled, RequestError, RequestTimeout, SendTimeout

__all__ = ["RequestCounters", "Counting", "OUTCOMES", "BUCKETS", "outcome_of"]

#: How a call ended: a reply with status 200; any other reply (RequestError);
#: no reply in time; the peer gone or never there; cancelled by the caller.
OUTCOMES = ("ok", "error", "timeout", "disconnected", "cancelled")

#: Upper bounds (seconds) of the duration histogram's buckets, from a loopback
#: round trip to a minute-long computation; +Inf is implied after the last.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: How many ended calls wait, unfolded, before the thread that ends one folds them in.
FOLD_AT = 1024

#: The sliding window of durations percentiles are read from: the calls of the last
#: WINDOW seconds, at most WINDOW_CALLS of them (the newest).
WINDOW = 60.0
WINDOW_CALLS = 4096


def outcome_of(error: Optional[BaseException]) -> str:
    """The outcome a call ended with, from the exception it raised (None: a reply with status 200)."""
    if error is None:
        return "ok"
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, RequestCancelled):
        return "cancelled"
    if isinstance(error, (ConnectionClosed, NotConnected, SendTimeout)):
        return "disconnected"
    if isinstance(error, RequestError):
        return "error"
    return "error"  # anything else that ended a call (a cluster failure, a refused reply) is a failure too


class RequestCounters:
    """One RequestHandler's calls: by outcome, pending now, durations. Safe from any thread.

    ``pending`` says how many calls wait for a reply now, and ``commands``
    how the handler's pool of threads for the peers' requests is doing
    (``busy``, ``idle``, ``queued``): the handler's own figures, read when a
    snapshot is made.
    """

    def __init__(
        self,
        name: str,
        pending: Callable[[], int] = lambda: 0,
        commands: Callable[[], dict[str, int]] = lambda: {"busy": 0, "idle": 0, "queued": 0},
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._pending = pending
        self._commands = commands
        self._clock = clock
        # Synchronize access to _outcomes, _buckets, _sum and _window, and the folding of _ended.
        self._lock = threading.Lock()
        self._outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum = 0.0
        self._window: collections.deque[tuple[float, float]] = collections.deque(maxlen=WINDOW_CALLS)  # (ended at, seconds)
        # Calls ended and not yet folded into the figures above: (outcome, seconds, ended at).
        # The caller's thread appends (one atomic step, no lock on the request path); whoever
        # reads, or the caller that finds FOLD_AT waiting, folds them in under the lock.
        self._ended: collections.deque[tuple[str, float, float]] = collections.deque()

    def counting(self) -> Counting:
        """A ``with`` block that counts one call: its outcome from what the block raises, its duration. Any thread."""
        return Counting(self)

    def ended(self, outcome: str, seconds: float) -> None:
        """Count one call that ended with ``outcome`` after ``seconds`` (the caller's thread)."""
        ended = self._ended
        ended.append((outcome, seconds, self._clock()))
        if len(ended) > FOLD_AT:
            with self._lock:
                self._fold()

    def _fold(self) -> None:
        """Move the calls ended since the last fold into the figures. Requires the lock (the only place they leave)."""
        ended, outcomes, buckets, window = self._ended, self._outcomes, self._buckets, self._window
        for _ in range(len(ended)):  # calls ended meanwhile stay for the next fold
            outcome, seconds, at = ended.popleft()
            outcomes[outcome] += 1
            buckets[bisect.bisect_left(BUCKETS, seconds)] += 1  # the first bound >= seconds: Prometheus's "le"
            self._sum += seconds
            window.append((at, seconds))

    def snapshot(self) -> dict[str, Any]:
        """The figures as a plain dict, copied at one moment (any thread)."""
        since = self._clock() - WINDOW
        with self._lock:
            self._fold()
            outcomes = dict(self._outcomes)
            buckets = list(self._buckets)
            total_seconds = self._sum
            recent = sorted(seconds for ended, seconds in self._window if ended >= since)
        cumulative: list[list[Any]] = []
        running = 0
        for bound, count in zip((*BUCKETS, "+Inf"), buckets):  # JSON has no infinity: Prometheus's own spelling
            running += count
            cumulative.append([bound, running])
        return {
            "requests": sum(outcomes.values()),
            "outcomes": outcomes,
            "pending": self._pending(),
            "latency": {
                "window": WINDOW,
                "count": len(recent),
                "p50": _percentile(recent, 0.50),
                "p90": _percentile(recent, 0.90),
                "p99": _percentile(recent, 0.99),
            },
            "duration": {"buckets": cumulative, "sum": total_seconds, "count": running},
            "commands": self._commands(),
        }


class Counting:
    """One call being counted: ``with counters.counting(): ...`` (the caller's thread).

    A class rather than a generator: this runs once per request, and costs
    about a microsecond this way.
    """

    __slots__ = ("counters", "started")

    def __init__(self, counters: RequestCounters) -> None:
        self.counters = counters
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException], traceback: Any) -> None:
        self.counters.ended(outcome_of(error), time.perf_counter() - self.started)


def _percentile(ordered: list[float], fraction: float) -> Optional[float]:
    """The nearest-rank percentile of an ordered list, or None for no calls."""
    if not ordered:
        return None
    return ordered[max(1, math.ceil(len(ordered) * fraction)) - 1]

"""What the cluster's presence said of each endpoint name, kept between calls: :class:`PresenceCache`.

A call without ``conn=`` picks the newest connection of its name on any node,
which used to cost a Redis round trip per call. The cache keeps the last
answer per name and is told when it goes stale: a node that writes a change
to its connections of a name publishes a *presence* envelope for that name
on the cluster's channel, in the same transaction as the write, and every
node's subscriber drops its entry for that name. So an entry is as fresh as
the channel is; while the subscription is down (messages may be missed), or
before it is confirmed, nothing is kept or served. A node that dies without
a word withdraws nothing: its records leave Redis's answer when its
heartbeat runs out (``ttl``), and an entry lives at most ``max_age`` (a
third of ``ttl``), so the cache adds at most that to the time a dead node's
peers are still chosen (their calls then fail with NotConnected, as before).

A read that started before an invalidation may finish after it: each name
has a generation, bumped by every invalidation, and a read stores its
answer only if the generation it started under is still current. The
generations live in a fixed table indexed by the name's hash, so that a
channel flooded with invalidations of made-up names costs no memory (two
names that share a slot only cost each other a store now and then).

Threads: every method is safe from any thread; the subscriber thread calls
:meth:`invalidate`, :meth:`trust` and :meth:`distrust`, callers'
threads :meth:`get`, :meth:`begin` and :meth:`put`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Callable, NamedTuple, Optional

from .presence import ClusterConnection

__all__ = ["PresenceCache"]

_SLOTS = 1024  # generations kept, indexed by a name's hash


class _Entry(NamedTuple):
    stored_at: float  # the cache's clock
    records: tuple[ClusterConnection, ...]


class PresenceCache:
    """The last presence answer per name, dropped when the channel says it changed (see the module docstring).

    Args:
        max_age: seconds an entry may be served at most, however quiet the channel.
        clock: what "now" is; ``time.monotonic`` unless a test gives its own.
    """

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self.clock = clock
        # Synchronize access to _entries, _generations, _epoch and _trusted.
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._generations = [0] * _SLOTS  # invalidations seen, per slot of names
        self._epoch = 0  # bumped by distrust() and trust(): every read begun before is stale
        self._trusted = False  # True while the subscription is confirmed
        #: Answers served from the cache, and reads that went to Redis (for the benchmarks and tests).
        self.hits = 0
        self.misses = 0

    def get(self, name: str) -> Optional[list[ClusterConnection]]:
        """The cached records of ``name`` (newest last), or None when there are none to trust."""
        with self._lock:
            entry = self._entries.get(name) if self._trusted else None
            if entry is None or self.clock() - entry.stored_at > self.max_age:
                self.misses += 1
                return None
            self.hits += 1
            return list(entry.records)

    def begin(self, name: str) -> tuple[int, int]:
        """What to hand to :meth:`put` with the answer of a read of ``name`` that starts now."""
        with self._lock:
            return self._epoch, self._generations[hash(name) % _SLOTS]

    def put(self, name: str, began: tuple[int, int], records: Iterable[ClusterConnection]) -> None:
        """Keep ``records`` as the answer for ``name``, unless it changed (or the subscription did) since ``began``."""
        kept = tuple(records)
        with self._lock:
            if self._trusted and began == (self._epoch, self._generations[hash(name) % _SLOTS]):
                self._entries[name] = _Entry(self.clock(), kept)

    def invalidate(self, name: str) -> None:
        """``name``'s connections changed somewhere: drop its entry (the subscriber thread)."""
        with self._lock:
            self._generations[hash(name) % _SLOTS] += 1
            self._entries.pop(name, None)

    def trust(self) -> None:
        """The subscription is confirmed: from now on every change is heard. What was kept before may have missed some."""
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._trusted = True

    def distrust(self) -> None:
        """The subscription is lost (or the node stops): changes may go unheard, so keep and serve nothing."""
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._trusted = False

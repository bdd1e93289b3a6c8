"""The cluster's long-running threads, kept running: :class:`Keeper`.

A node's subscriber (``syncws-cluster-sub``) and heartbeat
(``syncws-cluster-beat``) read what others wrote to Redis for as long as the
node runs. Each loop drops what it cannot read and reconnects on its own;
the keeper is the last line behind that: a loop that still raises (a bug,
or input nobody foresaw) or returns is run again on the same thread after a
capped, jittered backoff, and one whose thread is found dead (``check``,
which the loops call as they go) gets a new thread. Either is logged at
WARNING: a node never loses its subscription or its presence silently.

Threads: ``spawn``, ``check`` and ``join`` are safe from any thread; each
loop runs on its own daemon thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from .presence import Backoff

__all__ = ["Keeper"]

logger = logging.getLogger("syncws.cluster.cluster")  # the cluster's records: one logger to configure

#: A loop that ran this long before it failed starts over from the shortest backoff.
_STEADY = 30.0


class _Kept:
    """One kept loop: its name, its function, its current thread and how often it was restarted."""

    def __init__(self, name: str, loop: Callable[[], None]) -> None:
        self.name = name
        self.loop = loop
        self.thread: Optional[threading.Thread] = None
        self.restarts = 0


class Keeper:
    """Runs each loop on a named daemon thread until ``stopping`` is set, and runs it again when it ends early.

    Args:
        label: what log lines call the owner (``cluster <name>``).
        stopping: set when the loops are to end; a loop must return soon after.
    """

    def __init__(self, label: str, stopping: threading.Event) -> None:
        self.label = label
        self.stopping = stopping
        # Synchronize access to _kept and to each _Kept's thread and restarts.
        self._lock = threading.Lock()
        self._kept: list[_Kept] = []

    def spawn(self, name: str, loop: Callable[[], None]) -> None:
        """Start ``loop`` on a thread named ``name``, kept running until ``stopping``."""
        kept = _Kept(name, loop)
        with self._lock:
            self._kept.append(kept)
            self._start(kept)

    def _start(self, kept: _Kept) -> None:
        """Give ``kept`` a new thread (under _lock)."""
        kept.thread = threading.Thread(target=self._run, args=(kept,), name=kept.name, daemon=True)
        kept.thread.start()

    def _run(self, kept: _Kept) -> None:
        """Run the loop; run it again, after a backoff and a warning, each time it ends before ``stopping`` (its thread)."""
        backoff = Backoff()
        while not self.stopping.is_set():
            began = time.monotonic()
            failure: Optional[BaseException] = None
            try:
                kept.loop()
            except BaseException as exc:  # whatever ended it, the node needs the loop: run it again
                failure = exc
            if self.stopping.is_set():
                return
            if time.monotonic() - began > _STEADY:
                backoff.reset()
            wait = backoff.next()
            with self._lock:
                kept.restarts += 1
            if failure is None:
                logger.warning("%s: thread %s ended by itself; restarting it in %.2f s", self.label, kept.name, wait)
            else:
                logger.warning(
                    "%s: thread %s died (%s: %s); restarting it in %.2f s",
                    self.label,
                    kept.name,
                    type(failure).__name__,
                    str(failure)[:200],
                    wait,
                    exc_info=failure,
                )
            self.stopping.wait(wait)

    def check(self) -> None:
        """Restart, with a warning, any kept loop whose thread is no longer alive (any thread)."""
        if self.stopping.is_set():
            return
        with self._lock:
            dead = [k for k in self._kept if k.thread is not None and not k.thread.is_alive()]
            for kept in dead:
                kept.restarts += 1
                self._start(kept)
        for kept in dead:
            logger.warning("%s: thread %s was found dead; started it again", self.label, kept.name)

    def restarts(self, name: str) -> int:
        """How often the loop ``name`` was restarted (for tests and diagnostics)."""
        with self._lock:
            return sum(k.restarts for k in self._kept if k.name == name)

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds in all for the loops to end (after ``stopping`` was set), and forget them."""
        with self._lock:
            kept, self._kept = self._kept, []
        end = time.monotonic() + timeout
        for k in kept:
            if k.thread is not None and k.thread is not threading.current_thread():
                k.thread.join(max(0.0, end - time.monotonic()))

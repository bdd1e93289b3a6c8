"""The threads that run handlers for the engine's I/O thread: :class:`HandlerPool` and its per-connection :class:`Lane`.

syncws's promise is a blocking API: ``open``, ``on_message``, ``on_close``
and the endpoint callbacks are plain blocking code, and one that blocks
holds up only its own connection. The selector engine keeps that promise
without a thread per open connection: the I/O thread hands each
connection's calls to that connection's lane, and the pool's workers run
them.

* **In order, one at a time.** A lane runs its calls in the order they were
  submitted, never two at once: a lane is in the pool's ready queue at most
  once, and only while none of its calls runs.
* **A blocked handler holds only its own connection.** When a lane becomes
  ready and no idle worker is left to take it, the pool starts one more
  thread, up to ``max_workers`` (the server's connection limit, so that
  every connection can block at once). Workers take ready lanes in turn, one
  call each, so a lane with a long queue does not starve the others.
* **Elastic.** A worker with nothing to do for ``idle_timeout`` seconds
  ends: a server whose handlers are quick keeps a few threads, whatever
  its number of connections.
* **Back-pressure.** :meth:`Lane.submit` returns the calls pending on the
  lane (queued and running); the I/O thread stops reading a connection whose
  lane holds ``limit`` of them, and the lane calls ``on_room`` (on the worker
  thread) when it drops below again, so that a slow handler slows its
  client through TCP instead of filling memory.

Threads: ``syncws-worker-N`` threads run the calls. :meth:`Lane.submit`,
:meth:`Lane.close`, :meth:`Lane.join` and every method of the pool are safe
from any thread. An exception a call raises is logged and the lane goes on.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

__all__ = ["HandlerPool", "Lane", "LaneClosed"]

logger = logging.getLogger(__name__)

_thread_numbers = itertools.count(1)


class LaneClosed(Exception):
    """A call was submitted to a lane after its close() (or its pool's stop())."""


class Lane:
    """One connection's calls, run in order and one at a time by a :class:`HandlerPool` (made by :meth:`HandlerPool.lane`).

    Its state is guarded by the pool's lock.
    """

    def __init__(self, pool: HandlerPool, limit: int, on_room: Optional[Callable[[], None]]) -> None:
        self._pool = pool
        self.limit = limit
        self._on_room = on_room
        self._calls: deque[Callable[[], None]] = deque()  # queued, not yet running
        self._running = False  # one of its calls runs now
        self._closed = False
        self._idle = threading.Event()  # set while nothing is queued or running
        self._idle.set()

    @property
    def pending(self) -> int:
        """Calls queued or running now."""
        with self._pool._lock:
            return len(self._calls) + self._running

    def submit(self, call: Callable[[], None]) -> int:
        """Queue ``call`` to run after this lane's earlier calls; the calls pending now, this one included.

        Raises LaneClosed after :meth:`close`, or once the pool is stopping.
        """
        pool = self._pool
        start = False
        with pool._lock:
            if self._closed or pool._stopping:
                raise LaneClosed("this connection's handler takes no more calls")
            self._calls.append(call)
            self._idle.clear()
            if not self._running and len(self._calls) == 1:
                start = pool._make_ready(self)
            pending = len(self._calls) + self._running
        if start:
            pool._start_worker()
        return pending

    def close(self) -> None:
        """Take no more calls; those queued still run (a connection's ``on_close`` is its last). Idempotent."""
        with self._pool._lock:
            self._closed = True

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait until no call is queued or running; False at ``timeout``."""
        return self._idle.wait(timeout)


class HandlerPool:
    """Worker threads that run :class:`Lane` calls (see the module docstring).

    Args:
        max_workers: at most this many threads at once: the most calls that
            may block at the same time.
        idle_timeout: a worker with nothing to do for this long ends.
        name: the prefix of the worker threads' names.
    """

    def __init__(self, max_workers: int, idle_timeout: float = 5.0, name: str = "syncws-worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.name = name
        # Synchronize access to _ready, _threads, _idle, _busy, _stopping and every lane's
        # _calls, _running and _closed; _work (on this lock) wakes an idle worker for a ready lane.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._ready: deque[Lane] = deque()  # lanes with a call to run and none running, in turn
        self._threads: set[threading.Thread] = set()  # workers alive
        self._idle = 0  # workers waiting for a ready lane
        self._busy = 0  # workers running a call
        self._stopping = False

    def lane(self, limit: int = 16, on_room: Optional[Callable[[], None]] = None) -> Lane:
        """A new lane for one connection: ``limit`` pending calls stop its reading, ``on_room`` resumes it."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return Lane(self, limit, on_room)

    def counts(self) -> dict[str, int]:
        """Workers ``busy`` and ``idle`` now, and lanes ``ready`` waiting for a worker (a snapshot)."""
        with self._lock:
            return {"busy": self._busy, "idle": self._idle, "ready": len(self._ready)}

    def stop(self, timeout: Optional[float] = None) -> bool:
        """End the workers once the ready lanes have run; True when all ended within ``timeout``. Safe from any thread.

        Lanes take no calls after this; a worker blocked in a call ends when
        the call returns.
        """
        with self._work:
            self._stopping = True
            workers = list(self._threads)
            self._work.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in workers:
            if worker is not threading.current_thread():
                worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(worker.is_alive() for worker in workers if worker is not threading.current_thread())

    # ------------------------------------------------------------------ internals

    def _make_ready(self, lane: Lane) -> bool:
        """Put ``lane`` in the ready queue; True when a new worker must be started for it. Requires holding _lock."""
        self._ready.append(lane)
        if self._idle >= len(self._ready):
            self._work.notify()
            return False
        return len(self._threads) < self.max_workers

    def _start_worker(self) -> None:
        worker = threading.Thread(target=self._run, name=f"{self.name}-{next(_thread_numbers)}", daemon=True)
        with self._lock:
            if len(self._threads) >= self.max_workers:
                return  # another submit started the last one meanwhile
            self._threads.add(worker)
        worker.start()

    def _run(self) -> None:
        """Run ready lanes' calls, one at a time each, until idle for idle_timeout or stopping (worker thread)."""
        me = threading.current_thread()
        with self._work:
            while True:
                if not self._ready:
                    if self._stopping:
                        break
                    self._idle += 1
                    woken = self._work.wait(self.idle_timeout)
                    self._idle -= 1
                    if not self._ready and (not woken or self._stopping):
                        break
                    continue
                lane = self._ready.popleft()
                call = lane._calls.popleft()
                lane._running = True
                self._busy += 1
                self._work.release()
                try:
                    self._call(call)
                finally:
                    del call  # not held while waiting for the next: it may hold a large message
                    self._work.acquire()
                    self._busy -= 1
                    lane._running = False
                    pending = len(lane._calls)
                    if pending:
                        self._ready.append(lane)  # behind the lanes that waited meanwhile
                    else:
                        lane._idle.set()
                    room = lane._on_room if pending == lane.limit - 1 else None
                if room is not None:
                    self._work.release()
                    try:
                        self._call(room)
                    finally:
                        self._work.acquire()
            self._threads.discard(me)

    @staticmethod
    def _call(call: Callable[[], None]) -> None:
        try:
            call()
        except Exception:
            logger.exception("a handler call failed; its connection goes on")

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
* **No switch on the way in.** A pool made with the engine's
  :class:`~syncws.reactor.loop.IOLoop` also leads it, one worker at a time
  (leaders and followers, see :mod:`syncws.reactor.loop`). When the loop
  thread submits a call to a lane with nothing queued or running, the call
  is not queued: the loop thread leaves the loop when its pass ends, runs
  the call itself and goes back to the loop, so that a quick handler (an
  echo, a reply) costs no thread switch at all. A ``syncws-watchdog``
  thread sees to the rest: when the loop has been left for ``TAKEOVER``
  (a handler that blocks, or computes), it hands the loop to another worker,
  and the thread that left becomes a plain worker when its call returns.
  The watchdog ticks only while calls run this way, and parks after a quiet
  spell, so an idle server wakes for nothing.
* **Back-pressure.** :meth:`Lane.submit` returns the calls pending on the
  lane (queued and running); the I/O thread stops reading a connection whose
  lane holds ``limit`` of them, and the lane calls ``on_room`` (on the worker
  thread) when it drops below again, so that a slow handler slows its
  client through TCP instead of filling memory.

Threads: ``syncws-worker-N`` threads run the calls; the one leading the loop
is named for the loop while it does; ``syncws-watchdog`` hands the loop on. :meth:`Lane.submit`,
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

from .caller_lead import CallerLeading
from .loop import IOLoop

__all__ = ["HandlerPool", "Lane", "LaneClosed", "release_the_loop"]

logger = logging.getLogger(__name__)

_thread_numbers = itertools.count(1)

#: How long the loop may be left without a leader while the thread that left it runs a call
#: (seconds): longer, and the watchdog gives the loop to another thread. A quick handler
#: returns well within it; this is how late other connections' events may be, at most, on
#: top of the watchdog's tick.
TAKEOVER = 0.002
#: The watchdog parks (waits to be woken instead of ticking) after this long without a call
#: run on the loop's thread.
PARK_AFTER = 0.05


class _RunningHere(threading.local):
    #: The pool whose loop this thread left to run the call it is running, or that may keep its
    #: loop for this thread while it makes requests (syncws.reactor.caller_lead); None: neither.
    #: release_the_loop() gives the loop away if it is kept for this thread.
    pool: Optional[HandlerPool] = None
    #: The lane whose call this thread is running (None: none).
    lane: Optional[Lane] = None


_running_here = _RunningHere()


def release_the_loop() -> None:
    """Say that the calling thread is about to wait for something the I/O loop brings (a reply, room to write).

    A handler call may run on the thread that read its message, which left
    the loop to run it (see the module docstring); that loop then has no
    leader until the call returns or ``TAKEOVER`` has passed. A wait for the
    loop's work in that gap would add ``TAKEOVER`` to it, so syncws's own
    blocking calls (``doRequest``) call this first, and another worker leads
    at once. Cheap and harmless from any other thread, where it does nothing.
    """
    pool = _running_here.pool
    if pool is not None:
        pool._release_the_loop()


def current_lane() -> Optional[Lane]:
    """The lane whose call the calling thread is running now; None on any other thread.

    A server's ``stop()`` called from a handler uses it to know its own
    connection, whose ``on_close`` cannot run before that handler returns.
    """
    return _running_here.lane


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
    def pool(self) -> HandlerPool:
        """The pool that runs this lane's calls."""
        return self._pool

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
            self._idle.clear()
            if not self._running and not self._calls and pool._may_run_here():
                # The loop thread runs it itself once its pass ends (see the module docstring).
                self._running = True
                pool._busy += 1
                pool._here = (self, call)
                assert pool._loop is not None
                pool._loop.hand_off_after_pass()
                return 1
            self._calls.append(call)
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


class HandlerPool(CallerLeading):
    """Worker threads that run :class:`Lane` calls (see the module docstring).

    Args:
        max_workers: at most this many threads at once: the most calls that
            may block at the same time.
        idle_timeout: a worker with nothing to do for this long ends.
        name: the prefix of the worker threads' names.
        loop: an I/O loop, not started, that the workers lead in turn (one
            more thread than ``max_workers`` at most: the leader); it starts
            leading at once and stops with :meth:`stop`.
    """

    def __init__(self, max_workers: int, idle_timeout: float = 5.0, name: str = "syncws-worker", loop: Optional[IOLoop] = None) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self.idle_timeout = idle_timeout
        self.name = name
        self._loop = loop
        # Synchronize access to _ready, _threads, _idle, _busy, _stopping, _lead_wanted, _here and
        # every lane's _calls, _running and _closed; _work (on this lock) wakes an idle worker for a
        # ready lane or for the loop's lead.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._ready: deque[Lane] = deque()  # lanes with a call to run and none running, in turn
        self._threads: set[threading.Thread] = set()  # workers alive, the leader among them
        self._idle = 0  # workers waiting for a ready lane or the lead
        self._busy = 0  # workers running a call
        self._stopping = False
        self._lead_wanted = False  # the loop has no leader: the next free worker takes it
        # A call the loop thread took during its pass, to run itself once it has left the loop.
        self._here: Optional[tuple[Lane, Callable[[], None]]] = None
        # When the loop thread left the loop to run _here (None: the loop is led, or wanted), and
        # that thread's ident; past TAKEOVER the watchdog (woken by _watch, on this lock) gives the
        # loop to another worker.
        self._vacant_since: Optional[float] = None
        self._vacant_by: Optional[int] = None
        self._watch = threading.Condition(self._lock)
        self._watch_parked = False  # the watchdog waits for _watch without ticking
        self._watchdog: Optional[threading.Thread] = None
        # A caller leads the loop while it waits for its reply; the loop thread leaves the loop for
        # this caller's thread when its pass ends (syncws.reactor.caller_lead). Under _lock too.
        self._caller_leads = False
        self._vacate_for: Optional[int] = None
        self._callers: list[None] = []  # one item per caller waiting (caller_lead): a counter without a lock
        self._takeover = TAKEOVER
        self._running_here = _running_here
        if loop is not None:
            with self._lock:
                self._lead_wanted = True
            self._start_worker()
            self._watchdog = threading.Thread(target=self._watch_the_loop, name="syncws-watchdog", daemon=True)
            self._watchdog.start()

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
        """End the workers once the ready lanes have run, then the loop they lead; True when all ended within ``timeout``. Safe from any thread.

        Lanes take no calls after this; a worker blocked in a call ends when
        the call returns. The loop runs until the other workers have ended, so
        that what the last calls post to it (their connections' closing) runs.
        """
        with self._work:
            self._stopping = True
            self._work.notify_all()
            self._watch.notify()
        deadline = None if timeout is None else time.monotonic() + timeout
        ended = self._join_workers(deadline, but_the_leader=True)
        if self._loop is not None:
            ended = self._loop.stop(self._left(deadline)) and ended
        ended = self._join_workers(deadline, but_the_leader=False) and ended
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(self._left(deadline))
            ended = ended and not self._watchdog.is_alive()
        return ended

    def _join_workers(self, deadline: Optional[float], but_the_leader: bool) -> bool:
        """Wait until the workers have ended (all, or all but the one leading the loop); False at ``deadline``."""
        me = threading.current_thread()
        while True:
            with self._lock:
                alive = [worker for worker in self._threads if worker is not me and worker.is_alive()]
            if but_the_leader and self._loop is not None:
                leader = self._loop.leader
                alive = [worker for worker in alive if worker is not leader]
            if not alive:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            # In slices: a worker may take the lead meanwhile, and the leader ends only with the loop.
            left = self._left(deadline)
            alive[0].join(0.05 if left is None else min(0.05, left))

    @staticmethod
    def _left(deadline: Optional[float]) -> Optional[float]:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    # ------------------------------------------------------------------ internals

    def _may_run_here(self) -> bool:
        """True when the calling thread leads the loop and has taken no call to run itself this pass yet. Requires holding _lock."""
        loop = self._loop
        return loop is not None and self._here is None and not self._caller_leads and loop.in_loop()

    def _jobs(self) -> int:
        """What idle workers are wanted for: the ready lanes, and the lead when the loop has none. Requires holding _lock."""
        return len(self._ready) + self._lead_wanted

    def _make_ready(self, lane: Lane) -> bool:
        """Put ``lane`` in the ready queue; True when a new worker must be started for it. Requires holding _lock."""
        self._ready.append(lane)
        return self._wake_for_job()

    def _wake_for_job(self) -> bool:
        """Wake an idle worker for a job just added; True when there is none and a new one must be started. Requires holding _lock."""
        if self._idle >= self._jobs():
            self._work.notify()
            return False
        return len(self._threads) < self._most_threads()

    def _most_threads(self) -> int:
        return self.max_workers + (self._loop is not None)  # the leader runs no call while it leads

    def _start_worker(self) -> None:
        worker = threading.Thread(target=self._run, name=f"{self.name}-{next(_thread_numbers)}", daemon=True)
        with self._lock:
            if len(self._threads) >= self._most_threads():
                return  # another submit started the last one meanwhile
            self._threads.add(worker)
        try:
            worker.start()
        except RuntimeError:  # no thread to be had: the ones alive take the work when they are free
            logger.exception("the handler pool could not start a thread")
            with self._lock:
                self._threads.discard(worker)

    def _lead(self) -> Optional[tuple[Lane, Callable[[], None]]]:
        """Lead the loop on this worker until it leaves the loop or it stops; the call it took to run here, if any (worker thread, not holding _lock)."""
        assert self._loop is not None
        me = threading.current_thread()
        own_name, me.name = me.name, self._loop.name
        try:
            handed_on = self._loop.lead()
        finally:
            me.name = own_name
        with self._lock:
            here, self._here = self._here, None
            vacate_for, self._vacate_for = self._vacate_for, None
            if handed_on and here is None and vacate_for is not None and not self._stopping:
                # Kept for a caller whose reply this pass took: it leads when it comes back (caller_lead).
                self._vacant_since, self._vacant_by = time.monotonic(), vacate_for
                if self._watch_parked:
                    self._watch.notify()
            elif handed_on and here is None:
                self._lead_wanted = True  # nothing to run after all: lead again
            elif handed_on:
                self._vacant_since, self._vacant_by = time.monotonic(), threading.get_ident()
                _running_here.pool = self
                if self._watch_parked:
                    self._watch.notify()
        return here

    def _watch_the_loop(self) -> None:
        """Give the loop to a worker when the thread that left it to run a call is not back within TAKEOVER (watchdog thread)."""
        with self._lock:
            quiet_since = time.monotonic()
            while not self._stopping or self._vacant_since is not None:
                now = time.monotonic()
                if self._vacant_since is None:
                    if now - quiet_since < PARK_AFTER:
                        self._watch.wait(TAKEOVER)  # a tick: calls run on the loop's thread these days
                    else:
                        self._watch_parked = True
                        self._watch.wait()
                        self._watch_parked = False
                        quiet_since = time.monotonic()
                    continue
                quiet_since = now
                if now < self._vacant_since + TAKEOVER:
                    self._watch.wait(self._vacant_since + TAKEOVER - now)
                    continue
                # That call takes long (it blocks, or computes): the loop goes on on another thread,
                # and the one running the call becomes a plain worker when it returns.
                if self._give_the_lead_away():
                    self._lock.release()
                    try:
                        self._start_worker()
                    finally:
                        self._lock.acquire()

    def _give_the_lead_away(self) -> bool:
        """Have another worker lead the loop that the thread running a call left; True when one must be started. Requires holding _lock."""
        self._vacant_since = self._vacant_by = None
        self._lead_wanted = True
        return self._wake_for_job()

    def _release_the_loop(self) -> None:
        """The calling thread's call, taken on the loop's thread, is about to wait on the loop: another worker leads now."""
        if not self.kept_for_me():
            return  # read without the lock: not kept for this thread (the common case), and only its own call could make it so now
        with self._lock:
            start = self._vacant_by == threading.get_ident() and self._give_the_lead_away()
        if start:
            self._start_worker()

    def _run(self) -> None:
        """Run ready lanes' calls, one at a time each, until idle for idle_timeout or stopping (worker thread)."""
        me = threading.current_thread()
        with self._work:
            while True:
                if self._lead_wanted:
                    self._lead_wanted = False
                    self._work.release()
                    try:
                        here = self._lead()
                    finally:
                        self._work.acquire()
                    if here is None:
                        continue
                    lane, call = here  # _running and _busy were set when it was taken
                    del here  # the call alone holds its message, and only until it has run (below)
                    ran_here = True
                elif not self._ready:
                    if self._stopping:
                        break
                    self._idle += 1
                    woken = self._work.wait(self.idle_timeout)
                    self._idle -= 1
                    if not self._ready and not self._lead_wanted and (not woken or self._stopping):
                        break
                    continue
                else:
                    lane = self._ready.popleft()
                    call = lane._calls.popleft()
                    lane._running = True
                    self._busy += 1
                    ran_here = False
                self._work.release()
                _running_here.lane = lane
                try:
                    self._call(call)
                finally:
                    del call  # not held while waiting for the next: it may hold a large message
                    _running_here.lane = None
                    self._work.acquire()
                    self._busy -= 1
                    lane._running = False
                    pending = len(lane._calls)
                    back_to_the_loop = ran_here and self._vacant_by == threading.get_ident()
                    start = False
                    if ran_here:
                        _running_here.pool = None
                    if back_to_the_loop:  # back before the watchdog gave the loop away: lead it again
                        self._vacant_since = self._vacant_by = None
                        self._lead_wanted = True
                    if pending and back_to_the_loop:
                        start = self._make_ready(lane)  # for another worker: this one leads
                    elif pending:
                        self._ready.append(lane)  # behind the lanes that waited meanwhile
                    else:
                        lane._idle.set()
                    room = lane._on_room if pending == lane.limit - 1 else None
                if start:
                    self._work.release()
                    try:
                        self._start_worker()
                    finally:
                        self._work.acquire()
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

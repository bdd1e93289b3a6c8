"""Callers that read their own replies: :class:`CallerLeading`, part of :class:`~syncws.reactor.handler_pool.HandlerPool`.

A thread that sends a request and waits for the reply is woken by the loop
thread once the reply is in: a switch from one thread to another on the
path of every reply. On a virtual machine with an idle second core that
wake-up costs more than all the Python a reply runs through (a lock
released to a thread on another core: about 13 µs for the thread that
releases it, and as long again before the woken one runs;
docs/benchmarks.md). A caller that asks again and again may instead lead
the I/O loop itself while it waits, and read its own reply:

* **Eager.** A caller is eager when it comes back within ``TAKEOVER`` of
  the end of its previous wait: a worker asking a peer in a loop, not a
  script asking once in a while. And it must be alone: while other callers
  wait on the same pool, the loop stays with the workers, which wake each
  caller as its reply comes (a caller that led would leave the others'
  replies unread between two of its own requests).
* **The loop kept for it.** When the loop thread takes the reply of an
  eager caller, it leaves the loop once its pass ends and keeps the loop
  vacant for that caller, as a worker that leaves it to run a handler call
  keeps it for itself (see :mod:`syncws.reactor.handler_pool`): the
  watchdog gives the loop to a worker when the caller is not back within
  ``TAKEOVER``. The time other connections may wait is the bound the pool
  already has.
* **Leading.** A caller that finds the loop kept for it leads it until its
  call is finished or its deadline passes, and then leaves it kept for
  itself again. Replies to other callers that come meanwhile wake them as
  the loop thread always does; handler calls go to workers (a caller never
  runs a handler). ``progress=`` functions of other calls run on it, as
  they run on whichever thread leads.

Who never leads: the main thread (a KeyboardInterrupt must not land in the
middle of the loop's work), a thread running a handler call, the loop
thread itself. So a caller that asks once in a while changes nothing, and
one that asks back to back reads its replies itself from its third call on.

Threads: every public method of :class:`CallerLeading` runs on the
caller's thread; the hook that :meth:`CallerLeading.begin_wait` returns
runs on whichever thread finishes the call. The state is the pool's, under
its lock.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .loop import IOLoop

__all__ = ["CallerLeading"]


class _Caller(threading.local):
    #: When this thread's last wait for a reply ended (``time.monotonic()``); None: it never waited.
    ended: Optional[float] = None
    #: The pool this thread last asked through, and its hook for this thread (made once, not per call).
    pool: Optional[CallerLeading] = None
    hook: Optional[Callable[[], None]] = None


_caller = _Caller()


def _nothing() -> None:
    """Posted to the loop to wake a caller that leads it: it looks at its call after the pass."""


class CallerLeading:
    """The part of a HandlerPool that lets callers lead its loop while they wait (see the module docstring).

    ``_caller_leads`` (a caller leads the loop now) and ``_vacate_for`` (the
    loop thread leaves the loop for this caller's thread when its pass ends)
    are guarded by the pool's ``_lock``, with the vacancy they lead to.
    ``_callers`` holds one item per thread between :meth:`begin_wait` and
    :meth:`end_wait`: a counter without a lock (``list.append`` and
    ``list.pop`` are atomic in CPython), since every request passes it and
    many callers at once would queue on the pool's lock for it. It is read
    without the lock too: it decides nothing that must be exact.
    """

    _lock: threading.Lock
    _watch: threading.Condition
    _watch_parked: bool
    _loop: Optional[IOLoop]
    _stopping: bool
    _vacant_since: Optional[float]
    _vacant_by: Optional[int]
    _caller_leads: bool
    _vacate_for: Optional[int]
    _callers: list[None]
    _takeover: float  # TAKEOVER: how soon a caller must come back to be eager
    _running_here: Any  # the pool module's thread-local: which lane and pool the calling thread has

    if TYPE_CHECKING:  # the pool's own

        def _give_the_lead_away(self) -> bool: ...

        def _start_worker(self) -> None: ...

        def _release_the_loop(self) -> None: ...

    def may_lead(self) -> bool:
        """Whether the calling thread may ever lead this pool's loop: not the main thread, not a thread running a handler call, not the loop thread."""
        loop = self._loop
        return not (loop is None or self._running_here.lane is not None or loop.in_loop() or threading.current_thread() is threading.main_thread())

    def begin_wait(self) -> Optional[Callable[[], None]]:
        """A thread that :meth:`may_lead` is about to send a request and wait: what its call's future runs when it finishes, or None.

        Call it before the request goes out (the reply may come at once), and
        :meth:`end_wait` once the wait is over, whatever happened. None when
        this thread does not lead this time (it is not eager, or others wait
        too). The hook is quick, never raises, and runs on whichever thread
        finishes the call.
        """
        # release_the_loop() from this thread (a send that waits for room) gives a loop kept for it away.
        self._running_here.pool = self
        alone = not self._callers
        self._callers.append(None)
        ended = _caller.ended
        if not alone or ended is None or time.monotonic() - ended >= self._takeover:
            return None
        if _caller.pool is not self:
            _caller.pool, _caller.hook = self, functools.partial(self._caller_call_finished, threading.get_ident())
        return _caller.hook

    def kept_for_me(self) -> bool:
        """Whether the loop is kept for the calling thread now (it leads it while it waits)."""
        return self._vacant_by == threading.get_ident()

    def lead_while_waiting(self, until: Callable[[], bool], deadline: Optional[float]) -> None:
        """Lead the loop until ``until()`` or the ``time.monotonic()`` moment ``deadline`` if it is kept for the calling thread; else return at once."""
        loop = self._loop
        me = threading.get_ident()
        with self._lock:
            if loop is None or self._vacant_by != me or self._stopping:
                return
            lead = len(self._callers) == 1
            if lead:
                self._vacant_since = self._vacant_by = None
                self._caller_leads = True
            else:  # no longer alone: the workers read everybody's replies
                start = self._give_the_lead_away()
        if not lead:
            if start:
                self._start_worker()
            return
        led = stopped = False
        try:
            stopped = not loop.lead(until, deadline)
            led = True
        finally:
            with self._lock:
                self._caller_leads = False
                start = False
                if stopped or self._stopping:
                    pass  # the loop closes: nobody leads it any more
                elif led and len(self._callers) == 1:
                    # Kept for this thread again: its next request leads at once, or the watchdog
                    # gives the loop to a worker if it is not back within TAKEOVER.
                    self._vacant_since, self._vacant_by = time.monotonic(), me
                    if self._watch_parked:
                        self._watch.notify()
                else:  # others wait too, or lead() raised (a BaseException out of a callback)
                    start = self._give_the_lead_away()
            if start:
                self._start_worker()

    def give_back(self) -> None:
        """The calling thread waits for more of the loop's work (a reply's parts): a loop kept for it goes to a worker now."""
        self._release_the_loop()

    def end_wait(self) -> None:
        """The calling thread's wait for a reply ended, however it ended (after :meth:`begin_wait`): its eagerness is measured from now."""
        self._callers.pop()
        _caller.ended = time.monotonic()

    def _caller_call_finished(self, ident: int) -> None:
        """The call an eager thread ``ident`` waits for is finished (any thread; the hook of :meth:`begin_wait`)."""
        if len(self._callers) != 1 and not self._caller_leads:
            return  # other callers wait too: nobody leads, nothing is kept
        loop = self._loop
        assert loop is not None
        if loop.in_loop():
            with self._lock:
                # A caller that leads sees its own call done after the pass; another caller's is
                # woken by the future. A worker that leads keeps the loop for an eager caller alone.
                if self._caller_leads or self._stopping:
                    return
                self._vacate_for = ident
            loop.hand_off_after_pass()
            return
        with self._lock:
            leads = self._caller_leads
        if leads:
            loop.call_soon(_nothing)  # finished elsewhere (a cancel, a stop): the leading caller looks again

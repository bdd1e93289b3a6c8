"""The result of one call, delivered by one thread to another: :class:`CallFuture`.

The shape of CPython's ``concurrent.futures.Future``, cut down to what a
call needs: one state (pending or finished), a result or an exception, and
a bare lock that the waiter blocks on until the outcome is in. The
connection's thread (or whichever thread sees the connection close)
finishes it; the caller blocks in :meth:`CallFuture.result`.
"""

from __future__ import annotations

import enum
import threading
from typing import Any, Callable, Generic, Optional, TypeVar

from ..exceptions import RequestTimeout

__all__ = ["CallFuture", "State"]

T = TypeVar("T")


class State(enum.Enum):
    """Where a future is: waiting for its outcome, or holding it."""

    PENDING = "pending"
    FINISHED = "finished"


_PENDING, _FINISHED = State.PENDING, State.FINISHED


class CallFuture(Generic[T]):
    """The outcome of call ``call_id`` (command ``cmd``): a result or an exception, set once.

    Unlike ``concurrent.futures.Future``, a second :meth:`set_result` or
    :meth:`set_exception` is ignored (it returns False) rather than raising:
    the reader thread, a thread that sees the connection close and the
    server's stop race to finish the same call, and whichever comes first
    decides it; the others are expected, not a bug.
    """

    __slots__ = ("_done", "_exception", "_lock", "_result", "_state", "call_id", "cmd", "on_finish")

    def __init__(self, call_id: int, cmd: Any) -> None:
        self.call_id = call_id
        self.cmd = cmd
        # Synchronize access to _state, _result and _exception.
        self._lock = threading.Lock()
        # Held from here until the future finishes, when _finish releases it;
        # a waiter blocks acquiring it, and passes it on by releasing it again,
        # so that every waiter wakes. A bare lock rather than a Condition: no
        # waiter list and no lock of its own per wait, on the path of every call.
        self._done = threading.Lock()
        self._done.acquire()
        self._state = _PENDING
        self._result: Optional[T] = None
        self._exception: Optional[BaseException] = None
        #: Run by the thread that finishes the future, once it is finished (set before that can
        #: happen): quick, never raising. A caller that may read its own reply sets it
        #: (syncws.reactor.caller_lead).
        self.on_finish: Optional[Callable[[], None]] = None

    @property
    def state(self) -> State:
        """PENDING or FINISHED."""
        with self._lock:
            return self._state

    def done(self) -> bool:
        """True once a result or an exception is set. Safe from any thread."""
        with self._lock:
            return self._state is _FINISHED

    def set_result(self, result: T) -> bool:
        """Finish with ``result`` and wake the waiter; False (and nothing changes) if already finished. Any thread."""
        return self._finish(result, None)

    def set_exception(self, exception: BaseException) -> bool:
        """Finish with ``exception`` (raised by :meth:`result`); False if already finished. Any thread."""
        return self._finish(None, exception)

    def _finish(self, result: Optional[T], exception: Optional[BaseException]) -> bool:
        with self._lock:
            if self._state is _FINISHED:
                return False
            self._result, self._exception = result, exception
            self._state = _FINISHED
        self._done.release()  # wakes the waiter, which passes it on to the next
        if self.on_finish is not None:
            self.on_finish()
        return True

    def result(self, timeout: Optional[float] = None) -> T:
        """Block until finished; return the result or raise the exception. Safe from any thread.

        ``timeout`` is in seconds, None to wait forever (checked by the
        caller: see :func:`syncws.timeouts.check_timeout`). Raises
        RequestTimeout when it runs out first; the future stays pending.
        """
        if self._done.acquire(True, -1 if timeout is None else timeout):
            self._done.release()  # for the next waiter, and for every later call
        with self._lock:
            if self._state is _PENDING:
                raise RequestTimeout(self.call_id, self.cmd, timeout)
            return self._get_result()

    def _get_result(self) -> T:
        """The result, or raise the exception. This method requires holding _lock."""
        assert self._lock.locked()
        if self._exception is not None:
            raise self._exception
        return self._result  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"<CallFuture callId={self.call_id} cmd={self.cmd!r} {self._state.value}>"

"""Two ways of talking to Redis that redis-py does not give: reads bounded by a caller's deadline, and a PUBLISH that says whether it went out.

:class:`BoundedReads` runs a Redis read for a caller that has a deadline (a
``doRequest`` with a timeout choosing its peer): on a few helper threads
(``syncws-cluster-read``), while the caller waits no longer than its
deadline. A Redis that stalls (``SIGSTOP``, ``CLIENT PAUSE``, a full network
buffer) accepts TCP connections and then answers nothing, so neither the
socket timeout nor the connect timeout is the caller's; a helper thread that
is still stuck frees itself at the socket timeout, and its late answer is
dropped.

:func:`publish` sends one PUBLISH on a connection of its own choosing and
tells the two failures apart, which is what keeps a cluster send at most
once: ClusterError when Redis was not reached (nothing went out: the caller
may deliver some other way), :class:`SendUnconfirmed` when the command was
written but no answer came (Redis may still deliver it, late: the caller
must not deliver it again). It never retries: a retried PUBLISH whose first
copy Redis did take would be delivered twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable, Generic, Optional, TypeVar

from ..exceptions import ClusterError, SendUnconfirmed

__all__ = ["BoundedReads", "DeadlinePassed", "publish", "SendUnconfirmed"]

logger = logging.getLogger("syncws.cluster.cluster")  # the cluster's records: one logger to configure

T = TypeVar("T")

#: A helper thread with nothing to do for this long ends; the next read starts one again.
_IDLE = 5.0


class DeadlinePassed(Exception):
    """Redis did not answer before the caller's deadline."""


class _Read(Generic[T]):
    """One read for a waiting caller: its function, its deadline and, once run, its outcome."""

    def __init__(self, fn: Callable[[], T], deadline: float) -> None:
        self.fn = fn
        self.deadline = deadline
        self.done = threading.Event()
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None


class BoundedReads:
    """Redis reads that return, or raise DeadlinePassed, by the caller's deadline.

    Args:
        label: what log lines and thread names refer to.
        workers: at most this many helper threads at once; more reads wait
            for one (and fail at their deadline if none frees up in time).

    ``run`` is safe from any thread.
    """

    def __init__(self, label: str, workers: int = 4) -> None:
        self.label = label
        self.workers = workers
        # Reads waiting for a helper; None tells one helper to end (close()).
        self._queue: queue.SimpleQueue[Optional[_Read[Any]]] = queue.SimpleQueue()
        # Synchronize access to _threads, _idle and _ending.
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # helper threads alive
        self._idle = 0  # of them, waiting for a read
        self._ending = threading.Event()  # set by close() for the helpers started before it

    def run(self, fn: Callable[[], T], deadline: Optional[float]) -> T:
        """``fn()``'s result, or its exception; DeadlinePassed once ``deadline`` (``time.monotonic()``) passes first.

        Without a deadline, ``fn`` runs on the calling thread (bounded by the
        client's socket timeouts alone).
        """
        if deadline is None:
            return fn()
        if deadline <= time.monotonic():
            raise DeadlinePassed("the caller's timeout had passed before Redis was asked")
        read: _Read[T] = _Read(fn, deadline)
        self._queue.put(read)
        helper = None
        with self._lock:
            # One more helper when the idle ones are fewer than the reads waiting (a stalled Redis holds the busy ones).
            if len(self._threads) < self.workers and self._idle < self._queue.qsize():
                helper = threading.Thread(target=self._work, args=(self._ending,), name="syncws-cluster-read", daemon=True)
                self._threads.add(helper)
        if helper is not None:
            helper.start()
        if not read.done.wait(max(0.0, deadline - time.monotonic())):
            raise DeadlinePassed("Redis did not answer within the caller's timeout")
        if read.error is not None:
            raise read.error
        return read.result  # type: ignore[return-value]  # set with done, when no error was

    def close(self, timeout: float) -> None:
        """End the helper threads, waiting up to ``timeout`` s for them. Safe from any thread; later reads start new ones.

        An idle helper ends at once; one stuck in a read of a stalled Redis
        ends at the client's socket timeout, which may be after this returns.
        """
        with self._lock:
            helpers = list(self._threads)
            self._threads.clear()  # ending: they no longer count against ``workers``
            self._ending.set()
            self._ending = threading.Event()  # helpers started from now on are not told to end
        for _ in helpers:
            self._queue.put(None)  # wakes an idle one; a helper of a later start ignores it
        deadline = time.monotonic() + timeout
        for helper in helpers:
            helper.join(max(0.0, deadline - time.monotonic()))

    def _work(self, ending: threading.Event) -> None:
        """Run reads until idle for a while or ``ending`` is set (helper thread). A read whose caller left is not run."""
        me = threading.current_thread()
        while not ending.is_set():
            with self._lock:
                self._idle += 1
            try:
                read = self._queue.get(timeout=_IDLE)
            except queue.Empty:
                read = None
            with self._lock:  # one section: a read put meanwhile sees this helper gone and starts another
                self._idle -= 1
                if read is None and (ending.is_set() or self._queue.empty()):
                    break
            if read is None or read.deadline <= time.monotonic():
                continue  # a wake-up for a helper of an earlier start, or a read whose caller gave up
            try:
                read.result = read.fn()
            except BaseException as exc:  # handed to the caller, whatever it is
                read.error = exc
            read.done.set()
        with self._lock:
            self._threads.discard(me)


def publish(redis: Any, errors: tuple[type[BaseException], ...], channel: str, message: bytes, where: str) -> int:
    """PUBLISH ``message`` on ``channel`` once, without retries: how many subscribers Redis gave it to (the sending thread).

    Raises ClusterError when nothing went out (no connection, or Redis
    refused the command) and SendUnconfirmed when the command was written
    (or may have been, in part) but no answer came within the socket
    timeout. ``errors`` are the connection errors of redis-py; ``where``
    starts the messages (``cluster <name>: Redis at <url>``).
    """
    import redis as redis_module

    pool = redis.connection_pool
    unreached: tuple[type[BaseException], ...] = (*errors, redis_module.exceptions.RedisError)  # AUTH refused, too
    try:
        # A pooled connection that the server closed meanwhile is reconnected here, before anything is written.
        conn = pool.get_connection()
    except unreached as exc:
        raise ClusterError(f"{where} cannot be reached: {exc}") from exc
    try:
        try:
            conn.send_command("PUBLISH", channel, message, check_health=False)
        except errors as exc:
            raise SendUnconfirmed(f"{where} may have taken the send, but writing it failed ({exc}): it may still reach every node, at most once each") from exc
        try:
            answer = conn.read_response()
        except redis_module.exceptions.ResponseError as exc:
            raise ClusterError(f"{where} refused the send: {exc}") from exc
        except errors as exc:
            raise SendUnconfirmed(f"{where} took the send but did not confirm it ({exc}); it may still reach every node, at most once each") from exc
        except BaseException:
            conn.disconnect()  # its answer may still come: the connection cannot serve another command
            raise
    finally:
        pool.release(conn)
    if isinstance(answer, redis_module.exceptions.ResponseError):
        raise ClusterError(f"{where} refused the send: {answer}")
    return int(answer)

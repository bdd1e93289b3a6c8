"""The worker threads that run a server's commands: :class:`CommandPool`.

A peer's request to the server is read on the connection's thread; its
command must not run there (the connection would stop reading: no pongs,
no replies to the server's own calls, and one slow command would hold up
every other). A RequestHandler hands it to its pool: at most ``workers``
threads (``syncws-cmd-N``), started when work comes and ended after
``idle_timeout`` without any, and a queue of at most ``max_pending`` commands
waiting for one; past that, :meth:`CommandPool.submit` refuses and the
caller is answered 503 at once.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from typing import Callable

__all__ = ["CommandPool"]

logger = logging.getLogger(__name__)

_thread_numbers = itertools.count(1)


class CommandPool:
    """At most ``workers`` threads running tasks, at most ``max_pending`` tasks waiting. Safe from any thread."""

    def __init__(self, workers: int = 8, max_pending: int = 64, idle_timeout: float = 30.0) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if max_pending < 0:
            raise ValueError("max_pending must not be negative")
        self.workers = workers
        self.max_pending = max_pending
        self.idle_timeout = idle_timeout
        # Synchronize access to _queue, _threads, _idle, _running and _closed;
        # _work (on this lock) wakes an idle thread for a new task, and every
        # thread on close.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: deque[Callable[[], None]] = deque()
        self._threads = 0  # alive
        self._idle = 0  # alive and waiting for a task
        self._running = 0  # running a task
        self._closed = False

    def submit(self, task: Callable[[], None]) -> bool:
        """Run ``task()`` on a worker thread; False (and nothing runs) when the queue is full or the pool closed."""
        with self._work:
            # Up to ``workers`` running, and ``max_pending`` more waiting for one of them.
            if self._closed or len(self._queue) + self._running >= self.workers + self.max_pending:
                return False
            self._queue.append(task)
            self._work.notify()
            if len(self._queue) > self._idle and self._threads < self.workers:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"syncws-cmd-{next(_thread_numbers)}", daemon=True).start()
        return True

    @property
    def busy(self) -> int:
        """How many tasks are queued or running now."""
        with self._work:
            return len(self._queue) + self._running

    def close(self) -> None:
        """Take no more tasks and drop the queued ones; running ones finish; the threads end. Safe from any thread."""
        with self._work:
            self._closed = True
            dropped = len(self._queue)
            self._queue.clear()
            self._work.notify_all()
        if dropped:
            logger.info("%d queued commands dropped: the pool is closing", dropped)

    def _serve(self) -> None:
        """Run tasks until idle for ``idle_timeout`` or closed (a ``syncws-cmd-N`` thread)."""
        try:
            self._serve_tasks()
        finally:  # whatever ends this thread, the pool must not count it any more
            with self._work:
                self._threads -= 1

    def _serve_tasks(self) -> None:
        while True:
            with self._work:
                while not self._queue:
                    if self._closed:
                        return
                    self._idle += 1
                    notified = self._work.wait(self.idle_timeout)
                    self._idle -= 1
                    if not notified and not self._queue:
                        return
                task = self._queue.popleft()
                self._running += 1
            try:
                task()
            except BaseException:  # a task reports its own failures; this is a bug (or sys.exit()), and the thread lives on
                logger.exception("a command task failed")
            finally:
                with self._work:
                    self._running -= 1

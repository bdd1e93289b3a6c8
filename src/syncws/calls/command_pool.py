"""The worker threads that run a server's commands: :class:`CommandPool`.

A peer's request to the server is read on the connection's thread; its
command must not run there (the connection would stop reading: no pongs,
no replies to the server's own calls, and one slow command would hold up
every other). A RequestHandler hands it to its pool: at most ``workers``
threads (``syncws-cmd-N``), started when work comes and ended after
``idle_timeout`` without any, and a queue of at most ``max_pending`` commands
waiting for one; past that, :meth:`CommandPool.submit` refuses and the
caller is answered 503 at once.

Fairness: each task has an owner (the connection whose request it answers).
One owner may hold at most ``max_per_owner`` places, queued and running, so
that a peer flooding requests leaves room for the others, and the workers
take next the task of the owner that has fewest running (in turn among
equals), so that a long queue of one owner does not make another's wait
behind it. :meth:`CommandPool.drop`
removes an owner's queued tasks when its connection closes.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from typing import Callable, Optional

__all__ = ["CommandPool"]

logger = logging.getLogger(__name__)

_thread_numbers = itertools.count(1)


class CommandPool:
    """At most ``workers`` threads running tasks, at most ``max_pending`` tasks waiting. Safe from any thread.

    ``max_per_owner`` bounds the places (queued and running) one owner's tasks
    may hold; None: half of ``workers + max_pending``, but at least
    ``workers + 1``, so that one owner alone can always keep every worker
    busy with one more task waiting.
    """

    def __init__(self, workers: int = 8, max_pending: int = 64, idle_timeout: float = 30.0, max_per_owner: Optional[int] = None) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if max_pending < 0:
            raise ValueError("max_pending must not be negative")
        if max_per_owner is not None and max_per_owner < 1:
            raise ValueError("max_per_owner must be at least 1")
        self.workers = workers
        self.max_pending = max_pending
        self.max_per_owner = max_per_owner if max_per_owner is not None else max((workers + max_pending) // 2, workers + 1)
        self.idle_timeout = idle_timeout
        # Synchronize access to _queues, _queued, _held, _running_by_owner, _served,
        # _turns, _threads, _idle, _running and _closed; _work (on this lock) wakes an idle thread for a new task,
        # and every thread on close.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        # The queued tasks by owner (an owner without any is not in it).
        self._queues: dict[object, deque[_Task]] = {}
        self._queued = 0  # tasks in _queues
        self._held: dict[object, int] = {}  # places (queued and running) by owner
        self._running_by_owner: dict[object, int] = {}  # tasks running now by owner
        self._served: dict[object, int] = {}  # when each owner holding places last had a task taken (a turn number)
        self._turns = itertools.count()
        self._threads = 0  # alive
        self._idle = 0  # alive and waiting for a task
        self._running = 0  # running a task
        self._closed = False

    def submit(self, task: Callable[[], None], owner: object = None) -> Optional[str]:
        """Run ``task()`` on a worker thread for ``owner``; None when taken, else why not (and nothing runs).

        Refused when the pool is closed, full (``workers + max_pending``
        places), or ``owner`` holds ``max_per_owner`` places already (an
        owner of None has no limit of its own).
        """
        with self._work:
            if self._closed:
                return "the server is stopping"
            if self._queued + self._running >= self.workers + self.max_pending:
                return f"{self.max_pending} commands are waiting already"
            held = self._held.get(owner, 0)
            if owner is not None and held >= self.max_per_owner:
                return f"this connection has {held} commands queued or running, its most"
            self._held[owner] = held + 1
            queue = self._queues.get(owner)
            if queue is None:
                queue = self._queues[owner] = deque()
            queue.append(_Task(task, owner))
            self._queued += 1
            self._work.notify()
            if self._queued > self._idle and self._threads < self.workers:
                self._threads += 1
                threading.Thread(target=self._serve, name=f"syncws-cmd-{next(_thread_numbers)}", daemon=True).start()
        return None

    @property
    def busy(self) -> int:
        """How many tasks are queued or running now."""
        with self._work:
            return self._queued + self._running

    def threads(self) -> dict[str, int]:
        """The pool's threads now: ``busy`` (running a command), ``idle`` (waiting for one) and the commands ``queued``. Any thread."""
        with self._work:
            return {"busy": self._running, "idle": self._threads - self._running, "queued": self._queued}

    def drop(self, owner: object) -> int:
        """Remove ``owner``'s queued tasks (its connection closed): they never run. Returns how many. Any thread."""
        with self._work:
            queue = self._queues.pop(owner, None)
            if not queue:
                return 0
            self._queued -= len(queue)
            self._release(owner, len(queue))
        logger.debug("%d queued commands dropped: their connection closed", len(queue))
        return len(queue)

    def close(self) -> None:
        """Take no more tasks and drop the queued ones; running ones finish; the threads end. Safe from any thread."""
        with self._work:
            self._closed = True
            dropped = self._queued
            for owner, queue in self._queues.items():
                self._release(owner, len(queue))
            self._queues.clear()
            self._queued = 0
            self._work.notify_all()
        if dropped:
            logger.info("%d queued commands dropped: the pool is closing", dropped)

    def _release(self, owner: object, count: int) -> None:
        """Give back ``count`` of ``owner``'s places (under the lock)."""
        left = self._held.get(owner, 0) - count
        if left > 0:
            self._held[owner] = left
        else:
            self._held.pop(owner, None)
            self._served.pop(owner, None)  # it holds nothing: forget it, so the table stays as small as the owners that do

    def _next_task(self) -> _Task:
        """The oldest task of the owner running fewest now, and among those the one served longest ago (or never).

        Under the lock, with a task queued. An owner that has workers already
        waits while another has none, and a newcomer is served next even
        behind a long queue; the scan is over the owners with queued tasks.
        """
        owner = min(self._queues, key=lambda o: (self._running_by_owner.get(o, 0), self._served.get(o, -1)))
        queue = self._queues[owner]
        task = queue.popleft()
        self._running_by_owner[owner] = self._running_by_owner.get(owner, 0) + 1
        self._served[owner] = next(self._turns)
        if not queue:
            del self._queues[owner]
        self._queued -= 1
        return task

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
                while not self._queued:
                    if self._closed:
                        return
                    self._idle += 1
                    notified = self._work.wait(self.idle_timeout)
                    self._idle -= 1
                    if not notified and not self._queued:
                        return
                task = self._next_task()
                self._running += 1
            try:
                task.run()
            except BaseException:  # a task reports its own failures; this is a bug (or sys.exit()), and the thread lives on
                logger.exception("a command task failed")
            finally:
                with self._work:
                    self._running -= 1
                    self._release(task.owner, 1)
                    left = self._running_by_owner[task.owner] - 1
                    if left:
                        self._running_by_owner[task.owner] = left
                    else:
                        del self._running_by_owner[task.owner]
            # The task (its request, perhaps large) is not kept alive while this thread waits for the next.
            del task


class _Task:
    """A queued task and the owner it holds a place for."""

    __slots__ = ("owner", "run")

    def __init__(self, run: Callable[[], None], owner: object) -> None:
        self.run = run
        self.owner = owner

"""CommandPool of syncws.command_pool: at most ``workers`` threads, at most ``max_pending`` tasks waiting; no sockets.

Tasks block on an Event and count themselves under a lock, so that every
test sees exactly how many run at once; nothing waits by sleeping.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

from syncws.calls.command_pool import CommandPool

from ..helpers import wait_for

pytestmark = pytest.mark.timeout(30)

#: The bound on every wait for something that should happen at once.
WAIT = 10.0


class Gate:
    """Tasks that block until the gate opens, counting how many have started, run at once (and the most ever), and finished."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self._changed = threading.Condition(threading.Lock())
        self.started = 0
        self.running = 0
        self.most = 0
        self.finished = 0
        self.threads: list[threading.Thread] = []

    def task(self) -> None:
        with self._changed:
            self.started += 1
            self.running += 1
            self.most = max(self.most, self.running)
            self.threads.append(threading.current_thread())
            self._changed.notify_all()
        try:
            self.opened.wait(WAIT)
        finally:
            with self._changed:
                self.running -= 1
                self.finished += 1
                self._changed.notify_all()

    def wait_started(self, n: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.started >= n, WAIT)

    def wait_finished(self, n: int) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.finished >= n, WAIT)


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A Gate, opened after the test whatever happened, so that no task outlives it for long."""
    g = Gate()
    try:
        yield g
    finally:
        g.opened.set()


@pytest.fixture
def make_pool() -> Iterator[Callable[..., CommandPool]]:
    """Makes CommandPools and closes them all after the test."""
    made: list[CommandPool] = []

    def make(**kwargs: Any) -> CommandPool:
        pool = CommandPool(**kwargs)
        made.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in made:
            pool.close()


def pool_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """The syncws-cmd-N threads alive now that were not in ``before``."""
    return [t for t in threading.enumerate() if t not in before and t.name.startswith("syncws-cmd-")]


def join_all(threads: list[threading.Thread], timeout: float = WAIT) -> list[threading.Thread]:
    """Join ``threads`` within one deadline; the ones still alive after it."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]


def recorder(ran: list[Any], value: Any, done: Optional[threading.Event] = None) -> Callable[[], None]:
    """A task that appends ``value`` to ``ran`` (and sets ``done``)."""

    def task() -> None:
        ran.append(value)
        if done is not None:
            done.set()

    return task


def on_thread(seen: list[threading.Thread], done: threading.Event) -> Callable[[], None]:
    """A task that appends the thread it runs on to ``seen`` and sets ``done``."""

    def task() -> None:
        seen.append(threading.current_thread())
        done.set()

    return task


# ---------------------------------------------------------------------- threads


def test_tasks_run_on_threads_named_syncws_cmd_n(make_pool: Callable[..., CommandPool]) -> None:
    """A submitted task runs on a daemon thread named syncws-cmd-N, not on the submitting thread."""
    pool = make_pool(workers=2)
    seen: list[threading.Thread] = []
    done = threading.Event()
    assert pool.submit(on_thread(seen, done)) is None
    assert done.wait(WAIT)
    assert re.fullmatch(r"syncws-cmd-\d+", seen[0].name)
    assert seen[0] is not threading.current_thread() and seen[0].daemon


def test_at_most_workers_tasks_run_at_once(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """With 6 blocking tasks and workers=3, exactly 3 threads start and 3 tasks run; the others wait for a free thread."""
    pool = make_pool(workers=3, max_pending=10)
    before = set(threading.enumerate())
    assert all(pool.submit(gate.task) is None for _ in range(6))
    threads = pool_threads(before)
    assert len(threads) == 3
    assert gate.wait_started(3)
    assert gate.started == 3 and pool.busy == 6
    gate.opened.set()
    assert gate.wait_finished(6)
    assert gate.most == 3 and set(gate.threads) <= set(threads)


def test_one_worker_runs_tasks_in_the_order_submitted(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """With workers=1, queued tasks run one after the other in the order they were submitted."""
    pool = make_pool(workers=1, max_pending=10)
    ran: list[int] = []
    done = threading.Event()
    assert pool.submit(gate.task) is None
    assert gate.wait_started(1)
    for k in range(5):
        assert pool.submit(recorder(ran, k, done if k == 4 else None)) is None
    gate.opened.set()
    assert done.wait(WAIT)
    assert ran == [0, 1, 2, 3, 4]


def test_threads_end_after_idle_timeout_and_new_ones_start_for_new_work(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """Threads idle for idle_timeout end; a task submitted afterwards runs on a new syncws-cmd-N thread."""
    pool = make_pool(workers=2, idle_timeout=0.05)
    before = set(threading.enumerate())
    assert pool.submit(gate.task) is None and pool.submit(gate.task) is None
    threads = pool_threads(before)
    assert len(threads) == 2
    gate.opened.set()
    assert gate.wait_finished(2)
    assert join_all(threads) == []
    seen: list[threading.Thread] = []
    done = threading.Event()
    assert pool.submit(on_thread(seen, done)) is None
    assert done.wait(WAIT)
    assert seen[0] not in threads and seen[0].name not in {t.name for t in threads}


def test_an_idle_thread_serves_the_next_task(make_pool: Callable[..., CommandPool]) -> None:
    """Within idle_timeout, the thread that ran a task runs the next one: with workers=1 no second thread starts."""
    pool = make_pool(workers=1, idle_timeout=60)
    seen: list[threading.Thread] = []
    for _ in range(3):
        done = threading.Event()
        assert pool.submit(on_thread(seen, done)) is None
        assert done.wait(WAIT)
    assert len(seen) == 3 and seen[0] is seen[1] is seen[2]


# ---------------------------------------------------------------------- the bounded queue


def test_submit_refuses_past_workers_running_plus_max_pending(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """With workers=2 and max_pending=3, five tasks are taken (2 running, 3 waiting) and the sixth is refused and never runs."""
    pool = make_pool(workers=2, max_pending=3)
    ran: list[str] = []
    assert all(pool.submit(gate.task) is None for _ in range(5))
    assert gate.wait_started(2)
    assert pool.submit(recorder(ran, "refused")) is not None
    assert pool.busy == 5
    gate.opened.set()
    assert gate.wait_finished(5)
    assert wait_for(lambda: pool.busy == 0, WAIT)
    assert gate.started == 5 and ran == []


def test_max_pending_zero_takes_only_what_the_workers_can_run(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """With workers=1 and max_pending=0, a second task is refused while the first runs, and taken once it is done."""
    pool = make_pool(workers=1, max_pending=0)
    assert pool.submit(gate.task) is None
    assert pool.submit(gate.task) is not None
    assert gate.wait_started(1)
    assert pool.submit(gate.task) is not None
    gate.opened.set()
    assert wait_for(lambda: pool.busy == 0, WAIT)
    done = threading.Event()
    assert pool.submit(done.set) is None
    assert done.wait(WAIT)


def test_busy_counts_queued_and_running_tasks(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """busy is 0 for a new pool, queued plus running while tasks wait, and 0 again once they are done."""
    pool = make_pool(workers=1, max_pending=5)
    assert pool.busy == 0
    assert pool.submit(gate.task) is None
    assert gate.wait_started(1)
    assert pool.busy == 1
    assert pool.submit(gate.task) is None and pool.submit(gate.task) is None
    assert pool.busy == 3
    gate.opened.set()
    assert gate.wait_finished(3)
    assert wait_for(lambda: pool.busy == 0, WAIT)


# ---------------------------------------------------------------------- close


def test_close_refuses_new_tasks_drops_queued_ones_and_lets_running_ones_finish(
    make_pool: Callable[..., CommandPool], gate: Gate, caplog: pytest.LogCaptureFixture
) -> None:
    """After close(), submit returns False, the queued tasks never run (logged), the running one finishes and its thread ends."""
    caplog.set_level(logging.INFO, logger="syncws.calls.command_pool")
    pool = make_pool(workers=1, max_pending=5)
    before = set(threading.enumerate())
    ran: list[str] = []
    assert pool.submit(gate.task) is None
    assert gate.wait_started(1)
    assert pool.submit(recorder(ran, "queued 1")) is None and pool.submit(recorder(ran, "queued 2")) is None
    threads = pool_threads(before)
    pool.close()
    assert pool.submit(recorder(ran, "after close")) is not None
    assert pool.busy == 1
    assert any(r.name == "syncws.calls.command_pool" and "2 queued commands dropped" in r.getMessage() for r in caplog.records)
    gate.opened.set()
    assert gate.wait_finished(1)
    assert join_all(threads) == []
    assert ran == [] and pool.busy == 0


def test_close_ends_idle_threads_without_waiting_for_idle_timeout(make_pool: Callable[..., CommandPool]) -> None:
    """close() wakes the idle threads, which end at once even though idle_timeout is a minute."""
    pool = make_pool(workers=2, idle_timeout=60)
    before = set(threading.enumerate())
    done = threading.Event()
    assert pool.submit(done.set) is None
    threads = pool_threads(before)
    assert done.wait(WAIT) and len(threads) == 1
    pool.close()
    assert join_all(threads) == []


# ---------------------------------------------------------------------- failures


def test_a_task_that_raises_is_logged_and_its_thread_serves_the_next(make_pool: Callable[..., CommandPool], caplog: pytest.LogCaptureFixture) -> None:
    """An exception escaping a task is logged with its traceback on syncws.command_pool, and the same thread runs the next task."""
    caplog.set_level(logging.ERROR, logger="syncws.calls.command_pool")
    pool = make_pool(workers=1, idle_timeout=60)
    seen: list[threading.Thread] = []

    def fail() -> None:
        seen.append(threading.current_thread())
        raise RuntimeError("a bug in a task")

    done = threading.Event()
    assert pool.submit(fail) is None
    assert pool.submit(on_thread(seen, done)) is None
    assert done.wait(WAIT)
    assert len(seen) == 2 and seen[0] is seen[1]
    failures = [r for r in caplog.records if r.name == "syncws.calls.command_pool" and r.levelno == logging.ERROR]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert isinstance(failures[0].exc_info[1], RuntimeError)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_task_that_raises_system_exit_does_not_cost_the_pool_a_worker(make_pool: Callable[..., CommandPool]) -> None:
    """After a task raises SystemExit, the next task submitted still runs."""
    pool = make_pool(workers=1, max_pending=5, idle_timeout=60)
    assert pool.submit(lambda: sys.exit(3)) is None
    done = threading.Event()
    assert pool.submit(done.set) is None
    assert done.wait(3)


@pytest.mark.parametrize(("kwargs", "match"), [({"workers": 0}, "workers"), ({"workers": -1}, "workers"), ({"max_pending": -1}, "max_pending")])
def test_invalid_sizes_are_refused(kwargs: dict[str, int], match: str) -> None:
    """CommandPool raises ValueError for workers below 1 and a negative max_pending."""
    with pytest.raises(ValueError, match=match):
        CommandPool(**kwargs)


def test_one_owner_holds_at_most_max_per_owner_places(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """An owner's tasks past max_per_owner are refused, saying so, while another owner's still get in."""
    pool = make_pool(workers=1, max_pending=5, max_per_owner=3)
    flood, other = object(), object()
    assert all(pool.submit(gate.task, flood) is None for _ in range(3))
    refusal = pool.submit(gate.task, flood)
    assert refusal is not None and "its most" in refusal
    assert pool.submit(gate.task, other) is None
    assert pool.busy == 4


def test_the_default_share_lets_one_owner_keep_every_worker_busy(make_pool: Callable[..., CommandPool]) -> None:
    """max_per_owner defaults to half the places, but never fewer than workers + 1."""
    assert make_pool(workers=8, max_pending=64).max_per_owner == 36
    assert make_pool(workers=1, max_pending=1).max_per_owner == 2


def test_a_newcomer_runs_before_a_long_queue_of_an_owner_already_running(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """With one worker busy for owner A and A's tasks queued, B's task queued later runs next."""
    pool = make_pool(workers=1, max_pending=10)
    first, owner_a, owner_b = threading.Event(), object(), object()
    ran: list[str] = []
    done = threading.Event()

    def blocker() -> None:
        first.set()
        gate.opened.wait(WAIT)

    assert pool.submit(blocker, owner_a) is None
    assert first.wait(WAIT)
    for k in range(3):
        assert pool.submit(recorder(ran, f"a{k}"), owner_a) is None
    assert pool.submit(recorder(ran, "b", done), owner_b) is None
    gate.opened.set()
    assert done.wait(WAIT)
    assert ran[0] == "b"


def test_drop_removes_an_owners_queued_tasks(make_pool: Callable[..., CommandPool], gate: Gate) -> None:
    """drop(owner) takes its queued tasks out (they never run) and frees their places; running ones go on."""
    pool = make_pool(workers=1, max_pending=5, max_per_owner=4)
    owner = object()
    ran: list[str] = []
    assert pool.submit(gate.task, owner) is None
    assert gate.wait_started(1)
    assert pool.submit(recorder(ran, "queued 1"), owner) is None and pool.submit(recorder(ran, "queued 2"), owner) is None
    assert pool.drop(owner) == 2
    assert pool.busy == 1
    assert all(pool.submit(gate.task, owner) is None for _ in range(3))  # the places are free again
    gate.opened.set()
    assert gate.wait_finished(4)
    assert ran == []

"""The handler pool: each connection's calls in order and one at a time, a blocked handler holding only its own connection, threads only while needed."""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Iterator

import pytest

from syncws.reactor import handler_pool
from syncws.reactor.handler_pool import HandlerPool, LaneClosed, release_the_loop
from syncws.reactor.loop import IOLoop

from ..helpers import wait_for

pytestmark = pytest.mark.timeout(30)


def workers(pool: HandlerPool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(pool.name + "-")]


def test_300_connections_blocking_at_once_all_run_together_and_their_threads_leave() -> None:
    """300 lanes whose calls each block until all 300 are running: they all run at once, and the 300 threads end once idle."""
    pool = HandlerPool(max_workers=1000, idle_timeout=0.5, name="test-pool-300")
    everyone = threading.Barrier(300, timeout=20)  # passes only when 300 calls run at the same moment
    done = threading.Semaphore(0)

    def block() -> None:
        everyone.wait()
        done.release()

    try:
        lanes = [pool.lane() for _ in range(300)]
        for lane in lanes:
            lane.submit(block)
        assert all(done.acquire(timeout=20) for _ in range(300))
        assert wait_for(lambda: workers(pool) == [], timeout=10)
    finally:
        pool.stop(5)


def test_one_connections_calls_run_in_order_never_two_at_once() -> None:
    """300 calls submitted to one lane from one thread run in submission order, one at a time, with workers to spare."""
    pool = HandlerPool(max_workers=8, name="test-pool-order")
    seen: list[int] = []
    running = []
    overlap = threading.Event()
    lock = threading.Lock()

    def call(i: int) -> None:
        with lock:
            running.append(i)
            if len(running) > 1:
                overlap.set()
        seen.append(i)
        with lock:
            running.remove(i)

    try:
        lane = pool.lane(limit=1000)
        for i in range(300):
            lane.submit(lambda i=i: call(i))
        assert lane.join(10)
        assert seen == list(range(300))
        assert not overlap.is_set()
    finally:
        pool.stop(5)


def test_199_connections_are_served_while_the_200th_handler_blocks() -> None:
    """With one lane's handler blocked, 199 other lanes each run 5 calls to the end."""
    pool = HandlerPool(max_workers=200, name="test-pool-199")
    release = threading.Event()
    try:
        blocked = pool.lane()
        blocked.submit(lambda: release.wait(20))
        others = [pool.lane() for _ in range(199)]
        counts = [0] * 199

        def count(i: int) -> None:
            counts[i] += 1

        for i, lane in enumerate(others):
            for _ in range(5):
                lane.submit(lambda i=i: count(i))
        assert all(lane.join(10) for lane in others)
        assert counts == [5] * 199
        assert not blocked.join(0)  # still blocked
        release.set()
        assert blocked.join(10)
    finally:
        release.set()
        pool.stop(5)


def test_a_full_lane_says_so_and_calls_on_room_once_it_drains_below_its_limit() -> None:
    """submit returns the pending count; on_room runs once when a lane at its limit drops below it."""
    pool = HandlerPool(max_workers=4, name="test-pool-room")
    release = threading.Event()
    room = threading.Semaphore(0)
    try:
        lane = pool.lane(limit=3, on_room=room.release)
        assert lane.submit(lambda: release.wait(20)) == 1
        assert wait_for(lambda: pool.counts()["busy"] == 1)
        assert [lane.submit(lambda: None) for _ in range(3)] == [2, 3, 4]
        assert not room.acquire(timeout=0.05)
        release.set()
        assert room.acquire(timeout=10)
        assert lane.join(10)
        assert not room.acquire(timeout=0.05)  # once, not at every call below the limit
    finally:
        release.set()
        pool.stop(5)


def test_at_most_max_workers_calls_run_the_rest_wait_their_turn() -> None:
    """With max_workers=2 and three blocked lanes, the third waits ready until a worker frees, then runs."""
    pool = HandlerPool(max_workers=2, name="test-pool-cap")
    gates = [threading.Event() for _ in range(3)]
    started = [threading.Event() for _ in range(3)]

    def block(i: int) -> None:
        started[i].set()
        gates[i].wait(20)

    try:
        lanes = [pool.lane() for _ in range(3)]
        for i, lane in enumerate(lanes):
            lane.submit(lambda i=i: block(i))
        assert started[0].wait(10) and started[1].wait(10)
        assert pool.counts() == {"busy": 2, "idle": 0, "ready": 1}
        assert len(workers(pool)) == 2
        gates[0].set()
        assert started[2].wait(10)
    finally:
        for gate in gates:
            gate.set()
        pool.stop(5)


def test_a_failing_call_is_logged_and_its_lane_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """A call that raises is logged once at ERROR; the lane's next call still runs."""
    pool = HandlerPool(max_workers=2, name="test-pool-fail")
    ran = threading.Event()

    def fail() -> None:
        raise ValueError("handler bug")

    try:
        lane = pool.lane()
        with caplog.at_level(logging.ERROR, logger="syncws.reactor.handler_pool"):
            lane.submit(fail)
            lane.submit(ran.set)
            assert ran.wait(10)
        assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ValueError]
    finally:
        pool.stop(5)


def test_a_closed_lane_runs_what_it_has_and_refuses_more() -> None:
    """close() lets the queued calls run (on_close is a connection's last) and makes submit raise LaneClosed."""
    pool = HandlerPool(max_workers=2, name="test-pool-close")
    release = threading.Event()
    ran: list[str] = []
    try:
        lane = pool.lane()
        lane.submit(lambda: release.wait(20))
        lane.submit(lambda: ran.append("on_close"))
        lane.close()
        with pytest.raises(LaneClosed):
            lane.submit(lambda: ran.append("late"))
        release.set()
        assert lane.join(10)
        assert ran == ["on_close"]
    finally:
        release.set()
        pool.stop(5)


def test_stop_ends_every_worker_and_refuses_new_calls() -> None:
    """stop() returns True with no worker left, and a submit after it raises LaneClosed."""
    pool = HandlerPool(max_workers=4, idle_timeout=60, name="test-pool-stop")
    lane = pool.lane()
    for _ in range(10):
        lane.submit(lambda: None)
    assert lane.join(10)
    assert pool.stop(5)
    assert workers(pool) == []
    with pytest.raises(LaneClosed):
        lane.submit(lambda: None)


@pytest.fixture
def led_pool() -> Iterator[tuple[HandlerPool, IOLoop]]:
    """A pool that leads its own loop (leaders and followers), stopped afterwards."""
    loop = IOLoop(name="test-lf-io")
    pool = HandlerPool(max_workers=8, idle_timeout=1.0, name="test-lf-pool", loop=loop)
    yield pool, loop
    assert pool.stop(10)


def test_a_call_submitted_on_the_loop_thread_runs_on_that_thread(led_pool: tuple[HandlerPool, IOLoop]) -> None:
    """A call the loop thread submits to an idle lane runs on that same thread, after it has left the loop."""
    pool, loop = led_pool
    lane = pool.lane()
    where: queue.Queue[tuple[str, int, bool]] = queue.Queue()

    def read_a_message() -> None:
        submitter = threading.get_ident()
        lane.submit(lambda: where.put(("call", threading.get_ident(), loop.in_loop())))
        where.put(("loop", submitter, loop.in_loop()))

    loop.call_soon(read_a_message)
    first, second = where.get(timeout=10), where.get(timeout=10)
    assert first[0] == "loop" and second[0] == "call"  # the pass ends before the call starts
    assert first[1] == second[1]  # one thread: no switch on the way in
    assert first[2] is True and second[2] is False  # it ran the call as a worker, not as the loop


class _Message:
    """Stands for a large message: an object a weak reference can watch."""


def test_a_call_taken_on_the_loop_thread_is_let_go_once_it_has_run(led_pool: tuple[HandlerPool, IOLoop]) -> None:
    """Once a call taken on the loop thread has run, the pool holds nothing of it (a 16 MiB message is not kept while the connection idles)."""
    pool, loop = led_pool
    lane = pool.lane()
    ran = threading.Event()
    refs: queue.Queue[weakref.ref[_Message]] = queue.Queue()

    def read_a_message() -> None:
        message = _Message()
        refs.put(weakref.ref(message))
        lane.submit(lambda: ran.set() if message else None)

    loop.call_soon(read_a_message)
    assert ran.wait(10)
    ref = refs.get(timeout=10)
    assert wait_for(lambda: ref() is None, timeout=5)


def test_a_call_that_blocks_on_the_loop_thread_holds_up_no_other_connection(led_pool: tuple[HandlerPool, IOLoop]) -> None:
    """While a call taken on the loop thread blocks, the loop goes on under another thread: posted work and other lanes run."""
    pool, loop = led_pool
    release = threading.Event()
    blocked_on: queue.Queue[int] = queue.Queue()
    other: queue.Queue[str] = queue.Queue()

    def block() -> None:
        blocked_on.put(threading.get_ident())
        release.wait(20)

    try:
        loop.call_soon(lambda: pool.lane().submit(block))
        blocker = blocked_on.get(timeout=10)
        loop.call_soon(lambda: other.put("posted"))
        loop.call_soon(lambda: pool.lane().submit(lambda: other.put("another lane")))
        assert sorted([other.get(timeout=10), other.get(timeout=10)]) == ["another lane", "posted"]
        assert loop.leader is not None and loop.leader.ident != blocker
    finally:
        release.set()


def test_calls_taken_on_the_loop_thread_keep_their_lane_in_order_one_at_a_time(led_pool: tuple[HandlerPool, IOLoop]) -> None:
    """300 messages of one connection, read on the loop thread while some of their calls are slow: handled in order, never two at once."""
    pool, loop = led_pool
    lane = pool.lane(limit=1000)
    handled: list[int] = []
    running = 0
    most_at_once = 0
    count_lock = threading.Lock()

    def handle(n: int) -> None:
        nonlocal running, most_at_once
        with count_lock:
            running += 1
            most_at_once = max(most_at_once, running)
        if n % 30 == 0:
            threading.Event().wait(0.01)  # a slow one: longer than TAKEOVER, the loop is handed on
        handled.append(n)
        with count_lock:
            running -= 1

    for n in range(300):
        loop.call_soon(lambda n=n: lane.submit(lambda: handle(n)))
    assert wait_for(lambda: len(handled) == 300, timeout=20)
    assert lane.join(10)
    assert handled == list(range(300))
    assert most_at_once == 1


def test_stop_ends_the_leader_the_workers_and_the_watchdog() -> None:
    """stop() on a pool that leads a loop returns True with every thread it started gone and the loop closed."""
    before = set(threading.enumerate())
    loop = IOLoop(name="test-lf-stop-io")
    pool = HandlerPool(max_workers=4, idle_timeout=60, name="test-lf-stop", loop=loop)
    release = threading.Event()
    lane = pool.lane()
    loop.call_soon(lambda: lane.submit(lambda: release.wait(0.2)))  # taken on the loop thread, handed on
    for _ in range(5):
        pool.lane().submit(lambda: None)
    assert pool.stop(10)
    assert [t for t in threading.enumerate() if t not in before] == []
    assert loop.stop(0)  # closed already
    with pytest.raises(LaneClosed):
        lane.submit(lambda: None)


def test_a_call_that_releases_the_loop_has_it_led_at_once(led_pool: tuple[HandlerPool, IOLoop], monkeypatch: pytest.MonkeyPatch) -> None:
    """A call taken on the loop thread that calls release_the_loop() has another thread leading before it returns, without the watchdog."""
    pool, loop = led_pool
    checked: queue.Queue[tuple[bool, bool]] = queue.Queue()

    def ask_and_wait() -> None:
        vacant_before = loop.leader is None
        release_the_loop()
        led = wait_for(lambda: loop.leader is not None, timeout=5)
        checked.put((vacant_before, led))

    monkeypatch.setattr(handler_pool, "TAKEOVER", 60.0)  # the watchdog would take a minute
    loop.call_soon(lambda: pool.lane().submit(ask_and_wait))
    assert checked.get(timeout=10) == (True, True)

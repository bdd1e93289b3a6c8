"""The handler pool: each connection's calls in order and one at a time, a blocked handler holding only its own connection, threads only while needed."""

from __future__ import annotations

import logging
import threading

import pytest

from syncws.reactor.handler_pool import HandlerPool, LaneClosed

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

"""The reactor's I/O loop: one thread serves many sockets, runs posted calls and deadlines, and sleeps while nothing happens."""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Iterator

import pytest

from syncws.reactor.loop import IOLoop

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def loop() -> Iterator[IOLoop]:
    """A started loop, stopped afterwards."""
    started = IOLoop(name="test-io").start()
    yield started
    assert started.stop(5)


def on_loop(loop: IOLoop, call: object) -> object:
    """Run ``call()`` on the loop thread and return its result."""
    result: queue.Queue[object] = queue.Queue()
    loop.call_soon(lambda: result.put(call()))  # type: ignore[operator]
    return result.get(timeout=10)


def test_one_thread_reads_a_thousand_sockets(loop: IOLoop) -> None:
    """1,000 socket pairs registered on the loop: a byte written to each is read by its callback, all on the loop thread."""
    pairs = [socket.socketpair() for _ in range(1000)]
    got: queue.Queue[tuple[int, bytes, str]] = queue.Queue()
    try:
        for i, (ours, _) in enumerate(pairs):
            ours.setblocking(False)

            def readable(i: int = i, sock: socket.socket = ours) -> None:
                got.put((i, sock.recv(16), threading.current_thread().name))

            on_loop(loop, lambda sock=ours, cb=readable: loop.add_reader(sock, cb))
        for i, (_, theirs) in enumerate(pairs):
            theirs.send(bytes([i % 256]))
        results = sorted(got.get(timeout=10) for _ in range(1000))
        assert [(i, data) for i, data, _ in results] == [(i, bytes([i % 256])) for i in range(1000)]
        assert {name for _, _, name in results} == {"test-io"}
    finally:
        for ours, theirs in pairs:
            on_loop(loop, lambda sock=ours: loop.remove_reader(sock))
            ours.close()
            theirs.close()


def test_an_idle_loop_does_not_wake(loop: IOLoop) -> None:
    """With 100 quiet sockets registered and no deadline armed, the loop makes no pass until something happens."""
    pairs = [socket.socketpair() for _ in range(100)]
    try:
        for ours, _ in pairs:
            on_loop(loop, lambda sock=ours: loop.add_reader(sock, lambda: None))
        before = on_loop(loop, lambda: loop.passes)
        threading.Event().wait(0.5)  # a stretch of quiet: the property is that nothing happens in it
        after = on_loop(loop, lambda: loop.passes)
        assert after - before <= 2  # the two posted calls that asked
    finally:
        for ours, theirs in pairs:
            on_loop(loop, lambda sock=ours: loop.remove_reader(sock))
            ours.close()
            theirs.close()


def test_posted_calls_run_in_order_on_the_loop_thread(loop: IOLoop) -> None:
    """call_soon from 8 threads at once: every call runs, on the loop thread, each thread's in its order."""
    seen: queue.Queue[tuple[int, int, str]] = queue.Queue()

    def post(t: int) -> None:
        for n in range(200):
            loop.call_soon(lambda t=t, n=n: seen.put((t, n, threading.current_thread().name)))

    threads = [threading.Thread(target=post, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    calls = [seen.get(timeout=10) for _ in range(1600)]
    for t in range(8):
        assert [n for tt, n, _ in calls if tt == t] == list(range(200))
    assert {name for _, _, name in calls} == {"test-io"}


def test_a_deadline_wakes_the_loop_and_a_cancelled_one_does_not_run(loop: IOLoop) -> None:
    """A timer armed on the loop runs there at its time; one cancelled before its time never runs."""
    fired: queue.Queue[str] = queue.Queue()

    def arm() -> None:
        cancelled = loop.timers.call_later(0.05, lambda: fired.put("cancelled"))
        loop.timers.call_later(0.1, lambda: fired.put(threading.current_thread().name))
        loop.timers.cancel(cancelled)

    loop.call_soon(arm)
    assert fired.get(timeout=10) == "test-io"
    assert fired.empty()


def test_a_failing_callback_is_logged_and_the_loop_goes_on(loop: IOLoop, caplog: pytest.LogCaptureFixture) -> None:
    """A posted call, a reader and a timer that raise are each logged; the loop still runs what comes next."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    reader_ran = threading.Event()

    def fail() -> None:
        raise RuntimeError("callback bug")

    def failing_reader() -> None:
        ours.recv(16)
        reader_ran.set()
        raise RuntimeError("reader bug")

    try:
        with caplog.at_level(logging.ERROR, logger="syncws.reactor.loop"):
            loop.call_soon(fail)
            on_loop(loop, lambda: loop.add_reader(ours, failing_reader))
            theirs.send(b"x")
            assert reader_ran.wait(10)
            on_loop(loop, lambda: loop.timers.call_later(0, fail))  # runs in the same pass, after the posted calls
            assert on_loop(loop, lambda: "still running") == "still running"  # a full pass later: all three logged
        assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["callback bug", "reader bug", "callback bug"]
    finally:
        on_loop(loop, lambda: loop.remove_reader(ours))
        ours.close()
        theirs.close()


def test_stop_ends_the_thread_and_later_posts_are_ignored() -> None:
    """stop() returns True with the loop thread gone; call_soon after it does nothing and does not raise."""
    loop = IOLoop(name="test-io-stop").start()
    assert loop.stop(5)
    assert not [t for t in threading.enumerate() if t.name == "test-io-stop"]
    loop.call_soon(lambda: None)


def lead_in_a_thread(loop: IOLoop, name: str) -> tuple[threading.Thread, queue.Queue[bool]]:
    """A thread named ``name`` that leads ``loop`` once; what lead() returned goes to the queue."""
    returned: queue.Queue[bool] = queue.Queue()
    thread = threading.Thread(target=lambda: returned.put(loop.lead()), name=name, daemon=True)
    thread.start()
    return thread, returned


def test_lead_runs_the_loop_on_the_calling_thread_until_it_hands_off() -> None:
    """lead() makes its thread the loop thread; after a pass that called hand_off_after_pass it returns True and no thread leads."""
    loop = IOLoop(name="test-io-lead")
    seen: queue.Queue[tuple[str, bool]] = queue.Queue()

    def leave() -> None:
        seen.put((threading.current_thread().name, loop.in_loop()))
        loop.hand_off_after_pass()

    try:
        loop.call_soon(leave)
        thread, returned = lead_in_a_thread(loop, "first-leader")
        assert returned.get(timeout=10) is True
        assert seen.get(timeout=1) == ("first-leader", True)
        thread.join(5)
        assert loop.leader is None and not loop.in_loop()
    finally:
        assert loop.stop(0)  # nobody leads: stop() closes it at once


def test_calls_posted_between_two_leaders_run_first_on_the_next() -> None:
    """A call posted while no thread leads waits, then runs on the next leader before anything else."""
    loop = IOLoop(name="test-io-gap")
    ran: queue.Queue[str] = queue.Queue()
    loop.call_soon(loop.hand_off_after_pass)
    _, returned = lead_in_a_thread(loop, "leader-1")
    assert returned.get(timeout=10) is True
    loop.call_soon(lambda: ran.put(threading.current_thread().name))
    assert ran.empty()  # no leader: nothing runs it
    _, returned = lead_in_a_thread(loop, "leader-2")
    assert ran.get(timeout=10) == "leader-2"
    assert loop.stop(5)
    assert returned.get(timeout=5) is False  # stopped: lead() ends for good


def test_a_stop_between_two_leaders_closes_the_loop_and_no_thread_leads_it_again() -> None:
    """stop() while no thread leads closes the loop at once; a lead() after it returns False without running a pass."""
    loop = IOLoop(name="test-io-stop-gap")
    loop.call_soon(loop.hand_off_after_pass)
    _, returned = lead_in_a_thread(loop, "leader-1")
    assert returned.get(timeout=10) is True
    passes = loop.passes
    assert loop.stop(0)
    _, returned = lead_in_a_thread(loop, "leader-2")
    assert returned.get(timeout=10) is False
    assert loop.passes == passes and loop.leader is None
    loop.call_soon(lambda: None)  # ignored, no error

"""The reactor's timer heap: deadlines run in order, cancelled ones never, and cancelling many costs no memory."""

from __future__ import annotations

import pytest

from syncws.reactor.timers import Timers

pytestmark = pytest.mark.timeout(10)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_due_timers_run_earliest_first_and_ties_in_arming_order() -> None:
    """run_due runs the due timers by deadline, ties in the order armed, and leaves the later ones."""
    clock = Clock()
    timers = Timers(clock)
    ran: list[str] = []
    timers.call_at(102, lambda: ran.append("b"))
    timers.call_at(101, lambda: ran.append("a1"))
    timers.call_at(101, lambda: ran.append("a2"))
    timers.call_at(105, lambda: ran.append("late"))
    clock.now = 102
    assert timers.run_due() == 3
    assert ran == ["a1", "a2", "b"]
    assert len(timers) == 1


def test_next_delay_says_how_long_to_wait() -> None:
    """next_delay is the time to the earliest live timer, 0 once due, capped, and None with nothing armed and no cap."""
    clock = Clock()
    timers = Timers(clock)
    assert timers.next_delay() is None
    assert timers.next_delay(cap=7.0) == 7.0
    first = timers.call_later(2.0, lambda: None)
    timers.call_later(5.0, lambda: None)
    assert timers.next_delay() == 2.0
    assert timers.next_delay(cap=1.0) == 1.0
    timers.cancel(first)
    assert timers.next_delay() == 5.0
    clock.now += 9
    assert timers.next_delay() == 0.0


def test_a_cancelled_timer_never_runs_and_cancel_is_idempotent() -> None:
    """A cancelled timer does not run; cancelling it again, or cancelling one that ran, or None, does nothing."""
    clock = Clock()
    timers = Timers(clock)
    ran: list[int] = []
    cancelled = timers.call_later(1, lambda: ran.append(1))
    done = timers.call_later(1, lambda: ran.append(2))
    timers.cancel(cancelled)
    timers.cancel(cancelled)
    clock.now += 1
    timers.run_due()
    timers.cancel(done)
    timers.cancel(None)
    assert ran == [2]
    assert len(timers) == 0


def test_a_timer_armed_by_a_callback_for_now_runs_in_the_same_pass() -> None:
    """A callback that arms a timer already due sees it run before run_due returns."""
    clock = Clock()
    timers = Timers(clock)
    ran: list[str] = []
    timers.call_later(0, lambda: (ran.append("first"), timers.call_later(0, lambda: ran.append("second"))))
    assert timers.run_due() == 2
    assert ran == ["first", "second"]


def test_rearming_a_keepalive_on_every_message_keeps_the_heap_small() -> None:
    """100,000 re-arms (cancel and arm again) of one connection's deadline leave the heap near its one live timer."""
    timers = Timers(Clock())
    timer = timers.call_later(30, lambda: None)
    for _ in range(100_000):
        timers.cancel(timer)
        timer = timers.call_later(30, lambda: None)
    assert len(timers) == 1
    assert len(timers._heap) <= 200


def test_an_exception_in_a_callback_propagates_and_the_timer_counts_as_run() -> None:
    """A failing callback's exception reaches the owner; the timer is not run again, the others still are."""
    clock = Clock()
    timers = Timers(clock)
    ran: list[int] = []

    def fail() -> None:
        raise RuntimeError("deadline handler failed")

    timers.call_later(1, fail)
    timers.call_later(2, lambda: ran.append(2))
    clock.now += 3
    with pytest.raises(RuntimeError):
        timers.run_due()
    assert timers.run_due() == 1
    assert ran == [2]

"""CallFuture of syncws.future: one state, a result or an exception, a timeout; no sockets."""

from __future__ import annotations

import threading

import pytest

from syncws.calls.future import CallFuture, State
from syncws.exceptions import RequestTimeout


def test_result_returns_what_set_result_set() -> None:
    """result() returns the value set_result gave, and the future is done and FINISHED."""
    future: CallFuture[dict[str, int]] = CallFuture(1, "q")
    assert future.state is State.PENDING and not future.done()
    assert future.set_result({"data": 5})
    assert future.done() and future.state is State.FINISHED
    assert future.result(timeout=0) == {"data": 5}


def test_result_raises_what_set_exception_set() -> None:
    """result() raises the exception set_exception gave, every time it is asked."""
    future: CallFuture[object] = CallFuture(1, "q")
    error = ConnectionError("gone")
    assert future.set_exception(error)
    for _ in range(2):
        with pytest.raises(ConnectionError) as raised:
            future.result(timeout=None)
        assert raised.value is error


def test_a_second_set_is_ignored_and_returns_false() -> None:
    """Once finished, set_result and set_exception change nothing and return False: the first outcome wins."""
    future: CallFuture[str] = CallFuture(1, "q")
    assert future.set_result("first")
    assert not future.set_result("second")
    assert not future.set_exception(RuntimeError("late"))
    assert future.result(timeout=0) == "first"
    failed: CallFuture[str] = CallFuture(2, "q")
    assert failed.set_exception(KeyError("first"))
    assert not failed.set_result("late")
    with pytest.raises(KeyError):
        failed.result(timeout=0)


@pytest.mark.parametrize("timeout", [0, 0.05])
def test_result_raises_request_timeout_on_expiry_and_stays_pending(timeout: float) -> None:
    """result(timeout) raises RequestTimeout with the call's callId, cmd and timeout; the future can still finish."""
    future: CallFuture[str] = CallFuture(7, "getFile")
    with pytest.raises(RequestTimeout) as raised:
        future.result(timeout=timeout)
    assert (raised.value.call_id, raised.value.cmd, raised.value.timeout) == (7, "getFile", timeout)
    assert future.state is State.PENDING
    assert future.set_result("late but there")
    assert future.result(timeout=0) == "late but there"


def test_result_wakes_when_another_thread_sets_the_result() -> None:
    """A thread blocked in result(None) returns as soon as another thread calls set_result."""
    future: CallFuture[str] = CallFuture(1, "q")
    waiting = threading.Event()
    got: list[str] = []

    def wait() -> None:
        waiting.set()
        got.append(future.result(timeout=None))

    thread = threading.Thread(target=wait, name="test-future-waiter", daemon=True)
    thread.start()
    waiting.wait(5)
    future.set_result("done")
    thread.join(5)
    assert not thread.is_alive() and got == ["done"]


def test_racing_setters_finish_the_future_exactly_once() -> None:
    """Of many threads racing to set a result or an exception, exactly one succeeds and its outcome is the one seen."""
    future: CallFuture[int] = CallFuture(1, "q")
    start = threading.Event()
    wins: list[int] = []
    lock = threading.Lock()

    def race(k: int) -> None:
        start.wait(5)
        won = future.set_result(k) if k % 2 else future.set_exception(ValueError(k))
        if won:
            with lock:
                wins.append(k)

    threads = [threading.Thread(target=race, args=(k,), name=f"test-future-{k}", daemon=True) for k in range(16)]
    for thread in threads:
        thread.start()
    start.set()
    for thread in threads:
        thread.join(5)
    assert len(wins) == 1
    if wins[0] % 2:
        assert future.result(timeout=0) == wins[0]
    else:
        with pytest.raises(ValueError):
            future.result(timeout=0)


def test_repr_names_the_call_and_its_state() -> None:
    """repr shows the callId, the cmd and the state."""
    assert repr(CallFuture(3, "echo")) == "<CallFuture callId=3 cmd='echo' pending>"

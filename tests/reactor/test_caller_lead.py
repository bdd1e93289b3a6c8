"""Callers that read their own replies (syncws.reactor.caller_lead), against real peers on 127.0.0.1.

A RemoteService in this process answers ``who`` with the name of the thread
that leads the server's I/O loop while the caller waits: the caller's own
name once it leads. Callers run on threads of their own (the main thread
never leads), and every wait is bounded.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional

import pytest
import websocket

import syncws

from ..helpers import syncws_threads, wait_for
from ..peers import Env

pytestmark = pytest.mark.timeout(60)


def leader_name(env: Env) -> Optional[str]:
    """The name of the thread that leads the server's I/O loop now (None: no thread does)."""
    leader = env.server._loop.leader if env.server._loop is not None else None
    return leader.name if leader is not None else None


def who_leads(env: Env) -> Optional[str]:
    """The peer's answer to ``who``: the thread leading the server's loop once one does (a caller takes it just after its send)."""
    wait_for(lambda: leader_name(env) is not None, timeout=2)
    return leader_name(env)


def on_thread(fn: Callable[[], Any], name: str = "asker") -> Any:
    """Run ``fn`` on a thread named ``name`` and return what it returned (or raise what it raised), within 30 s."""
    box: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            box.put(("ok", fn()))
        except BaseException as exc:  # handed to the test thread
            box.put(("err", exc))

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    kind, value = box.get(timeout=30)
    thread.join(5)
    if kind == "err":
        raise value
    return value


def ask_who(env: Env, times: int, pause: float = 0.0) -> list[Optional[str]]:
    """``times`` requests back to back (or ``pause`` seconds apart): who led the loop during each."""
    names = []
    gap = threading.Event()
    for i in range(times):
        names.append(env.rh.doRequest({"cmd": "who", "i": i}, timeout=10)["data"])
        gap.wait(pause)  # the caller's own work between requests
    return names


def test_a_caller_asking_back_to_back_leads_the_loop_itself(env: Env) -> None:
    """A caller that asks back to back leads the I/O loop itself while it waits for most of its replies, never for its first."""
    env.service({"who": lambda m: who_leads(env)})
    names = on_thread(lambda: ask_who(env, 20))
    # From its third request on, but not each time: a caller kept from the GIL past the 2 ms takeover
    # (other threads of this process) finds a worker leading, and leads again two requests later.
    assert names[0] == "syncws-io", names
    assert names.count("asker") >= 10, names


def test_a_caller_that_asks_once_in_a_while_never_leads(env: Env) -> None:
    """A caller with pauses between its requests longer than the takeover never leads the loop."""
    env.service({"who": lambda m: who_leads(env)})
    names = on_thread(lambda: ask_who(env, 6, pause=0.02))
    assert "asker" not in names, names


def test_the_main_thread_never_leads(env: Env) -> None:
    """Requests back to back from the main thread are read by the loop's workers, never by the main thread."""
    env.service({"who": lambda m: who_leads(env)})
    names = ask_who(env, 20)
    assert threading.main_thread().name not in names, names


class Held:
    """``who``, whose reply is held back until released once the caller leads the loop while waiting for it (``hang``)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.led = threading.Event()  # a caller leads the loop, waiting for a held reply
        self.release = threading.Event()
        env.add_cleanup(self.release.set)

    def __call__(self, message: dict) -> Optional[str]:
        if not message.get("hang"):
            return who_leads(self.env)
        # A caller kept from the GIL past the takeover may not lead this time: it is told so, and asks again.
        if not wait_for(lambda: leader_name(self.env) == "asker", timeout=0.25):
            return "not led"
        self.led.set()
        self.release.wait(20)
        return "held"


def ask_until_held(env: Env, **options: Any) -> dict:
    """Requests back to back, then one the peer holds: again, until the caller leads the loop while it waits for that one (20 tries)."""
    for _ in range(20):
        ask_who(env, 3)
        reply = env.rh.doRequest({"cmd": "who", "hang": True}, **options)
        if reply["data"] == "held":
            return reply
    raise AssertionError("the caller never led the loop")


def test_other_connections_are_served_by_workers_while_a_caller_leads(env: Env) -> None:
    """While a caller leads the loop, another connection's handler runs on a worker and is answered."""
    handled_on: queue.Queue = queue.Queue()

    class Echo(syncws.BaseWebSocketHandler):
        def on_message(self, message: Any) -> None:
            handled_on.put(threading.current_thread().name)
            self.write_message(message)

    env.server.add_handler("/echo", Echo, name="echo")
    held = Held(env)
    env.service({"who": held})
    ws = websocket.create_connection(env.server.url + "/echo", timeout=10)
    env.add_cleanup(ws.close)
    thread = threading.Thread(target=lambda: ask_until_held(env, timeout=20), name="asker", daemon=True)
    thread.start()
    assert held.led.wait(20)
    ws.send("hello")
    assert ws.recv() == "hello"
    assert handled_on.get(timeout=5).startswith("syncws-")
    assert leader_name(env) == "asker"
    held.release.set()
    thread.join(10)
    assert not thread.is_alive()


def test_a_leading_caller_times_out_and_asks_again(env: Env) -> None:
    """A caller that leads the loop gets RequestTimeout at its timeout, and its next request is answered."""
    held = Held(env)
    env.service({"who": held})

    def run() -> tuple[float, Optional[str]]:
        for _ in range(20):
            ask_who(env, 3)
            begun = time.monotonic()
            try:
                env.rh.doRequest({"cmd": "who", "hang": True}, timeout=1.0)
            except syncws.RequestTimeout:
                waited = time.monotonic() - begun
                return waited, env.rh.doRequest({"cmd": "who"}, timeout=10)["data"]
        raise AssertionError("the caller never led the loop")

    waited, after = on_thread(run)
    assert held.led.is_set()
    assert 0.99 <= waited < 5
    assert after is not None


def test_a_leading_caller_is_cancelled_from_another_thread(env: Env) -> None:
    """cancel() from another thread ends the wait of a caller that leads the loop at once with RequestCancelled."""
    held = Held(env)
    env.service({"who": held})
    token = syncws.CancelToken()
    box: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            ask_until_held(env, timeout=20, cancel=token)
            box.put("answered")
        except syncws.RequestCancelled:
            box.put("cancelled")

    threading.Thread(target=run, name="asker", daemon=True).start()
    assert held.led.wait(20)
    token.cancel()
    assert box.get(timeout=10) == "cancelled"


def test_stop_while_a_caller_leads_ends_its_wait_and_every_thread(env: Env) -> None:
    """stop() while a caller leads the loop fails that call with ConnectionClosed and leaves no syncws thread."""
    held = Held(env)
    svc = env.service({"who": held})
    box: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            ask_until_held(env, timeout=20)
            box.put("answered")
        except syncws.ConnectionClosed:
            box.put("closed")
        except Exception as exc:  # reported to the test thread
            box.put(repr(exc))

    threading.Thread(target=run, name="asker", daemon=True).start()
    assert held.led.wait(20)
    env.server.stop()
    assert box.get(timeout=10) == "closed"
    held.release.set()
    svc.stop()
    assert wait_for(lambda: not syncws_threads(), timeout=10), syncws_threads()


def test_a_loop_kept_for_a_caller_that_does_not_come_back_goes_to_a_worker(env: Env) -> None:
    """After a caller's last request the loop kept for it goes to a worker: another connection is answered."""
    env.service({"who": lambda m: who_leads(env)})
    names = on_thread(lambda: ask_who(env, 5))
    assert names[-1] == "asker"
    assert wait_for(lambda: leader_name(env) not in (None, "asker"), timeout=5), leader_name(env)


def test_binary_replies_in_parts_reach_a_leading_caller(env: Env) -> None:
    """A caller that leads the loop gets a bytes reply in many parts whole, with its progress reported."""
    env.service({"who": lambda m: who_leads(env), "blob": lambda m: bytes(range(256)) * 40}, part_size=1000)
    seen: list[tuple[int, int]] = []

    def run() -> Any:
        ask_who(env, 3)
        return env.rh.doRequest({"cmd": "blob"}, timeout=10, progress=lambda got, total: seen.append((got, total)))

    reply = on_thread(run)
    assert reply["data"] == bytes(range(256)) * 40
    assert seen and seen[-1] == (10_240, 10_240)


def test_many_callers_back_to_back_all_get_their_own_replies(env: Env) -> None:
    """Four threads asking back to back, one of them leading at a time, each get the replies to their own requests."""
    env.service({"echo": lambda m: m["x"]})
    errors: queue.Queue = queue.Queue()

    def caller(k: int) -> None:
        try:
            for i in range(100):
                x = k * 1000 + i
                if env.rh.doRequest({"cmd": "echo", "x": x}, timeout=10)["data"] != x:
                    errors.put(f"caller {k}: wrong reply to {x}")
        except Exception as exc:  # reported to the test thread
            errors.put(repr(exc))

    threads = [threading.Thread(target=caller, args=(k,), name=f"asker-{k}", daemon=True) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert errors.empty(), errors.get()

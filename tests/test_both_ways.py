"""Requests both ways over one connection: peers call the server's commands (RequestHandler.register,
RemoteService.request), with doRequest's guarantees, cancellation and current_call().

Real servers on 127.0.0.1, port 0; RemoteService in-process or in tests/peer_process.py; raw
connections (FakePeer) for what a well-behaved peer never sends.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import threading
from typing import Any

import pytest

import syncws
from syncws.exceptions import ConnectionClosed, NotConnected, RequestError, RequestTimeout

from .helpers import wait_for
from .peer_process import det_bytes, register_mixed, run_mixed
from .peers import NAME, Env, in_thread

pytestmark = pytest.mark.timeout(60)


def library_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records at WARNING or above from syncws."""
    return [r for r in caplog.records if r.name.startswith("syncws") and r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------- the peer calls the server


def test_peer_request_returns_the_server_commands_json(env: Env) -> None:
    """RemoteService.request returns the reply of a command registered with @handler.command: cmd, callId, status 200, data."""

    @env.rh.command("getSettings")
    def get_settings(request: dict, conn: syncws.BaseWebSocketHandler) -> dict:
        return {"TR": 2.0, "run": request["run"]}

    service = env.service({})
    reply = service.request({"cmd": "getSettings", "run": 3}, timeout=5)
    assert reply["data"] == {"TR": 2.0, "run": 3} and reply["status"] == 200 and reply["cmd"] == "getSettings"
    assert isinstance(reply["callId"], int)


def test_server_command_gets_the_handler_of_the_asking_connection(env: Env) -> None:
    """A command's conn is the handler of the connection that asked, one of the endpoint's registered connections."""
    seen: queue.Queue = queue.Queue()
    env.rh.register("who", lambda request, conn: seen.put(conn))
    service = env.service({})
    service.request({"cmd": "who"}, timeout=5)
    conn = seen.get(timeout=5)
    assert isinstance(conn, syncws.DataWebSocketHandler) and conn in env.registry.connections(NAME)


def test_peer_request_gets_bytes_and_arrays_in_binary_parts(env: Env) -> None:
    """bytes and numpy results of a server command reach the peer whole, in several parts, as bytes and an equal array."""
    np = pytest.importorskip("numpy")
    env.rh.part_size = 64 * 1024
    payload = det_bytes(7, 1_000_003)
    array = np.arange(200_000, dtype="<f8").reshape(400, 500)
    env.rh.register("blob", lambda request, conn: payload)
    env.rh.register("array", lambda request, conn: array)
    service = env.service({})
    progress: list[tuple[int, int]] = []
    blob = service.request({"cmd": "blob"}, timeout=10, progress=lambda received, total: progress.append((received, total)))
    assert type(blob["data"]) is bytes and blob["data"] == payload
    assert len(progress) == -(-len(payload) // (64 * 1024)) and progress[-1] == (len(payload), len(payload))
    got = service.request({"cmd": "array"}, timeout=10)["data"]
    assert got.dtype == array.dtype and got.shape == (400, 500) and (got == array).all()


def test_peer_request_errors_carry_the_status(env: Env) -> None:
    """An unknown command raises RequestError 404; a command that raises, 500 with "ExceptionType: message"."""

    def broken(request: dict, conn: Any) -> None:
        raise KeyError("missing")

    env.rh.register("broken", broken)
    service = env.service({})
    with pytest.raises(RequestError) as unknown:
        service.request({"cmd": "nope"}, timeout=5)
    assert unknown.value.status == 404
    with pytest.raises(RequestError) as failed:
        service.request({"cmd": "broken"}, timeout=5)
    assert failed.value.status == 500 and "KeyError: 'missing'" in str(failed.value)


def test_peer_request_refuses_bad_input_before_sending(env: Env) -> None:
    """request() raises TypeError/ValueError for a bad msg or timeout, and NotConnected before start, before anything is sent."""
    service = syncws.RemoteService(env.url)
    with pytest.raises(NotConnected):
        service.request({"cmd": "x"}, timeout=1)
    service = env.service({})
    for bad, error in (("x", TypeError), ({}, ValueError), ({"cmd": 1}, TypeError)):
        with pytest.raises(error):
            service.request(bad, timeout=1)  # type: ignore[arg-type]
    for timeout in (-1.0, math.nan):
        with pytest.raises(ValueError):
            service.request({"cmd": "x"}, timeout=timeout)


def test_server_command_runs_off_the_connection_thread_which_keeps_reading(env: Env) -> None:
    """While one slow command runs, the same connection's other requests are answered and server calls to the peer complete."""
    release = threading.Event()
    env.add_cleanup(release.set)
    names: queue.Queue = queue.Queue()

    def slow(request: dict, conn: Any) -> str:
        names.put(threading.current_thread().name)
        release.wait(20)
        return "slow done"

    env.rh.register("slow", slow)
    env.rh.register("quick", lambda request, conn: "quick done")
    service = env.service({"echo": lambda m: m["x"]})
    _, slow_result = in_thread(lambda: service.request({"cmd": "slow"}, timeout=20))
    assert names.get(timeout=5).startswith("syncws-cmd-")
    assert service.request({"cmd": "quick"}, timeout=5)["data"] == "quick done"
    assert env.rh.doRequest({"cmd": "echo", "x": 11}, timeout=5)["data"] == 11
    release.set()
    kind, value, _ = slow_result.get(timeout=10)
    assert kind == "ok" and value["data"] == "slow done"


def test_full_queue_answers_503_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """With workers=1 and max_pending=1, a third request while one runs and one waits is answered 503 at once."""
    env = Env(workers=1, max_pending=1)
    try:
        started, release = threading.Event(), threading.Event()
        env.add_cleanup(release.set)

        def block(request: dict, conn: Any) -> str:
            started.set()
            release.wait(20)
            return "done"

        env.rh.register("block", block)
        service = env.service({})
        _, first = in_thread(lambda: service.request({"cmd": "block"}, timeout=20))
        assert started.wait(5)
        _, second = in_thread(lambda: service.request({"cmd": "block"}, timeout=20))
        wait_for(lambda: env.rh.commands_busy == 2, timeout=5)
        with pytest.raises(RequestError) as busy:
            service.request({"cmd": "block"}, timeout=5)
        assert busy.value.status == 503
        release.set()
        assert first.get(timeout=10)[0] == "ok" and second.get(timeout=10)[0] == "ok"
    finally:
        env.close()


def test_server_request_with_a_bad_cmd_gets_400(env: Env) -> None:
    """A request with a callId and a cmd that is not a string is answered 400 with its callId, at once."""
    peer = env.fake_peer()
    peer.send({"cmd": 5, "callId": 9})
    reply = peer.recv_request()
    assert reply["status"] == 400 and reply["callId"] == 9 and "cmd" in reply["error"]


def test_inline_command_answers_on_the_connection_thread(env: Env) -> None:
    """A command registered inline=True runs where the connection's messages are handled (its own thread, or its reactor worker) and answers."""
    names: queue.Queue = queue.Queue()
    env.rh.register("fast", lambda request, conn: names.put(threading.current_thread().name) or "ok", inline=True)
    service = env.service({})
    assert service.request({"cmd": "fast"}, timeout=5)["data"] == "ok"
    assert names.get(timeout=5).startswith("syncws-worker-" if env.server.engine == "reactor" else "syncws-conn-")


def test_inline_command_that_asks_its_own_connection_fails_with_500_not_a_hang(env: Env) -> None:
    """An inline server command that calls doRequest on its own connection gets RuntimeError (a 500 to the caller) at once."""
    env.rh.register("ask back", lambda request, conn: env.rh.doRequest({"cmd": "echo", "x": 1}, conn=conn, timeout=30), inline=True)
    service = env.service({"echo": lambda m: m["x"]})
    with pytest.raises(RequestError) as failed:
        service.request({"cmd": "ask back"}, timeout=10)
    assert failed.value.status == 500 and "RuntimeError" in str(failed.value) and "inline" in str(failed.value)


# ---------------------------------------------------------------------- calling back, both at once


def test_server_command_calls_the_same_peer_back_before_answering(env: Env) -> None:
    """A server command that asks the calling peer (doRequest on its conn) before it answers completes with both replies."""

    @env.rh.command("settings")
    def settings(request: dict, conn: Any) -> dict:
        scanner = env.rh.doRequest({"cmd": "scanner"}, conn=conn, timeout=10)["data"]
        return {"scanner": scanner, "TR": 2.0}

    service = env.service({"scanner": lambda m: "prisma"})
    assert service.request({"cmd": "settings"}, timeout=10)["data"] == {"scanner": "prisma", "TR": 2.0}


def test_peer_command_calls_the_server_back_before_answering(env: Env) -> None:
    """A peer command that calls the server (service.request) before it answers a doRequest completes."""
    env.rh.register("base", lambda request, conn: 40)
    holder: dict[str, syncws.RemoteService] = {}
    service = env.service({"add": lambda m: holder["service"].request({"cmd": "base"}, timeout=10)["data"] + m["x"]})
    holder["service"] = service
    assert env.rh.doRequest({"cmd": "add", "x": 2}, timeout=10)["data"] == 42


def test_peer_inline_command_cannot_wait_on_the_server(env: Env) -> None:
    """A peer command registered inline=True that calls request() fails with RuntimeError (500), not a hang."""
    holder: dict[str, syncws.RemoteService] = {}
    service = env.service({})
    service.register("ask", lambda m: holder["service"].request({"cmd": "x"}, timeout=30), inline=True)
    holder["service"] = service
    with pytest.raises(RequestError) as failed:
        env.rh.doRequest({"cmd": "ask"}, timeout=10)
    assert failed.value.status == 500 and "RuntimeError" in str(failed.value)


def test_both_directions_at_once_every_reply_matched(env: Env) -> None:
    """16 threads in a peer process and 16 server threads make 300 mixed requests each, both ways at once over one
    connection (JSON, bytes up to 20 MiB, arrays, a failing command): every reply is its own request's."""
    pytest.importorskip("numpy")
    register_mixed(env.rh.register)
    peer = env.peer_process("--workers", "16", "--ask", "300", "--threads", "16")
    counts, errors = run_mixed(lambda msg: env.rh.doRequest(msg, timeout=30), 16, 300, budget=50)
    assert errors == []
    assert sum(counts.values()) == 16 * 300 and counts["large"] == 16 * 3 and counts["fail"] > 0 and counts["array"] > 0
    peer.expect("ASKED 4800 0", timeout=50)
    assert env.rh.pending == 0
    wait_for(lambda: env.rh.commands.active == 0, timeout=5)


# ---------------------------------------------------------------------- cancellation


def test_peer_timeout_cancels_the_server_command(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """When the peer's timeout passes, the server command sees current_call().cancelled, and its late reply is dropped quietly."""
    caplog.set_level(logging.DEBUG)
    cancelled: queue.Queue = queue.Queue()

    @env.rh.command("long")
    def long(request: dict, conn: Any) -> str:
        call = syncws.current_call()
        assert call is not None and call.cmd == "long"
        cancelled.put(call.wait_cancelled(20))
        return "too late"

    service = env.service({})
    with pytest.raises(RequestTimeout):
        service.request({"cmd": "long"}, timeout=0.2)
    assert cancelled.get(timeout=10) is True
    wait_for(lambda: env.rh.commands.active == 0, timeout=5)
    with pytest.raises(RequestError):  # the connection lives on
        service.request({"cmd": "unknown"}, timeout=5)
    assert library_warnings(caplog) == []


def test_server_timeout_cancels_the_peer_command(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """When doRequest's timeout passes, the peer's command sees current_call().cancelled and its reply is dropped quietly."""
    caplog.set_level(logging.DEBUG)
    cancelled: queue.Queue = queue.Queue()

    def long(msg: dict) -> str:
        call = syncws.current_call()
        assert call is not None and call.call_id == msg["callId"]
        cancelled.put(call.wait_cancelled(20))
        return "too late"

    env.service({"long": long, "echo": lambda m: m["x"]})
    with pytest.raises(RequestTimeout):
        env.rh.doRequest({"cmd": "long"}, timeout=0.2)
    assert cancelled.get(timeout=10) is True
    assert env.rh.doRequest({"cmd": "echo", "x": 3}, timeout=5)["data"] == 3
    assert library_warnings(caplog) == []


def test_current_call_is_none_outside_a_command() -> None:
    """current_call() is None on a thread that answers no call."""
    assert syncws.current_call() is None


# ---------------------------------------------------------------------- failures


def test_connection_closing_fails_the_peers_requests_at_once(env: Env) -> None:
    """When the server closes the connection, a peer request waiting on a command fails with ConnectionClosed at once."""
    started, release = threading.Event(), threading.Event()
    env.add_cleanup(release.set)

    def block(request: dict, conn: Any) -> str:
        started.set()
        release.wait(30)
        return "late"

    env.rh.register("block", block)
    service = env.service({})
    _, result = in_thread(lambda: service.request({"cmd": "block"}, timeout=30))
    assert started.wait(5)
    env.registry.newest(NAME).close(1001, "going away")
    kind, value, _ = result.get(timeout=5)
    assert kind == "err" and isinstance(value, ConnectionClosed), value
    assert not release.is_set()  # released while the command still ran


def test_service_stop_fails_its_waiting_requests(env: Env) -> None:
    """service.stop() while a request waits ends it with ConnectionClosed, not a timeout."""
    started, release = threading.Event(), threading.Event()
    env.add_cleanup(release.set)
    env.rh.register("block", lambda request, conn: started.set() or release.wait(30))
    service = env.service({})
    _, result = in_thread(lambda: service.request({"cmd": "block"}, timeout=30))
    assert started.wait(5)
    service.stop()
    kind, value, _ = result.get(timeout=5)
    assert kind == "err" and isinstance(value, ConnectionClosed)


def test_peer_killed_mid_request_releases_the_server_side(env: Env) -> None:
    """A peer process killed while the server answers its request and waits on its reply: the command is cancelled,
    the server's caller gets ConnectionClosed, and no call is left in the tables."""
    cancelled: queue.Queue = queue.Queue()
    started = threading.Event()

    def wait_for_cancel(request: dict, conn: Any) -> str:
        started.set()
        call = syncws.current_call()
        assert call is not None
        cancelled.put(call.wait_cancelled(20))
        return "late"

    env.rh.register("hold", wait_for_cancel)
    peer = env.peer_process("--workers", "4", "--ask-hold")
    assert started.wait(10)
    _, server_call = in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30))
    peer.expect("BLOCKED")
    os.kill(peer.proc.pid, signal.SIGKILL)
    kind, value, _ = server_call.get(timeout=5)
    assert kind == "err" and isinstance(value, ConnectionClosed)
    assert cancelled.get(timeout=5) is True
    wait_for(lambda: env.rh.commands.active == 0 and env.rh.pending == 0, timeout=5)
    peer.proc.wait(5)


def test_server_drain_lets_a_peers_command_finish_and_answer(env: Env) -> None:
    """server.stop(drain=...) while a peer's request runs on the server: the command finishes and the peer gets its reply."""
    started, release = threading.Event(), threading.Event()
    env.add_cleanup(release.set)

    def slow(request: dict, conn: Any) -> str:
        started.set()
        release.wait(20)
        return "answered"

    env.rh.register("slow", slow)
    service = env.service({})
    _, result = in_thread(lambda: service.request({"cmd": "slow"}, timeout=20))
    assert started.wait(5)
    _, stopped = in_thread(lambda: env.server.stop(drain=10))
    assert not wait_for(lambda: not stopped.empty(), timeout=1.0)  # a second later, the drain still waits for the command
    release.set()
    kind, value, _ = result.get(timeout=10)
    assert kind == "ok" and value["data"] == "answered"
    assert stopped.get(timeout=15)[0] == "ok"


@pytest.mark.parametrize("direction", ["the server asks", "the peer asks"])
def test_large_reply_parts_are_read_straight_into_the_result(env: Env, monkeypatch: pytest.MonkeyPatch, direction: str) -> None:
    """Each part of a large binary reply is read into its place in the result, none into bytes of its own, and the result is intact."""
    kinds: list[str] = []
    add = syncws.calls.reassembly.Transfer.add

    def spy(transfer: Any, part: Any, message: Any) -> None:
        kinds.append(type(message).__name__)
        add(transfer, part, message)

    monkeypatch.setattr(syncws.calls.reassembly.Transfer, "add", spy)
    data = det_bytes(7, 6 * 2**20 + 100_000)  # seven parts, the last of 100 kB: each large enough to be placed
    if direction == "the server asks":
        env.service({"blob": lambda request: data}, part_size=2**20)
        reply = env.rh.doRequest({"cmd": "blob"}, timeout=30)
    else:
        env.rh.register("blob", lambda request, conn: data)
        env.rh.part_size = 2**20
        reply = env.service({}).request({"cmd": "blob"}, timeout=30)
    assert reply["data"] == data
    assert kinds == ["PlacedPayload"] * 7, kinds

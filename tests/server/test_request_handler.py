"""RequestHandler against real peers: replies, binary parts, timeouts, errors, closes and garbage.

Every test gets its own server and registry (the ``env`` fixture); peers are
an in-process RemoteService, a RemoteService in a subprocess
(tests/peer_process.py), syncws client connections that play a peer by hand,
or a plain websocket-client connection, as a browser would be. Everything is
on 127.0.0.1, port 0.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import pytest
import websocket

import syncws
from syncws import callformat, reassembly
from syncws.lograte import RateLimitedLog

from ..helpers import wait_for
from ..peer_process import det_bytes
from ..peers import NAME, Env, in_thread

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------- helpers


class TracingService(syncws.RemoteService):
    """A RemoteService that reports each successful reply once it is on the wire."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.sent: queue.Queue = queue.Queue()

    def send_result(self, connection: Any, cmd: Any, call_id: Any, result: Any) -> None:
        super().send_result(connection, cmd, call_id, result)
        self.sent.put((cmd, call_id))


def library_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records at ERROR or above from syncws (logger.exception: a bug path was taken)."""
    return [r for r in caplog.records if r.name.startswith("syncws") and r.levelno >= logging.ERROR]


# ---------------------------------------------------------------------- replies


def test_reply_is_peer_json_with_cmd_callid_status(env: Env) -> None:
    """doRequest returns the peer's JSON data with the request's cmd, its own callId and status 200."""
    env.service({"echo": lambda m: m["x"]})
    payload = {"a": [1, 2.5, None, "é"], "b": {"c": True}}
    first = env.rh.doRequest({"cmd": "echo", "x": payload}, timeout=10)
    second = env.rh.doRequest({"cmd": "echo", "x": 7}, timeout=10)
    assert first["cmd"] == "echo" and first["status"] == 200 and first["data"] == payload
    assert isinstance(first["callId"], int) and isinstance(second["callId"], int)
    assert second["callId"] != first["callId"] and second["data"] == 7
    assert env.rh.pending == 0


def test_bytes_results_come_back_intact_across_part_boundaries(env: Env) -> None:
    """A bytes result comes back as bytes, equal to what the peer returned, at every size around part_size."""
    env.service({"bytes": lambda m: det_bytes(m["seed"], m["size"])}, part_size=1000)
    for size in (0, 1, 999, 1000, 1001, 2000, 2001, 7777, 10_000):
        reply = env.rh.doRequest({"cmd": "bytes", "seed": size, "size": size}, timeout=10)
        assert type(reply["data"]) is bytes, size
        assert reply["data"] == det_bytes(size, size), size
        assert reply["status"] == 200 and reply["cmd"] == "bytes"
    empty = env.rh.doRequest({"cmd": "bytes", "seed": 1, "size": 0}, timeout=10)
    assert empty["data"] == b""


def test_no_connection_raises_not_connected_at_once(env: Env) -> None:
    """With no peer on the endpoint, doRequest raises NotConnected at once and registers nothing."""
    start = time.monotonic()
    with pytest.raises(syncws.NotConnected):
        env.rh.doRequest({"cmd": "echo", "x": 1}, timeout=10)
    assert time.monotonic() - start < 0.1
    assert env.rh.pending == 0


def test_timeout_cleans_up_and_the_cancelled_reply_is_never_sent(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A request with no reply in time raises RequestTimeout (a TimeoutError with call_id and cmd), leaves no
    call behind, and the peer, told by the cancel, never sends its reply while the connection goes on serving."""
    caplog.set_level(logging.DEBUG, logger="syncws")
    gate = threading.Event()
    calls: queue.Queue = queue.Queue()

    def slow(msg: dict) -> str:
        calls.put(syncws.current_call())
        gate.wait(20)
        return "late"

    svc = env.service({"slow": slow, "echo": lambda m: m["x"]}, cls=TracingService)
    start = time.monotonic()
    with pytest.raises(syncws.RequestTimeout) as info:
        env.rh.doRequest({"cmd": "slow"}, timeout=0.2)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, TimeoutError)
    assert info.value.cmd == "slow" and isinstance(info.value.call_id, int)
    assert 0.2 <= elapsed < 2.0
    assert env.rh.pending == 0

    assert calls.get(timeout=5).wait_cancelled(5)
    gate.set()
    wait_for(lambda: svc.commands.active == 0, timeout=5)
    assert env.rh.doRequest({"cmd": "echo", "x": "after"}, timeout=10)["data"] == "after"
    assert svc.sent.get(timeout=5)[0] == "echo"  # the first reply on the wire is the follow-up's
    assert env.rh.pending == 0
    assert library_errors(caplog) == []
    assert not [r for r in caplog.records if r.name == "syncws.server.request_handler" and r.levelno >= logging.WARNING]


def test_late_reply_of_a_peer_that_ignores_the_cancel_is_dropped_quietly(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """A peer that gets the cancel and still sends its late reply: the reply is dropped at debug level and the connection goes on."""
    caplog.set_level(logging.DEBUG, logger="syncws")
    peer = env.fake_peer()
    with pytest.raises(syncws.RequestTimeout):
        env.rh.doRequest({"cmd": "slow"}, timeout=0.2)
    request = peer.recv_request()
    assert peer.recv_request() == {"cancel": request["callId"]}
    peer.send({"cmd": "slow", "callId": request["callId"], "status": 200, "data": "late"})
    _, result = in_thread(lambda: env.rh.doRequest({"cmd": "echo"}, timeout=10))
    follow_up = peer.recv_request()
    peer.send({"cmd": "echo", "callId": follow_up["callId"], "status": 200, "data": "after"})
    kind, value, _ = result.get(timeout=10)
    assert kind == "ok" and value["data"] == "after"
    assert env.rh.pending == 0
    assert any("dropped" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records if r.name == "syncws.server.request_handler")
    assert not [r for r in caplog.records if r.name.startswith("syncws") and r.levelno >= logging.WARNING]


def test_peer_exception_gives_request_error_500(env: Env) -> None:
    """A command that raises gives RequestError with status 500 and error "ValueError: boom"."""

    def fail(msg: dict) -> None:
        raise ValueError("boom")

    env.service({"fail": fail})
    with pytest.raises(syncws.RequestError) as info:
        env.rh.doRequest({"cmd": "fail"}, timeout=10)
    assert info.value.status == 500
    assert info.value.error == "ValueError: boom"
    assert info.value.response["cmd"] == "fail"
    assert env.rh.pending == 0


def test_unknown_command_gives_request_error_404(env: Env) -> None:
    """A cmd the peer has not registered gives RequestError with status 404."""
    env.service({"echo": lambda m: m["x"]})
    with pytest.raises(syncws.RequestError) as info:
        env.rh.doRequest({"cmd": "no-such-command"}, timeout=10)
    assert info.value.status == 404
    assert env.rh.pending == 0


# ---------------------------------------------------------------------- connections going away


def test_sigkilled_peer_releases_every_waiting_caller_within_100ms(env: Env) -> None:
    """A peer process killed with SIGKILL mid-request releases every waiting caller with ConnectionClosed
    within 100 ms, and a peer that connects afterwards serves the next request."""
    peer = env.peer_process()
    callers = [in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30)) for _ in range(6)]
    for _ in callers:
        peer.expect("BLOCKED", timeout=10)  # every request is at the peer, inside the command
    killed_at = time.monotonic()
    os.kill(peer.proc.pid, signal.SIGKILL)
    outcomes = []
    for thread, results in callers:
        thread.join(5)
        assert not thread.is_alive(), "a caller is still waiting after the kill"
        outcomes.append(results.get_nowait())
    peer.proc.wait(5)
    for kind, value, at in outcomes:
        assert kind == "err" and isinstance(value, syncws.ConnectionClosed), value
        assert at - killed_at < 0.1, f"released {at - killed_at:.3f} s after the kill"
    assert env.rh.pending == 0

    env.wait_event("close")
    env.peer_process()
    reply = env.rh.doRequest({"cmd": "echo", "x": "new peer"}, timeout=10)
    assert reply["data"] == "new peer"
    assert len(env.registry.connections(NAME)) == 1


def test_server_stop_releases_waiting_callers(env: Env) -> None:
    """server.stop() releases every caller waiting for a reply with ConnectionClosed."""
    entered: queue.Queue = queue.Queue()

    def block(msg: dict) -> None:
        entered.put(msg["callId"])
        env.release.wait(30)

    env.service({"block": block}, workers=4)
    callers = [in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30)) for _ in range(3)]
    for _ in callers:
        entered.get(timeout=10)
    start = time.monotonic()
    env.server.stop()
    for thread, results in callers:
        thread.join(5)
        assert not thread.is_alive(), "a caller is still waiting after server.stop()"
        kind, value, _ = results.get_nowait()
        assert kind == "err" and isinstance(value, syncws.ConnectionClosed), value
    assert time.monotonic() - start < 5
    assert env.rh.pending == 0


# ---------------------------------------------------------------------- many threads


def test_many_threads_mixed_requests_each_get_their_own_reply(env: Env) -> None:
    """32 threads x 300 requests of JSON and bytes (up to 20 MiB) to a peer process: every reply is the
    one for its own request and none is lost."""
    env.peer_process("--workers", "16")
    threads_n, per_thread = 32, 300
    errors: list[str] = []
    counts = {"echo": 0, "small": 0, "large": 0}
    lock = threading.Lock()

    def worker(k: int) -> None:
        rng = random.Random(k)
        done = {"echo": 0, "small": 0, "large": 0}
        for i in range(per_thread):
            seed = k * 100_000 + i
            try:
                if i % 100 == 50:  # 1 in 100 is large
                    # log-uniform from 256 KiB to 20 MiB, and one of exactly 20 MiB
                    size = 20 << 20 if (k == 0 and i == 50) else int(2 ** rng.uniform(18, 24.32))
                    reply = env.rh.doRequest({"cmd": "bytes", "seed": seed, "size": size}, timeout=30)
                    ok = type(reply["data"]) is bytes and len(reply["data"]) == size and reply["data"] == det_bytes(seed, size)
                    kind = "large"
                elif rng.random() < 0.5:
                    size = rng.randint(0, 5000)
                    reply = env.rh.doRequest({"cmd": "bytes", "seed": seed, "size": size}, timeout=30)
                    ok = reply["data"] == det_bytes(seed, size)
                    kind = "small"
                else:
                    x = {"k": k, "i": i, "seed": seed}
                    reply = env.rh.doRequest({"cmd": "echo", "x": x}, timeout=30)
                    ok = reply["data"] == x and reply["cmd"] == "echo"
                    kind = "echo"
                if not ok or reply["status"] != 200:
                    raise AssertionError(f"wrong reply {str(reply)[:200]}")
                done[kind] += 1
            except Exception as exc:  # collected and asserted on the test thread
                with lock:
                    errors.append(f"thread {k} request {i}: {exc!r}"[:300])
                if len(errors) > 20:
                    return
        with lock:
            for kind, n in done.items():
                counts[kind] += n

    workers = [threading.Thread(target=worker, args=(k,), name=f"test-worker-{k}", daemon=True) for k in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(50)
    assert not any(w.is_alive() for w in workers), "workers still running"
    assert errors == []
    assert sum(counts.values()) == threads_n * per_thread
    assert counts["large"] == threads_n * (per_thread // 100)
    assert env.rh.pending == 0


# ---------------------------------------------------------------------- who may answer


def test_reply_on_another_connection_is_dropped(env: Env) -> None:
    """A reply with a pending callId arriving on a connection other than the request's is dropped."""
    forger = env.fake_peer()
    target = env.fake_peer()  # the newest: doRequest asks it
    forger_handler, target_handler = env.registry.connections(NAME)
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "q"}, timeout=10))
    request = target.recv_request()
    assert request["cmd"] == "q"

    # The forger answers that callId, then a request of its own: its connection
    # thread takes both in order, so once its own reply is in, the forged one was handled.
    ask_forger = in_thread(lambda: env.rh.doRequest({"cmd": "y"}, timeout=10, conn=forger_handler))
    y_request = forger.recv_request()
    forger.send({"cmd": "q", "callId": request["callId"], "status": 200, "data": "forged"})
    forger.send({"cmd": "y", "callId": y_request["callId"], "status": 200, "data": "y"})
    ask_forger[0].join(10)
    kind, value, _ = ask_forger[1].get_nowait()
    assert kind == "ok" and value["data"] == "y", value
    assert results.empty() and caller.is_alive(), "the forged reply was accepted"

    target.send({"cmd": "q", "callId": request["callId"], "status": 200, "data": "genuine"})
    caller.join(10)
    kind, value, _ = results.get_nowait()
    assert kind == "ok" and value["data"] == "genuine"
    assert target_handler is not forger_handler


def test_browser_style_json_reply_is_accepted(env: Env) -> None:
    """A plain websocket-client peer answering with a JSON text reply {cmd, callId, status 200, data} is accepted."""
    ws = env.browser_peer()
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "getInfo", "arg": 3}, timeout=10))
    request = json.loads(ws.recv())
    assert request["cmd"] == "getInfo" and request["arg"] == 3 and isinstance(request["callId"], int)
    ws.send(json.dumps({"cmd": "getInfo", "callId": request["callId"], "status": 200, "data": {"answer": 42}}))
    caller.join(10)
    kind, value, _ = results.get_nowait()
    assert kind == "ok", value
    assert value["data"] == {"answer": 42} and value["status"] == 200 and value["callId"] == request["callId"]


# ---------------------------------------------------------------------- garbage


GARBAGE: list[Any] = [
    "not json at all",
    "{broken",
    "[" * 100_000,  # nesting beyond the recursion limit
    json.dumps([1, 2, 3]),
    json.dumps("a string"),
    json.dumps({"cmd": "x", "status": 200, "data": 1}),  # missing callId
    json.dumps({"cmd": "x", "callId": True, "status": 200}),  # bool callId
    json.dumps({"cmd": "x", "callId": "1", "status": 200}),
    json.dumps({"cmd": "x", "callId": 1.0, "status": 200}),
    json.dumps({"cmd": "x", "callId": 10**30, "status": 200}),
    json.dumps({"cmd": "x", "callId": 987654, "status": 200}),  # unknown callId
    b"",
    b"\x00\x01\x02",
    b"X" * 100,  # long enough for a header, wrong magic
    callformat.PART_MAGIC + b"\x00" * 10,  # magic but short
    callformat.encode_part_header(987654, 0, 1, 0, b"abc") + b"abc",  # a part for no call
]


def test_callback_never_raises_on_garbage(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """callback() returns quietly on garbage (no exception, no error log), and the connection it came on
    goes on delivering replies."""
    caplog.set_level(logging.DEBUG, logger="syncws")
    peer = env.fake_peer()
    handler = env.registry.newest(NAME)
    assert handler is not None
    for message in GARBAGE:
        assert env.rh.callback(handler, message) is None
    for message in GARBAGE:  # the same over the wire
        peer.send(message)

    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "ok"}, timeout=10))
    request = peer.recv_request()
    peer.send({"cmd": "ok", "callId": request["callId"], "status": 200, "data": "fine"})
    caller.join(10)
    kind, value, _ = results.get_nowait()
    assert kind == "ok" and value["data"] == "fine", value
    assert library_errors(caplog) == []
    assert env.rh.pending == 0


def _bad_crc(call_id: int) -> list[Any]:
    data = b"0123456789"
    header = bytearray(callformat.encode_part_header(call_id, 0, 1, 0, data))
    header[-1] ^= 0xFF
    return [{"cmd": "b", "callId": call_id, "status": 200, "dataType": "bytes", "size": 10, "parts": 1}, bytes(header) + data]


def _part_before_header(call_id: int) -> list[Any]:
    return [callformat.encode_part_header(call_id, 0, 1, 0, b"abc") + b"abc"]


def _out_of_order(call_id: int) -> list[Any]:
    return [
        {"cmd": "b", "callId": call_id, "status": 200, "dataType": "bytes", "size": 6, "parts": 2},
        callformat.encode_part_header(call_id, 1, 2, 3, b"def") + b"def",
    ]


def _past_the_end(call_id: int) -> list[Any]:
    return [
        {"cmd": "b", "callId": call_id, "status": 200, "dataType": "bytes", "size": 3, "parts": 1},
        callformat.encode_part_header(call_id, 0, 1, 0, b"abcdef") + b"abcdef",
    ]


def _short(call_id: int) -> list[Any]:
    return [
        {"cmd": "b", "callId": call_id, "status": 200, "dataType": "bytes", "size": 6, "parts": 1},
        callformat.encode_part_header(call_id, 0, 1, 0, b"abc") + b"abc",
    ]


def _bad_size(call_id: int) -> list[Any]:
    return [{"cmd": "b", "callId": call_id, "status": 200, "dataType": "bytes", "size": -1, "parts": 1}]


def _array_does_not_fit(call_id: int) -> list[Any]:
    # Three float64 take 24 bytes, not 10: refused from the header, before any part.
    return [{"cmd": "b", "callId": call_id, "status": 200, "dataType": "ndarray", "dtype": "<f8", "shape": [3], "size": 10, "parts": 1}]


def _object_array(call_id: int) -> list[Any]:
    return [{"cmd": "b", "callId": call_id, "status": 200, "dataType": "ndarray", "dtype": "|O", "shape": [1], "size": 8, "parts": 1}]


_BIG = bytes(range(256)) * 800  # 200 KiB: large enough to be read straight into the result


def _big_reply(call_id: int, size: int) -> dict[str, Any]:
    return {"cmd": "b", "callId": call_id, "status": 200, "dataType": "bytes", "size": size, "parts": 2 if size > len(_BIG) else 1}


def _bad_crc_big(call_id: int) -> list[Any]:
    header = bytearray(callformat.encode_part_header(call_id, 0, 1, 0, _BIG))
    header[-1] ^= 0xFF
    return [_big_reply(call_id, len(_BIG)), bytes(header) + _BIG]


def _out_of_order_big(call_id: int) -> list[Any]:
    return [_big_reply(call_id, 2 * len(_BIG)), callformat.encode_part_header(call_id, 1, 2, len(_BIG), _BIG) + _BIG]


def _past_the_end_big(call_id: int) -> list[Any]:
    return [_big_reply(call_id, len(_BIG) // 2), callformat.encode_part_header(call_id, 0, 1, 0, _BIG) + _BIG]


def _short_big(call_id: int) -> list[Any]:
    reply = dict(_big_reply(call_id, 2 * len(_BIG)), parts=1)
    return [reply, callformat.encode_part_header(call_id, 0, 1, 0, _BIG) + _BIG]


@pytest.mark.parametrize(
    "damage",
    [
        _bad_crc,
        _part_before_header,
        _out_of_order,
        _past_the_end,
        _short,
        _bad_size,
        _array_does_not_fit,
        _object_array,
        _bad_crc_big,
        _out_of_order_big,
        _past_the_end_big,
        _short_big,
    ],
)
def test_damaged_binary_reply_fails_the_call_with_502(env: Env, caplog: pytest.LogCaptureFixture, damage: Callable[[int], list[Any]]) -> None:
    """A damaged binary reply (bad CRC, part before header, out of order, past the end, short, bad size,
    an array that does not fit its size or holds objects; large parts, read in place, too) fails the waiting
    call at once with RequestError 502 instead of leaving it hanging."""
    peer = env.fake_peer()
    start = time.monotonic()
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "b"}, timeout=10))
    request = peer.recv_request()
    for message in damage(request["callId"]):
        peer.send(message)
    caller.join(10)
    kind, value, _ = results.get_nowait()
    assert kind == "err" and isinstance(value, syncws.RequestError), value
    assert value.status == 502
    assert time.monotonic() - start < 5
    assert env.rh.pending == 0
    assert library_errors(caplog) == []


_ABANDON = """
import gc, sys
from syncws import reassembly
unraisable = []
sys.unraisablehook = unraisable.append
assembler = reassembly.ReplyAssembler({"dataType": sys.argv[1], "size": 100, "parts": 2, "dtype": "|u1", "shape": [100]})
assembler.add(b"x" * 50)
cycle = [assembler]
cycle.append(cycle)
del assembler, cycle
gc.collect()
print(len(unraisable), [str(u.exc_value) for u in unraisable])
"""


@pytest.mark.parametrize("data_type", ["bytes", "ndarray"])
def test_abandoned_reply_assembly_is_collected_quietly(data_type: str) -> None:
    """A half-filled reply dropped inside a reference cycle (as a failed call's traceback makes) is collected
    without an unraisable error (checked in a -X dev interpreter, where every Python reports those)."""
    if data_type == "ndarray":
        pytest.importorskip("numpy")
    done = subprocess.run([sys.executable, "-X", "dev", "-c", _ABANDON, data_type], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("0 "), done.stdout


# ---------------------------------------------------------------------- progress and pruning


def test_progress_is_called_in_increasing_order_up_to_the_total(env: Env) -> None:
    """progress(received, total) is called once per part, with received increasing and ending at total."""
    env.service({"bytes": lambda m: det_bytes(m["seed"], m["size"])}, part_size=1000)
    calls: list[tuple[int, int]] = []
    size = 10_500
    reply = env.rh.doRequest({"cmd": "bytes", "seed": 5, "size": size}, timeout=10, progress=lambda r, t: calls.append((r, t)))
    assert reply["data"] == det_bytes(5, size)
    assert len(calls) == 11
    received = [r for r, _ in calls]
    assert received == sorted(received) and len(set(received)) == len(received)
    assert all(t == size for _, t in calls)
    assert calls[-1] == (size, size)


def test_prune_keeps_a_call_a_thread_waits_on(env: Env) -> None:
    """pruneCallbacks(max_age=0) leaves a call that a thread is waiting on, which then gets its reply."""
    entered: queue.Queue = queue.Queue()
    gate = threading.Event()

    def held(msg: dict) -> str:
        entered.put(msg["callId"])
        gate.wait(20)
        return "held"

    env.service({"held": held})
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "held"}, timeout=20))
    entered.get(timeout=10)
    assert env.rh.pruneCallbacks(max_age=0) == 0
    assert env.rh.pending == 1
    gate.set()
    caller.join(10)
    kind, value, _ = results.get_nowait()
    assert kind == "ok" and value["data"] == "held", value


def test_prune_drops_only_abandoned_calls(env: Env) -> None:
    """pruneCallbacks drops a prepared call nobody waits on once older than max_age, and not before."""
    env.fake_peer()
    call_id, _ = env.rh.prepare_request({"cmd": "never-sent"})
    assert env.rh.pruneCallbacks(max_age=60) == 0
    assert env.rh.pending == 1
    assert env.rh.pruneCallbacks(max_age=0) == 1
    assert env.rh.pending == 0
    with pytest.raises(KeyError):
        env.rh.get_response(call_id, timeout=0.1)


def test_prune_running_alongside_requests_drops_none_of_them(env: Env) -> None:
    """pruneCallbacks(max_age=0) called over and over while threads make requests never drops one of
    those requests: each doRequest still returns its own reply."""
    env.service({"echo": lambda m: m["x"]})
    stop = threading.Event()
    errors: list[str] = []
    lock = threading.Lock()

    def pruner() -> None:
        for _ in range(1_000_000):
            if stop.is_set():
                return
            env.rh.pruneCallbacks(max_age=0)

    def worker(k: int) -> None:
        for i in range(150):
            try:
                assert env.rh.doRequest({"cmd": "echo", "x": [k, i]}, timeout=5)["data"] == [k, i]
            except Exception as exc:  # collected and asserted on the test thread
                with lock:
                    errors.append(f"{k}/{i}: {exc!r}")

    prune_thread = threading.Thread(target=pruner, name="test-pruner", daemon=True)
    prune_thread.start()
    workers = [threading.Thread(target=worker, args=(k,), name=f"test-worker-{k}", daemon=True) for k in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(40)
    stop.set()
    prune_thread.join(5)
    assert not any(w.is_alive() for w in workers)
    assert errors == [], f"{len(errors)} of 1200 requests lost, e.g. {errors[:3]}"


# ---------------------------------------------------------------------- reply headers and parts that fail oddly


def _join_result(caller: threading.Thread, results: queue.Queue, timeout: float = 5.0) -> tuple[str, Any, float]:
    caller.join(timeout)
    assert not caller.is_alive(), "the caller is still waiting"
    return results.get_nowait()


def test_array_header_with_infinite_shape_fails_the_call_at_once(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """An array reply header with "shape": [Infinity] fails a call made with timeout=None at once with RequestError 502."""
    pytest.importorskip("numpy")
    peer = env.fake_peer()
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "b"}, timeout=None))
    call_id = peer.recv_request()["callId"]
    peer.send(f'{{"cmd": "b", "callId": {call_id}, "status": 200, "dataType": "ndarray", "dtype": "<f8", "shape": [Infinity], "size": 8, "parts": 1}}')
    kind, value, _ = _join_result(caller, results)
    assert kind == "err" and isinstance(value, syncws.RequestError), value
    assert value.status == 502 and "invalid" in value.error
    assert env.rh.pending == 0
    assert library_errors(caplog) == []


@pytest.mark.parametrize("data_type", ["bytes", "ndarray"])
def test_reply_too_large_to_allocate_fails_the_call_at_once(env: Env, caplog: pytest.LogCaptureFixture, data_type: str) -> None:
    """A reply header whose size cannot be allocated (a real MemoryError: 4 EiB) fails a call made with timeout=None at once with 502."""
    if data_type == "ndarray":
        pytest.importorskip("numpy")
    env.rh.max_reply_size = 1 << 63  # let the announced size through to the allocation
    peer = env.fake_peer()
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "b"}, timeout=None))
    call_id = peer.recv_request()["callId"]
    size = 1 << 62
    peer.send({"cmd": "b", "callId": call_id, "status": 200, "dataType": data_type, "dtype": "|u1", "shape": [size], "size": size, "parts": 1})
    kind, value, _ = _join_result(caller, results)
    assert kind == "err" and isinstance(value, syncws.RequestError), value
    assert value.status == 502 and "cannot allocate" in value.error, value.error
    assert env.rh.pending == 0
    assert library_errors(caplog) == []
    # The connection lives on.
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "ok"}, timeout=None))
    peer.send({"cmd": "ok", "callId": peer.recv_request()["callId"], "status": 200, "data": 1})
    assert _join_result(caller, results)[1]["data"] == 1


def _fail_taking_the_part(monkeypatch: pytest.MonkeyPatch) -> None:
    def add_part(self: Any, part: Any, message: bytes) -> None:
        raise RuntimeError("injected fault while taking a part")

    monkeypatch.setattr("syncws.calls.reassembly.Transfer.add", add_part)


def _fail_copying_the_part(monkeypatch: pytest.MonkeyPatch) -> None:
    def add(self: Any, data: Any) -> None:
        raise MemoryError("injected fault while copying a part")

    monkeypatch.setattr(reassembly.ReplyAssembler, "add", add)


@pytest.mark.parametrize("inject", [_fail_taking_the_part, _fail_copying_the_part])
def test_any_failure_taking_a_part_fails_the_call_with_502(env: Env, monkeypatch: pytest.MonkeyPatch, inject: Callable[[pytest.MonkeyPatch], None]) -> None:
    """A part whose taking fails in an unexpected way (an injected RuntimeError or MemoryError) fails the call at once with RequestError 502."""
    inject(monkeypatch)
    peer = env.fake_peer()
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "b"}, timeout=None))
    call_id = peer.recv_request()["callId"]
    peer.send({"cmd": "b", "callId": call_id, "status": 200, "dataType": "bytes", "size": 3, "parts": 1})
    peer.send(callformat.encode_part_header(call_id, 0, 1, 0, b"abc") + b"abc")
    kind, value, _ = _join_result(caller, results)
    assert kind == "err" and isinstance(value, syncws.RequestError), value
    assert value.status == 502 and "injected fault" in value.error
    assert env.rh.pending == 0


# ---------------------------------------------------------------------- requests and timeouts the caller gets wrong


def test_infinite_and_huge_timeouts_wait_for_the_reply(env: Env) -> None:
    """doRequest and get_response take timeout=math.inf, 1e300 and 10**400 as "forever" and return the reply."""
    peer = env.fake_peer()
    for timeout in (math.inf, 1e300, 10**400, threading.TIMEOUT_MAX * 2):
        caller, results = in_thread(lambda t=timeout: env.rh.doRequest({"cmd": "q"}, timeout=t))
        request = peer.recv_request()
        peer.send({"cmd": "q", "callId": request["callId"], "status": 200, "data": str(timeout)})
        kind, value, _ = _join_result(caller, results)
        assert kind == "ok" and value["data"] == str(timeout), value
    call_id, _ = env.rh.prepare_request({"cmd": "p"})
    caller, results = in_thread(lambda: env.rh.get_response(call_id, timeout=math.inf))
    env.rh.callback(env.registry.newest(NAME), json.dumps({"cmd": "p", "callId": call_id, "status": 200, "data": "got"}))
    kind, value, _ = _join_result(caller, results)
    assert kind == "ok" and value["data"] == "got", value
    assert env.rh.pending == 0


@pytest.mark.parametrize(
    "msg,timeout,error",
    [
        ({"cmd": "q"}, math.nan, ValueError),
        ({"cmd": "q"}, -1, ValueError),
        ({"cmd": "q"}, -math.inf, ValueError),
        ({"cmd": "q"}, "10", TypeError),
        ({"data": 1}, 10, ValueError),
        ("echo", 10, TypeError),
        (["echo"], 10, TypeError),
        ({"cmd": 5}, 10, TypeError),
        ({"cmd": None}, 10, TypeError),
    ],
)
def test_bad_request_or_timeout_raises_before_anything_is_sent(env: Env, msg: Any, timeout: Any, error: type) -> None:
    """A request that is not a dict with a str cmd, or a NaN, negative or non-numeric timeout, raises TypeError or
    ValueError at once, before anything is sent or registered."""
    peer = env.fake_peer()
    start = time.monotonic()
    with pytest.raises(error):
        env.rh.doRequest(msg, timeout=timeout)
    assert time.monotonic() - start < 0.5
    assert env.rh.pending == 0
    if isinstance(msg, dict) and isinstance(msg.get("cmd"), str):
        with pytest.raises(error):
            env.rh.get_response(1, timeout=timeout)
    else:
        with pytest.raises(error):
            env.rh.prepare_request(msg)
    # The first thing the peer gets is the next good request: nothing went out before it.
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "next"}, timeout=10))
    request = peer.recv_request()
    assert request["cmd"] == "next", request
    peer.send({"cmd": "next", "callId": request["callId"], "status": 200})
    assert _join_result(caller, results)[0] == "ok"


# ---------------------------------------------------------------------- one server's handler, another server's connections


def test_request_handler_reaches_only_connections_its_server_accepted() -> None:
    """Two servers sharing the default registry: a RequestHandler bound to one never reaches a connection of the other
    (NotConnected, also with conn=), while one built without a server still reaches any connection of the name."""
    name = "wsShared"
    open_server = syncws.WebSocketServer("127.0.0.1", 0, close_timeout=1.0).start()
    guarded = syncws.WebSocketServer("127.0.0.1", 0, close_timeout=1.0, auth=lambda request: False).start()
    ws = None
    try:
        assert open_server.registry is guarded.registry is syncws.websocketState
        rh_open = syncws.RequestHandler(name, open_server)
        rh_guarded = syncws.RequestHandler(name, guarded)
        rh_any = syncws.RequestHandler(name)
        opened: queue.Queue = queue.Queue()
        notify = lambda n, event: opened.put(event)  # noqa: E731
        open_server.add_handler("/" + name, syncws.DataWebSocketHandler, name=name, callback=rh_open.callback, connNotify=notify)
        guarded.add_handler("/" + name, syncws.DataWebSocketHandler, name=name, callback=rh_guarded.callback)
        ws = websocket.create_connection(open_server.url + "/" + name, timeout=5)  # anonymous: only the open server takes it
        assert opened.get(timeout=5) == "open"
        anonymous = syncws.websocketState.newest(name)
        assert anonymous is not None and anonymous.server is open_server

        with pytest.raises(syncws.NotConnected):
            rh_guarded.doRequest({"cmd": "secret"}, timeout=5)
        with pytest.raises(syncws.NotConnected):
            rh_guarded.doRequest({"cmd": "secret"}, timeout=5, conn=anonymous)
        with pytest.raises(syncws.NotConnected):
            rh_guarded.prepare_request({"cmd": "secret"})
        assert rh_guarded.pending == 0

        caller, results = in_thread(lambda: rh_open.doRequest({"cmd": "hello"}, timeout=10))
        request = json.loads(ws.recv())
        assert request["cmd"] == "hello", request  # the first request the client ever sees: nothing leaked before
        ws.send(json.dumps({"cmd": "hello", "callId": request["callId"], "status": 200, "data": "hi"}))
        kind, value, _ = _join_result(caller, results)
        assert kind == "ok" and value["data"] == "hi", value

        _, conn = rh_any.prepare_request({"cmd": "hello"})  # no server: any connection of the name, as before
        assert conn is anonymous
        assert rh_any.pruneCallbacks(max_age=0) == 1
    finally:
        if ws is not None:
            ws.close()
        open_server.stop()
        guarded.stop()


# ---------------------------------------------------------------------- junk from a peer


def test_junk_from_a_peer_is_logged_a_few_times_with_the_suppressed_count(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """5,000 junk messages from one peer give a handful of warnings, one of which counts the suppressed ones,
    and a real request on that connection still works after the junk."""
    caplog.set_level(logging.WARNING, logger="syncws")
    ws = env.browser_peer()
    junk: list[Any] = ["not json", "[1, 2]", json.dumps({"cmd": "x", "callId": "1", "status": 200}), b"\x00\x01\x02"]
    for i in range(5000):
        message = junk[i % len(junk)]
        if isinstance(message, bytes):
            ws.send_binary(message)
        else:
            ws.send(message)
    caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "real"}, timeout=10))
    request = json.loads(ws.recv())
    ws.send(json.dumps({"cmd": "real", "callId": request["callId"], "status": 200, "data": "fine"}))
    kind, value, _ = _join_result(caller, results, 10)
    assert kind == "ok" and value["data"] == "fine", value

    ws.close()  # the count still suppressed is logged when the connection closes
    assert wait_for(lambda: any("suppressed" in r.getMessage() for r in caplog.records), 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "syncws.server.request_handler"]
    assert 1 <= len(lines) <= 5, lines
    assert any("4999 similar messages suppressed" in line for line in lines), lines


def test_rate_limited_log_gives_one_line_per_interval_per_key(caplog: pytest.LogCaptureFixture) -> None:
    """RateLimitedLog logs a key's first line, suppresses the rest of the interval, counts them on the next line,
    keeps keys apart, and drops a key's state when the key is collected."""
    caplog.set_level(logging.INFO, logger="test.lograte")
    now = [100.0]
    log = RateLimitedLog(logging.getLogger("test.lograte"), interval=10.0, clock=lambda: now[0])

    class Key:
        pass

    a, b = Key(), Key()
    assert log.log(a, logging.WARNING, "junk %d", 1)
    assert not any(log.log(a, logging.WARNING, "junk %d", n) for n in range(2, 6))
    assert log.log(b, logging.WARNING, "other %s", "b")  # another key is not held back
    now[0] += 10.0
    assert log.log(a, logging.WARNING, "junk %d", 6)
    assert [r.getMessage() for r in caplog.records] == ["junk 1", "other b", "junk 6 (4 similar messages suppressed in the last 10 s)"]
    assert len(log) == 2
    del a
    gc.collect()
    assert len(log) == 1
    assert log.log(b, logging.WARNING, "other %s", "again")  # its interval is over too
    assert not log.log(b, logging.WARNING, "other %s", "suppressed")
    log.forget(b, what="wsData")
    assert caplog.records[-1].getMessage() == "wsData: 1 similar messages suppressed before the connection closed"
    assert len(log) == 0

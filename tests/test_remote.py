"""RemoteService: commands, start/stop, concurrency of requests, reconnection and result encoding."""

from __future__ import annotations

import queue
import socket
import threading
import time
from typing import Any

import pytest

import syncws

from .test_requests import NAME, Env, in_thread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def dead_url():
    """A ws:// URL on 127.0.0.1 where nothing listens (a port bound, then closed)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"ws://127.0.0.1:{port}/{NAME}"


def test_register_and_command_decorator_both_answer(env: Env) -> None:
    """register() and the command() decorator both bind a cmd; the decorator returns the function unchanged."""
    svc = syncws.RemoteService(env.url, backoff_min=0.05, backoff_max=0.2)
    env.add_cleanup(svc.stop)

    def plain(msg: dict) -> str:
        return "plain:" + msg["v"]

    svc.register("plain", plain)

    @svc.command("decorated")
    def decorated(msg: dict) -> str:
        return "decorated:" + msg["v"]

    assert decorated({"v": "direct"}) == "decorated:direct"
    svc.start(timeout=10)
    env.wait_event("open")
    assert env.rh.doRequest({"cmd": "plain", "v": "a"}, timeout=10)["data"] == "plain:a"
    assert env.rh.doRequest({"cmd": "decorated", "v": "b"}, timeout=10)["data"] == "decorated:b"
    svc.register("plain", lambda m: "replaced")  # registering again replaces, also while running
    assert env.rh.doRequest({"cmd": "plain", "v": "c"}, timeout=10)["data"] == "replaced"


def test_start_raises_not_connected_when_nothing_listens(dead_url: str) -> None:
    """start(timeout) raises NotConnected when nothing listens, within timeout + 1 s, and stops trying."""
    svc = syncws.RemoteService(dead_url, backoff_min=0.05, backoff_max=0.2, connect_timeout=1.0)
    try:
        start = time.monotonic()
        with pytest.raises(syncws.NotConnected):
            svc.start(timeout=1.0)
        assert time.monotonic() - start < 2.0
        assert not svc.connected
        assert svc.connections_made == 0
    finally:
        svc.stop()


def test_stop_returns_within_a_second(env: Env, dead_url: str) -> None:
    """stop() returns within 1 s: while connected with a command running, and while retrying a dead URL."""
    entered: queue.Queue = queue.Queue()

    def block(msg: dict) -> None:
        entered.put(msg["callId"])
        env.release.wait(30)

    svc = env.service({"block": block})
    caller, _ = in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30))
    entered.get(timeout=10)
    start = time.monotonic()
    svc.stop()
    assert time.monotonic() - start < 1.0
    assert not svc.connected
    caller.join(5)  # the server sees the connection go and releases the caller
    assert not caller.is_alive()

    retrying = syncws.RemoteService(dead_url, backoff_min=0.05, backoff_max=0.2)
    env.add_cleanup(retrying.stop)
    with pytest.raises(syncws.NotConnected):
        retrying.start(timeout=0.3)
    start = time.monotonic()
    retrying.stop()
    assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("workers", [2, 8])
def test_slow_request_does_not_hold_up_a_fast_one(env: Env, workers: int) -> None:
    """A slow request (held until the fast one is back) does not hold up a fast one sent after it: the fast one returns first."""
    entered: queue.Queue = queue.Queue()
    fast_is_back = threading.Event()

    def slow(msg: dict) -> str:
        entered.put("slow")
        fast_is_back.wait(10)  # the command's own work, which outlasts the fast request
        return "slow"

    env.service({"slow": slow, "echo": lambda m: m["x"]}, workers=workers)
    slow_caller, slow_results = in_thread(lambda: env.rh.doRequest({"cmd": "slow"}, timeout=10))
    entered.get(timeout=10)  # the slow one is running at the peer
    assert env.rh.doRequest({"cmd": "echo", "x": "fast"}, timeout=10)["data"] == "fast"
    fast_done = time.monotonic()
    fast_is_back.set()
    slow_caller.join(10)
    kind, value, slow_done = slow_results.get_nowait()
    assert kind == "ok" and value["data"] == "slow", value
    assert fast_done < slow_done


def test_inline_command_runs_before_anything_else_is_read(env: Env) -> None:
    """An inline command runs on the reading thread: a request that arrives while it runs waits until it returns."""
    entered: queue.Queue = queue.Queue()
    gate, echoed = threading.Event(), threading.Event()

    def held(msg: dict) -> str:
        entered.put(threading.current_thread().name)
        gate.wait(10)
        return "held"

    def echo(msg: dict) -> Any:
        echoed.set()
        return msg["x"]

    service = env.service({"echo": echo}, workers=4)
    service.register("held", held, inline=True)
    held_caller, held_results = in_thread(lambda: env.rh.doRequest({"cmd": "held"}, timeout=20))
    assert entered.get(timeout=10).startswith("syncws-remote-worker-")
    call_id, conn = env.rh.prepare_request({"cmd": "echo"})
    conn.write_message({"cmd": "echo", "x": 1, "callId": call_id})  # in the peer's socket buffer when this returns
    # Four workers are idle, yet nobody reads the echo request while the inline command runs.
    assert not echoed.wait(0.5)
    gate.set()
    assert env.rh.get_response(call_id, timeout=10)["data"] == 1
    held_caller.join(10)
    assert held_results.get_nowait()[1]["data"] == "held"


def test_registering_again_without_inline_makes_a_command_run_on_a_worker(env: Env) -> None:
    """register(cmd, fn) after register(cmd, fn, inline=True) runs it on a worker again: a blocked one does not stop an echo."""
    gate = threading.Event()
    entered: queue.Queue = queue.Queue()

    def held(msg: dict) -> str:
        entered.put(1)
        gate.wait(10)
        return "held"

    service = env.service({"echo": lambda m: m["x"]}, workers=2)
    service.register("held", held, inline=True)
    service.register("held", held)
    held_caller, _ = in_thread(lambda: env.rh.doRequest({"cmd": "held"}, timeout=20))
    entered.get(timeout=10)
    try:
        assert env.rh.doRequest({"cmd": "echo", "x": 2}, timeout=10)["data"] == 2
    finally:
        gate.set()
        held_caller.join(10)


def test_reconnects_by_itself_after_server_restart_on_same_port() -> None:
    """After the server stops and a new one starts on the same port, the service reconnects by itself
    and requests flow again."""
    first = Env()
    svc = None
    second = None
    try:
        svc = first.service({"echo": lambda m: m["x"]})
        assert first.rh.doRequest({"cmd": "echo", "x": 1}, timeout=10)["data"] == 1
        port = first.server.port
        first.server.stop()  # the server only: the service stays running
        second = Env(port=port)
        assert second.server.port == port
        second.wait_event("open", timeout=15)
        assert second.rh.doRequest({"cmd": "echo", "x": 2}, timeout=10)["data"] == 2
        assert svc.connections_made == 2
    finally:
        if svc is not None:
            svc.stop()
        first.close()  # stopping twice is harmless
        if second is not None:
            second.close()


def test_result_not_json_serializable_gives_500(env: Env) -> None:
    """A command whose result cannot be JSON-encoded gives RequestError with status 500."""
    env.service({"set": lambda m: {1, 2, 3}, "obj": lambda m: {"x": object()}})
    for cmd in ("set", "obj"):
        with pytest.raises(syncws.RequestError) as info:
            env.rh.doRequest({"cmd": cmd}, timeout=5)
        assert info.value.status == 500, cmd
    assert env.rh.pending == 0


def test_result_that_cannot_be_sent_still_gets_an_answer(env: Env) -> None:
    """A bytes-like result the service cannot send as it is (a non-contiguous memoryview) still gets an
    answer, its bytes or an error reply, never silence until the caller times out."""
    env.service({"strided": lambda m: memoryview(bytearray(b"abcdef"))[::2]})
    try:
        reply = env.rh.doRequest({"cmd": "strided"}, timeout=2)
    except syncws.RequestError as exc:
        assert exc.status == 500
    else:
        assert reply["data"] == b"ace"


def test_start_returns_once_requests_can_reach_the_service(env: Env) -> None:
    """Once start() returns, doRequest reaches the service: never NotConnected right after start()."""
    not_connected = 0
    for _ in range(500):
        svc = syncws.RemoteService(env.url, backoff_min=0.05, backoff_max=0.2)
        svc.register("echo", lambda m: m["x"])
        try:
            svc.start(timeout=10)
            try:
                assert env.rh.doRequest({"cmd": "echo", "x": 1}, timeout=10)["data"] == 1
            except syncws.NotConnected:
                not_connected += 1
        finally:
            svc.stop()
        env.wait_event("open")
        env.wait_event("close")  # the old connection is gone before the next one
    assert not_connected == 0, f"NotConnected right after start() in {not_connected} of 500 tries"


# ---------------------------------------------------------------------- numpy


def _arrays() -> list[Any]:
    return [
        ("float64-2x3", lambda np: np.arange(6, dtype=np.float64).reshape(2, 3) / 7),
        ("int8-1d", lambda np: np.arange(-128, 128, dtype=np.int8)),
        ("uint16-3d", lambda np: np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)),
        ("bool", lambda np: np.array([True, False, True])),
        ("complex128", lambda np: np.arange(4) * (1 + 2j)),
        ("float16", lambda np: np.linspace(0, 1, 5, dtype=np.float16)),
        ("float32-fortran", lambda np: np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))),
        ("int64-strided", lambda np: np.arange(20, dtype=np.int64)[::3]),
        ("big-endian-int32", lambda np: np.arange(6, dtype=">i4").reshape(3, 2)),
        ("float64-large", lambda np: np.random.default_rng(1).random((300, 500))),
        ("empty-1d", lambda np: np.zeros(0, dtype=np.float32)),
        ("empty-0x3", lambda np: np.zeros((0, 3))),
        ("zero-dim", lambda np: np.array(2.5)),
        ("structured", lambda np: np.array([(1, 2.0), (3, 4.0)], dtype=[("a", "<i4"), ("b", "<f8")])),
        ("datetime64", lambda np: np.arange(3).astype("datetime64[s]")),
    ]


@pytest.mark.parametrize("name,make", _arrays(), ids=[n for n, _ in _arrays()])
def test_numpy_arrays_round_trip_with_dtype_and_shape(env: Env, name: str, make: Any) -> None:
    """A numpy array result comes back as an ndarray equal to it, with the same dtype and shape."""
    numpy = pytest.importorskip("numpy")
    expected = make(numpy)
    env.service({"array": lambda m: make(numpy)}, part_size=50_000)
    reply = env.rh.doRequest({"cmd": "array"}, timeout=2)
    data = reply["data"]
    assert isinstance(data, numpy.ndarray)
    assert data.dtype == expected.dtype
    assert data.shape == expected.shape
    assert numpy.array_equal(data, expected)


def test_numpy_array_result_is_writable(env: Env) -> None:
    """An array result arrives in memory of its own: the caller may change it in place."""
    numpy = pytest.importorskip("numpy")
    env.service({"array": lambda m: numpy.arange(200_000, dtype=numpy.float64)}, part_size=50_000)
    data = env.rh.doRequest({"cmd": "array"}, timeout=10)["data"]
    data *= 2
    assert data[-1] == 2 * 199_999

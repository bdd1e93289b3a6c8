"""RemoteService: commands, start/stop, concurrency of requests, reconnection and result encoding."""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
import time
from typing import Any, Callable

import pytest

import syncws
import syncws.peer.remote_worker

from ..helpers import wait_for
from ..peers import NAME, Env, in_thread

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


def test_quick_commands_run_on_the_thread_that_read_them(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that returns before the hand-over time runs on the leader, which reads on: one thread answers a series of requests."""
    monkeypatch.setattr(syncws.peer.remote_worker, "HAND_OVER_AFTER", 60.0)  # no command here is slow enough to be relieved
    names: list[str] = []
    env.service({"name": lambda m: names.append(threading.current_thread().name)}, workers=4)
    for _ in range(20):
        env.rh.doRequest({"cmd": "name"}, timeout=10)
    assert len(names) == 20 and len(set(names)) == 1, names


def _assert_held_command_is_relieved(env: Env, quick_first: bool) -> None:
    """Run a command that holds on until released; requests behind it must be answered by other workers meanwhile."""
    gate = threading.Event()
    names: queue.Queue = queue.Queue()

    def held(msg: dict) -> str:
        names.put(threading.current_thread().name)
        gate.wait(10)
        return "held"

    env.service({"held": held, "name": lambda m: threading.current_thread().name}, workers=2)
    if quick_first:
        env.rh.doRequest({"cmd": "name"}, timeout=10)  # a quick run ends: the watchdog looks again in 2 ms, untold
    held_caller, held_results = in_thread(lambda: env.rh.doRequest({"cmd": "held"}, timeout=20))
    held_by = names.get(timeout=10)
    try:
        answered_by = {env.rh.doRequest({"cmd": "name"}, timeout=10)["data"] for _ in range(3)}
        assert held_by not in answered_by, (held_by, answered_by)
    finally:
        gate.set()
    held_caller.join(10)
    assert held_results.get_nowait()[1]["data"] == "held"


def test_long_command_gives_the_reading_to_another_worker(env: Env) -> None:
    """A command still running after the hand-over time is relieved of the reading: requests behind it are answered while it runs."""
    _assert_held_command_is_relieved(env, quick_first=False)


def test_long_command_right_after_a_quick_one_is_relieved_too(env: Env) -> None:
    """A long command that starts while the watchdog still looks after a quick one (untold of the new run) is relieved of the reading."""
    _assert_held_command_is_relieved(env, quick_first=True)


def test_command_that_asks_the_server_back_lets_another_worker_read_at_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that calls request() on its own connection hands the reading on before it waits, not after the hand-over time."""
    monkeypatch.setattr(syncws.peer.remote_worker, "HAND_OVER_AFTER", 60.0)  # were it left to the watchdog, the reply would wait a minute
    env.rh.register("settings", lambda request, conn: {"TR": 2.0})
    holder: dict[str, Any] = {}
    holder["service"] = env.service({"ask": lambda m: holder["service"].request({"cmd": "settings"}, timeout=10)["data"]})
    assert env.rh.doRequest({"cmd": "ask"}, timeout=10)["data"] == {"TR": 2.0}


def test_command_waiting_for_its_cancel_lets_another_worker_read_at_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command in wait_cancelled() hands the reading on first, so the caller's cancel reaches it long before the hand-over time."""
    monkeypatch.setattr(syncws.peer.remote_worker, "HAND_OVER_AFTER", 60.0)
    started, cancelled = threading.Event(), threading.Event()

    def wait_for_cancel(msg: dict) -> None:
        call = syncws.current_call()
        assert call is not None
        started.set()
        if call.wait_cancelled(30):
            cancelled.set()

    env.service({"wait": wait_for_cancel})
    with pytest.raises(syncws.RequestTimeout):
        env.rh.doRequest({"cmd": "wait"}, timeout=0.5)
    assert started.is_set()
    assert cancelled.wait(10)


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


# ---------------------------------------------------------------------- refusals, stopping, timeouts


def test_start_to_a_wrong_path_raises_handshake_error_at_once(env: Env) -> None:
    """start(timeout=5) to a path the server does not serve raises HandshakeError 404 at once, with the server's error
    text and without websocket-client's header dump, and stops trying."""
    svc = syncws.RemoteService(env.server.url + "/noSuchPath", backoff_min=0.05, backoff_max=0.2)
    env.add_cleanup(svc.stop)
    start = time.monotonic()
    with pytest.raises(syncws.HandshakeError) as info:
        svc.start(timeout=5)
    assert time.monotonic() - start < 2.0
    assert info.value.status == 404
    assert "/noSuchPath" in info.value.reason, info.value.reason  # the server's text: "no endpoint at '/noSuchPath'"
    assert "-+-+-" not in str(info.value) and "content-length" not in str(info.value).lower()
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert not svc.connected and not svc.wait_connected(0)
    assert svc._thread is None


def test_connect_refused_raises_handshake_error_with_the_server_text() -> None:
    """connect() to a refusing server raises HandshakeError with the status and the server's error text, never the header dump."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), auth=lambda request: 403).start()
    try:
        server.add_handler("/guarded", syncws.BaseWebSocketHandler)
        for url, status in ((server.url + "/missing", 404), (server.url + "/guarded", 403)):
            with pytest.raises(syncws.HandshakeError) as info:
                syncws.connect(url, timeout=5)
            assert info.value.status == status
            assert info.value.reason and "-+-+-" not in str(info.value), str(info.value)
    finally:
        server.stop()


def test_run_forever_raises_handshake_error_on_a_permanent_refusal(env: Env) -> None:
    """run_forever() to a path the server does not serve raises HandshakeError 404 on its thread instead of retrying forever."""
    svc = syncws.RemoteService(env.server.url + "/noSuchPath", backoff_min=0.05, backoff_max=0.2)
    env.add_cleanup(svc.stop)
    runner, results = in_thread(svc.run_forever)
    runner.join(5)
    assert not runner.is_alive(), "run_forever is still retrying"
    kind, value, _ = results.get_nowait()
    assert kind == "err" and isinstance(value, syncws.HandshakeError) and value.status == 404, value


def test_start_keeps_retrying_through_503_at_the_connection_limit() -> None:
    """A 503 (the server at its connection limit) is transient: start() retries with backoff and connects once a place frees up."""
    registry = syncws.ConnectionRegistry()
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=registry, max_connections=1, close_timeout=1.0).start()
    server.add_handler("/" + NAME, syncws.BaseWebSocketHandler, name=NAME)
    holder = syncws.connect(server.url + "/" + NAME, timeout=5)
    svc = syncws.RemoteService(server.url + "/" + NAME, backoff_min=0.05, backoff_max=0.1)
    try:
        with pytest.raises(syncws.HandshakeError) as info:
            syncws.connect(server.url + "/" + NAME, timeout=5)
        assert info.value.status == 503 and not info.value.permanent
        starter, results = in_thread(lambda: svc.start(timeout=20))
        assert not svc.wait_connected(0.3)  # refused with 503 meanwhile, and still trying
        assert starter.is_alive()
        holder.close()
        starter.join(15)
        kind, value, _ = results.get_nowait()
        assert kind == "ok", value
        assert svc.connected
    finally:
        svc.stop()
        holder.abort()
        server.stop()


def test_stop_closes_with_1000_and_a_closing_handshake(env: Env) -> None:
    """stop() closes the connection with code 1000 and a closing handshake: the server sees 1000, not 1006."""
    svc = env.service({"echo": lambda m: m["x"]})
    handler = env.registry.newest(NAME)
    assert handler is not None
    start = time.monotonic()
    svc.stop()
    assert time.monotonic() - start < 1.0
    env.wait_event("close")
    assert handler.connection.wait_closed(5)
    assert handler.close_code == 1000, handler.close_code


@pytest.mark.parametrize("timeout", [math.nan, -1.0, -math.inf])
def test_start_and_wait_connected_refuse_nan_and_negative_timeouts(env: Env, timeout: float) -> None:
    """start() and wait_connected() raise ValueError for a NaN or negative timeout, before anything starts."""
    svc = syncws.RemoteService(env.url, backoff_min=0.05, backoff_max=0.2)
    env.add_cleanup(svc.stop)
    with pytest.raises(ValueError):
        svc.start(timeout=timeout)
    assert svc._thread is None and svc.connections_made == 0
    with pytest.raises(ValueError):
        svc.wait_connected(timeout)
    with pytest.raises(ValueError):
        syncws.connect(env.url, timeout=timeout)


@pytest.mark.parametrize("timeout", [math.inf, 1e300, None])
def test_start_and_wait_connected_take_infinite_timeouts(env: Env, timeout: Any) -> None:
    """start() and wait_connected() take math.inf, 1e300 and None as "no bound" and return once connected."""
    svc = syncws.RemoteService(env.url, backoff_min=0.05, backoff_max=0.2, connect_timeout=timeout)
    env.add_cleanup(svc.stop)
    svc.register("echo", lambda m: m["x"])
    assert svc.start(timeout=timeout) is svc
    assert svc.wait_connected(timeout)
    env.wait_event("open")
    assert env.rh.doRequest({"cmd": "echo", "x": 1}, timeout=timeout)["data"] == 1


# ---------------------------------------------------------------------- requests the service cannot take


def _deep_request(call_id: int) -> str:
    return '{"cmd": "echo", "x": ' + "[" * 100_000 + "]" * 100_000 + f', "callId": {call_id}}}'


@pytest.mark.parametrize(
    "make",
    [
        lambda call_id: json.dumps({"callId": call_id, "data": 1}),  # no cmd
        lambda call_id: json.dumps({"cmd": 5, "callId": call_id}),
        lambda call_id: json.dumps({"cmd": None, "callId": call_id}),
        lambda call_id: json.dumps({"cmd": ["echo"], "callId": call_id}),
        _deep_request,  # not parseable (too deep), but its callId is at the end where RequestHandler puts it
    ],
    ids=["no-cmd", "int-cmd", "null-cmd", "list-cmd", "too-deep"],
)
def test_request_the_service_cannot_take_gets_400_at_once(env: Env, make: Callable[[int], str]) -> None:
    """A request without a str cmd, or one too deep to parse, is answered with 400 and its callId: the caller is released at once."""
    env.service({"echo": lambda m: m["x"]})
    call_id, conn = env.rh.prepare_request({"cmd": "placeholder"})
    start = time.monotonic()
    conn.write_message(make(call_id))
    with pytest.raises(syncws.RequestError) as info:
        env.rh.get_response(call_id, timeout=None)
    assert time.monotonic() - start < 2.0
    assert info.value.status == 400 and info.value.response["callId"] == call_id
    assert env.rh.doRequest({"cmd": "echo", "x": "after"}, timeout=10)["data"] == "after"


def test_message_that_is_no_request_gets_400_and_a_reply_gets_no_answer() -> None:
    """Binary, non-JSON and non-object messages get a 400 reply without a callId; a reply-like message (a status, no cmd) is not answered."""
    raw = syncws.ConnectionRegistry()
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=raw, close_timeout=1.0).start()
    inbox: queue.Queue = queue.Queue()
    opened: queue.Queue = queue.Queue()
    server.add_handler("/raw", syncws.BaseWebSocketHandler, name="raw", callback=lambda h, m: inbox.put(m), connNotify=lambda n, e: opened.put(e))
    svc = syncws.RemoteService(server.url + "/raw", backoff_min=0.05, backoff_max=0.2)
    svc.register("echo", lambda m: m["x"])
    try:
        svc.start(timeout=10)
        assert opened.get(timeout=5) == "open"
        handler = raw.newest("raw")
        assert handler is not None
        for message in (b"\x00binary", "not json", "[1, 2]", '"text"', "null", "{}"):
            handler.write_message(message)
            reply = json.loads(inbox.get(timeout=5))
            assert reply["status"] == 400 and reply["callId"] is None and reply["error"], (message, reply)
        handler.write_message({"callId": 7, "status": 200, "data": 1})  # a reply: answering it could loop
        handler.write_message({"cmd": "echo", "callId": 8, "x": "next"})
        reply = json.loads(inbox.get(timeout=5))
        assert reply["callId"] == 8 and reply["data"] == "next", reply
    finally:
        svc.stop()
        server.stop()


def test_junk_to_the_service_is_logged_a_few_times_with_the_suppressed_count(caplog: pytest.LogCaptureFixture) -> None:
    """5,000 junk messages to a RemoteService give a handful of warnings, one counting the suppressed ones, and a real request still works after them."""
    caplog.set_level(logging.WARNING, logger="syncws")
    env = Env()
    try:
        svc = env.service({"echo": lambda m: m["x"]})
        handler = env.registry.newest(NAME)
        assert handler is not None
        for i in range(5000):
            handler.write_message("junk" if i % 2 else b"\x00junk")
        # Its 5,000 answers (400, no callId) come back before the reply to this request.
        assert env.rh.doRequest({"cmd": "echo", "x": "after"}, timeout=20)["data"] == "after"
        svc.stop()  # the count still suppressed is logged when the connection closes
        assert wait_for(lambda: any("suppressed" in r.getMessage() for r in caplog.records if r.name == "syncws.peer.remote"), 10)
        for logger_name in ("syncws.peer.remote", "syncws.server.request_handler"):  # the service's log, and the server's log of its 400s
            lines = [r.getMessage() for r in caplog.records if r.name == logger_name and r.levelno >= logging.WARNING]
            assert 1 <= len(lines) <= 5, (logger_name, lines)
        remote_lines = [r.getMessage() for r in caplog.records if r.name == "syncws.peer.remote" and r.levelno >= logging.WARNING]
        assert any("4999 similar messages suppressed" in line for line in remote_lines), remote_lines
    finally:
        env.close()


def test_refusal_while_reconnecting_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    """Once connected, a 404 while reconnecting (a restarted server that has not added its endpoint yet) is retried
    with backoff, and the service comes back when the endpoint is there."""
    caplog.set_level(logging.WARNING, logger="syncws.peer.remote")
    first = Env()
    svc = None
    second = None
    try:
        svc = first.service({"echo": lambda m: m["x"]})
        port = first.server.port
        first.server.stop()
        second = syncws.WebSocketServer("127.0.0.1", port, registry=syncws.ConnectionRegistry(), close_timeout=1.0).start()
        assert wait_for(lambda: any("HTTP 404" in r.getMessage() for r in caplog.records), 15)
        rh = syncws.RequestHandler(NAME, second)
        opened: queue.Queue = queue.Queue()
        second.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME, callback=rh.callback, connNotify=lambda n, e: opened.put(e))
        assert opened.get(timeout=15) == "open"
        assert rh.doRequest({"cmd": "echo", "x": 2}, timeout=10)["data"] == 2
        assert svc.connections_made == 2
    finally:
        if svc is not None:
            svc.stop()
        first.close()
        if second is not None:
            second.stop()


# ---------------------------------------------------------------------- stop(drain=...)


def test_stop_with_drain_lets_a_running_command_send_its_reply(env: Env) -> None:
    """stop(drain=...) while a command runs: the command finishes, its reply reaches the server's caller, then the service closes with 1000."""
    started, release = threading.Event(), threading.Event()
    env.add_cleanup(release.set)

    def slow(msg: dict) -> str:
        started.set()
        release.wait(20)
        return "finished"

    service = env.service({"slow": slow})
    handler = env.registry.newest(NAME)
    _, result = in_thread(lambda: env.rh.doRequest({"cmd": "slow"}, timeout=20))
    assert started.wait(5)
    _, stopped = in_thread(lambda: service.stop(drain=10))
    wait_for(lambda: service.draining, timeout=5)
    assert stopped.empty()  # still draining: the command runs
    release.set()
    kind, value, _ = result.get(timeout=10)
    assert kind == "ok" and value["data"] == "finished"
    assert stopped.get(timeout=10)[0] == "ok"
    assert handler.connection.wait_closed(5) and handler.close_code == 1000


def test_stop_with_drain_answers_new_requests_503(env: Env) -> None:
    """While draining, a new request from the server is answered 503 at once, and the running one still finishes."""
    started, release = threading.Event(), threading.Event()
    env.add_cleanup(release.set)
    service = env.service({"slow": lambda m: started.set() or (release.wait(20) and "done"), "echo": lambda m: m["x"]})
    _, first = in_thread(lambda: env.rh.doRequest({"cmd": "slow"}, timeout=20))
    assert started.wait(5)
    in_thread(lambda: service.stop(drain=10))
    wait_for(lambda: service.draining, timeout=5)
    with pytest.raises(syncws.RequestError) as refused:
        env.rh.doRequest({"cmd": "echo", "x": 1}, timeout=5)
    assert refused.value.status == 503 and "stopping" in str(refused.value)
    release.set()
    assert first.get(timeout=10)[1]["data"] == "done"


def test_stop_with_drain_gives_up_after_the_drain_time(env: Env) -> None:
    """A command still running when the drain time is over: the service closes anyway and the server's caller gets ConnectionClosed."""
    release = threading.Event()
    env.add_cleanup(release.set)
    started = threading.Event()
    service = env.service({"stuck": lambda m: started.set() or release.wait(30)})
    _, result = in_thread(lambda: env.rh.doRequest({"cmd": "stuck"}, timeout=30))
    assert started.wait(5)
    service.stop(drain=0.3)
    kind, value, _ = result.get(timeout=10)
    assert kind == "err" and isinstance(value, syncws.ConnectionClosed)


def test_stop_with_drain_lets_the_services_own_request_get_its_reply(env: Env) -> None:
    """stop(drain=...) while the service waits on its own request to the server: the reply still arrives."""
    started, release = threading.Event(), threading.Event()
    env.add_cleanup(release.set)
    env.rh.register("slow", lambda request, conn: started.set() or (release.wait(20) and "server done"))
    service = env.service({})
    _, result = in_thread(lambda: service.request({"cmd": "slow"}, timeout=20))
    assert started.wait(5)
    _, stopped = in_thread(lambda: service.stop(drain=10))
    wait_for(lambda: service.draining, timeout=5)
    release.set()
    kind, value, _ = result.get(timeout=10)
    assert kind == "ok" and value["data"] == "server done"
    assert stopped.get(timeout=10)[0] == "ok"


def test_stop_refuses_a_bad_drain() -> None:
    """stop(drain=-1) or NaN raises ValueError before anything stops."""
    service = syncws.RemoteService("ws://127.0.0.1:9/x")
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError):
            service.stop(drain=bad)

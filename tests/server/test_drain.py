"""stop(drain=...): stop accepting at once, let the work in flight finish, then close the rest with 1001."""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from typing import Any

import pytest

import syncws
from syncws.server.drain import check_drain

from ..helpers import wait_for
from ..peers import Env, in_thread

pytestmark = pytest.mark.timeout(60)


def refuses_connections(port: int) -> bool:
    """True when nothing accepts TCP connections on 127.0.0.1:``port`` any more.

    A reset counts too: a connection still in the listen backlog when the
    listening socket closes is reset, not served.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def blocking_service(env: Env) -> tuple[threading.Event, threading.Event]:
    """A RemoteService whose ``block`` command waits for ``release``; ``arrived`` is set when it starts."""
    arrived, release = threading.Event(), threading.Event()

    def block(msg: dict[str, Any]) -> str:
        arrived.set()
        release.wait(30)
        return "finished"

    env.service({"block": block, "echo": lambda msg: msg["x"]})
    env.add_cleanup(release.set)
    return arrived, release


def test_call_in_flight_completes_during_drain_and_new_connections_are_refused(env: Env) -> None:
    """During stop(drain=5) the listening socket is closed at once, and a call in flight gets its reply before stop returns."""
    arrived, release = blocking_service(env)
    _, outcome = in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30))
    assert arrived.wait(10)
    _, stopped = in_thread(lambda: env.server.stop(drain=5))
    assert wait_for(lambda: refuses_connections(env.server.port), timeout=5), "still accepting while draining"
    assert stopped.empty(), "stop() returned while a call was in flight"
    release.set()
    kind, reply, _ = outcome.get(timeout=10)
    assert kind == "ok" and reply["data"] == "finished"
    assert stopped.get(timeout=10)[0] == "ok"


def test_open_connections_keep_working_while_draining(env: Env) -> None:
    """While a drain waits on one call, the same peer answers a new call, and an echo client is still echoed."""
    arrived, release = blocking_service(env)
    env.server.add_handler("/echo", EchoHandler)
    echo = syncws.connect(env.server.url + "/echo")
    try:
        in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30))
        assert arrived.wait(10)
        _, stopped = in_thread(lambda: env.server.stop(drain=10))
        assert wait_for(lambda: refuses_connections(env.server.port), timeout=5)
        assert env.rh.doRequest({"cmd": "echo", "x": 7}, timeout=10)["data"] == 7
        echo.send("still open")
        assert echo.recv(timeout=5) == "still open"
        assert stopped.empty()
        release.set()
        assert stopped.get(timeout=10)[0] == "ok"
    finally:
        echo.abort()


class EchoHandler(syncws.BaseWebSocketHandler):
    def on_message(self, message: Any) -> None:
        self.write_message(message)


def test_drain_expiry_closes_with_1001_and_fails_the_waiting_call(env: Env) -> None:
    """A call still running when the drain ends fails with ConnectionClosed 1001, and stop returns soon after the drain."""
    arrived, _ = blocking_service(env)
    _, outcome = in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30))
    assert arrived.wait(10)
    started = time.monotonic()
    env.server.stop(drain=0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 0.5 + 1.0 + 1.0  # the drain, then close_timeout (1 s here) at most
    kind, error, _ = outcome.get(timeout=5)
    assert kind == "err" and isinstance(error, syncws.ConnectionClosed) and error.code == 1001


def test_stop_without_drain_fails_the_call_at_once(env: Env) -> None:
    """stop() with no drain keeps its old behaviour: the waiting call fails at once with 1001, whatever the peer would answer."""
    arrived, _ = blocking_service(env)
    _, outcome = in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30))
    assert arrived.wait(10)
    started = time.monotonic()
    env.server.stop()
    kind, error, failed_at = outcome.get(timeout=5)
    assert kind == "err" and isinstance(error, syncws.ConnectionClosed) and error.code == 1001
    assert failed_at - started < 0.5


def test_second_stop_cuts_a_drain_short(env: Env) -> None:
    """A stop() without drain while stop(drain=30) waits makes the draining stop close at once and fail the call."""
    arrived, _ = blocking_service(env)
    _, outcome = in_thread(lambda: env.rh.doRequest({"cmd": "block"}, timeout=30))
    assert arrived.wait(10)
    _, stopped = in_thread(lambda: env.server.stop(drain=30))
    assert wait_for(lambda: refuses_connections(env.server.port), timeout=5)
    cut_at = time.monotonic()
    env.server.stop()
    kind, _, returned_at = stopped.get(timeout=5)
    assert kind == "ok" and returned_at - cut_at < 2.5
    assert isinstance(outcome.get(timeout=5)[1], syncws.ConnectionClosed)


def test_message_being_handled_finishes_and_its_reply_goes_out() -> None:
    """A handler still inside on_message when stop(drain=5) begins finishes, and its reply reaches the client before the 1001 close."""
    inside, release = threading.Event(), threading.Event()

    class Slow(syncws.BaseWebSocketHandler):
        def on_message(self, message: Any) -> None:
            inside.set()
            release.wait(20)
            self.write_message(f"done: {message}")

    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()
    server.add_handler("/slow", Slow)
    client = syncws.connect(server.url + "/slow")
    try:
        client.send("work")
        assert inside.wait(10)
        _, stopped = in_thread(lambda: server.stop(drain=5))
        assert wait_for(lambda: refuses_connections(server.port), timeout=5)
        release.set()
        assert client.recv(timeout=10) == "done: work"
        assert client.recv(timeout=10) is None
        assert client.close_code == 1001
        assert stopped.get(timeout=10)[0] == "ok"
    finally:
        release.set()
        client.abort()
        server.stop()


def test_drain_checks_count_and_a_failing_check_does_not_hold_a_stop(caplog: pytest.LogCaptureFixture) -> None:
    """add_drain_check's counts hold a drain until they reach 0; a check that raises is logged and counts as 0."""
    busy: queue.Queue[int] = queue.Queue()
    level = [2]
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()

    def count() -> int:
        busy.put(level[0])
        return level[0]

    def broken() -> int:
        raise RuntimeError("check is broken")

    server.add_drain_check(count)
    server.add_drain_check(broken)
    _, stopped = in_thread(lambda: server.stop(drain=10))
    assert busy.get(timeout=5) == 2 and busy.get(timeout=5) == 2  # checked again while it is not 0
    assert stopped.empty()
    level[0] = 0
    assert stopped.get(timeout=5)[0] == "ok"
    assert any("drain check" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_drain_refuses_nan_and_negative_seconds() -> None:
    """stop(drain=NaN or -1) raises ValueError before stopping anything; None and 0 mean no drain."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()
    try:
        for bad in (float("nan"), -1):
            with pytest.raises(ValueError):
                server.stop(drain=bad)
        assert not refuses_connections(server.port)
    finally:
        server.stop()
    assert check_drain(None) == 0.0 and check_drain(0) == 0.0 and check_drain(2.5) == 2.5


def test_drain_does_not_wait_for_the_handler_that_stops_the_server() -> None:
    """A handler that calls stop(drain=5) from its own on_message is not work in flight for that drain: stop returns at once."""
    took: queue.Queue[float] = queue.Queue()

    class Stopper(syncws.BaseWebSocketHandler):
        def on_message(self, message: Any) -> None:
            started = time.monotonic()
            server.stop(drain=5)
            took.put(time.monotonic() - started)

    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), close_timeout=1.0).start()
    server.add_handler("/stop", Stopper)
    client = syncws.connect(server.url + "/stop")
    try:
        client.send("stop now")
        assert took.get(timeout=10) < 2.5  # close_timeout for this very connection at most, never the drain
        assert client.recv(timeout=5) is None and client.close_code == 1001
    finally:
        client.abort()
        server.stop()

"""Faults over real sockets: stalled, half-open and non-reading peers, stops under load, restarts, garbage.

Every server is on 127.0.0.1, port 0 (or the port a stopped one had), and
every test stops what it started. Peers are raw sockets that misbehave on
purpose, websocket-client and syncws client connections that behave, an
in-process RemoteService, and the demo peer (``python -m syncws peer URL``)
in a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import websocket

import syncws
from syncws import frames
from syncws.cli.demo import demo_payload

from .helpers import RawClient, make_server, syncws_threads, wait_for
from .peers import NAME, Env, FakePeer, in_thread

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def half_frame() -> bytes:
    """The first part of a masked binary frame that announces 1000 bytes of payload and carries 10."""
    key = os.urandom(4)
    return frames.encode_header(frames.OP_BINARY, 1000, True, key) + os.urandom(10)


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in syncws_threads() if t not in before]


class ClosedWatch(syncws.BaseWebSocketHandler):
    """Registers under its endpoint name and reports (name, close code, time) when on_close runs."""

    closed: queue.Queue = queue.Queue()

    def on_close(self) -> None:
        super().on_close()
        self.closed.put((self.name, self.connection.close_code, time.monotonic()))


@pytest.fixture
def watch() -> queue.Queue:
    """A fresh queue for ClosedWatch.on_close reports."""
    ClosedWatch.closed = queue.Queue()
    return ClosedWatch.closed


# ---------------------------------------------------------------------- (a) a peer stalled mid-message


def test_peer_stalled_mid_message_holds_up_nobody_and_is_dropped_when_the_server_stops() -> None:
    """A peer that sent half a frame and went quiet blocks no other connection; stop() still returns within close_timeout + 2 s."""
    before = set(syncws_threads())
    srv = make_server(close_timeout=1.0)
    stalled = RawClient(srv.port)
    ws = None
    try:
        assert stalled.handshake().startswith(b"HTTP/1.1 101")
        stalled.send_raw(half_frame())
        ws = websocket.create_connection(srv.url + "/echo", timeout=5)  # a new connection is accepted meanwhile
        latencies = []
        for i in range(50):
            started = time.monotonic()
            ws.send(f"message {i}")
            assert ws.recv() == f"message {i}"
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0
        ws.close()
        ws = None
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < srv.close_timeout + 2
        assert stalled.recv_close() == (1001, "server shutting down")  # it was asked to close, then dropped
        assert stalled.at_eof(5)
        assert wait_for(lambda: not new_threads(before), 5), new_threads(before)
    finally:
        if ws is not None:
            ws.close()
        stalled.close()
        srv.stop()


# ---------------------------------------------------------------------- (b) half-open connections and keepalive


@pytest.mark.parametrize("stall", ["after_handshake", "mid_message"])
def test_half_open_peer_is_found_by_keepalive_and_on_close_runs(stall: str, watch: queue.Queue) -> None:
    """A peer that neither reads nor answers is dropped by keepalive (ping 0.2 s, timeout 0.3 s) with 1006; its on_close runs; a healthy peer stays."""
    srv = make_server(ping_interval=0.2, ping_timeout=0.3, close_timeout=1.0)
    srv.add_handler("/watch", ClosedWatch, name="watch")
    healthy = FakePeer(srv.url + "/echo")  # syncws client: its reader answers the server's pings
    raw = RawClient(srv.port)
    try:
        assert raw.handshake("/watch").startswith(b"HTTP/1.1 101")
        if stall == "mid_message":
            raw.send_raw(half_frame())
        opened = time.monotonic()
        name, code, closed_at = watch.get(timeout=5)
        assert (name, code) == ("watch", 1006)
        assert closed_at - opened < 3.0
        assert srv.registry.connections("watch") == []
        healthy.conn.send("still alive")
        assert healthy.inbox.get(timeout=5) == "still alive"
        assert not healthy.conn.closed
    finally:
        raw.close()
        healthy.close()
        srv.stop()


# ---------------------------------------------------------------------- (c) a peer that stops reading


def _slow_and_fast(srv: syncws.WebSocketServer, slow: RawClient) -> tuple[Any, Any]:
    """The server-side handlers of the raw non-reading client and of the other client on /room."""
    assert wait_for(lambda: len(srv.registry.connections("room")) == 2, 5)
    slow_address = slow.sock.getsockname()
    handlers = srv.registry.connections("room")
    slow_handler = next(h for h in handlers if tuple(h.request.remote_address) == tuple(slow_address))
    fast_handler = next(h for h in handlers if h is not slow_handler)
    return slow_handler, fast_handler


def test_non_reading_peer_times_out_its_writer_without_delaying_others() -> None:
    """Writing 1 MiB messages to a non-reading peer raises SendTimeout (send_timeout 0.5 s) within 15 s; another client gets every broadcast promptly."""
    srv = make_server(send_timeout=0.5, close_timeout=1.0)
    srv.add_handler("/room", syncws.BaseWebSocketHandler, name="room")
    slow = RawClient(srv.port)
    fast = None
    try:
        assert slow.handshake("/room").startswith(b"HTTP/1.1 101")  # and never reads again
        fast = websocket.create_connection(srv.url + "/room", timeout=5)
        slow_handler, fast_handler = _slow_and_fast(srv, slow)
        big = os.urandom(1 << 20)
        outcome: queue.Queue = queue.Queue()
        last_progress = [time.monotonic()]

        def writer() -> None:
            started = time.monotonic()
            try:
                for _ in range(500):  # 500 MiB at most; the kernel's buffers fill long before
                    slow_handler.write_message(big)
                    last_progress[0] = time.monotonic()
            except (syncws.SendTimeout, syncws.ConnectionClosed) as exc:
                outcome.put((exc, started, time.monotonic()))
                return
            outcome.put((None, started, time.monotonic()))

        thread = threading.Thread(target=writer, name="test-writer", daemon=True)
        thread.start()
        deliveries = []  # (sent at, latency)
        deadline = time.monotonic() + 15
        for i in range(100_000):
            if not thread.is_alive() or time.monotonic() > deadline:
                break
            sent_at = time.monotonic()
            syncws.sendWebSocketMessage("room", f"broadcast {i}", conn=fast_handler, registry=srv.registry)
            assert fast.recv() == f"broadcast {i}"
            deliveries.append((sent_at, time.monotonic() - sent_at))
        thread.join(5)
        error, started, ended = outcome.get(timeout=1)
        assert isinstance(error, (syncws.SendTimeout, syncws.ConnectionClosed)), "the writer was never stopped"
        assert ended - started < 15
        stalled_window = [lat for sent_at, lat in deliveries if last_progress[0] <= sent_at <= ended]
        assert len(stalled_window) >= 5, "no broadcast went out while the writer was stuck"
        assert max(lat for _, lat in deliveries) < 0.4
        assert statistics.median(lat for _, lat in deliveries) < 0.05
        # The stuck connection was aborted; the server forgets it and the other one goes on.
        assert wait_for(lambda: srv.registry.connections("room") == [fast_handler], 5)
        syncws.sendWebSocketMessage("room", "after", registry=srv.registry)
        assert fast.recv() == "after"
    finally:
        if fast is not None:
            fast.close()
        slow.close()
        srv.stop()


def test_broadcast_to_endpoint_with_non_reading_member_is_bounded_and_drops_it() -> None:
    """Broadcasting 1 MiB to an endpoint with a non-reading member: each call returns within send_timeout + 1 s, it is dropped, the other gets all."""
    srv = make_server(send_timeout=0.5, close_timeout=1.0)
    srv.add_handler("/room", syncws.BaseWebSocketHandler, name="room")
    slow = RawClient(srv.port)
    fast = None
    try:
        assert slow.handshake("/room").startswith(b"HTTP/1.1 101")
        fast = websocket.create_connection(srv.url + "/room", timeout=10)
        slow_handler, fast_handler = _slow_and_fast(srv, slow)
        received: queue.Queue = queue.Queue()

        def read_fast() -> None:
            for _ in range(1000):
                try:
                    received.put(len(fast.recv()))
                except (websocket.WebSocketException, OSError):
                    return

        reader = threading.Thread(target=read_fast, name="test-fast-reader", daemon=True)
        reader.start()
        big = os.urandom(1 << 20)
        sent = 0
        durations = []
        for _ in range(100):
            started = time.monotonic()
            syncws.sendWebSocketMessage("room", big, registry=srv.registry)
            durations.append(time.monotonic() - started)
            sent += 1
            if slow_handler not in srv.registry.connections("room"):
                break
        assert slow_handler not in srv.registry.connections("room"), "the non-reading member was never dropped"
        assert max(durations) < srv.send_timeout + 1.0
        assert slow_handler.connection.closed
        assert [received.get(timeout=5) for _ in range(sent)] == [1 << 20] * sent
        assert fast_handler in srv.registry.connections("room")
    finally:
        if fast is not None:
            fast.close()
        slow.close()
        srv.stop()


# ---------------------------------------------------------------------- (d) stop under load


def test_stop_under_load_releases_every_caller_with_connection_closed() -> None:
    """With the demo peer busy and 16 threads calling sleep/echo, stop() releases every caller (ConnectionClosed), ends every thread, frees the port."""
    before = set(syncws_threads())
    env = Env()
    port = env.server.port
    peer = subprocess.Popen([sys.executable, "-m", "syncws", "peer", env.url], stdin=subprocess.PIPE, cwd=str(ROOT))
    try:
        env.wait_event("open", timeout=30)
        assert env.rh.doRequest({"cmd": "echo", "data": "warm"}, timeout=10)["data"] == "warm"
        outcomes: queue.Queue = queue.Queue()

        def caller(index: int) -> None:
            deadline = time.monotonic() + 30
            for round_ in range(1000):
                if time.monotonic() > deadline:
                    outcomes.put((index, "still running at its deadline"))
                    return
                try:
                    if index % 2:
                        env.rh.doRequest({"cmd": "sleep", "seconds": 5}, timeout=30)
                    else:
                        reply = env.rh.doRequest({"cmd": "echo", "data": [index, round_]}, timeout=30)
                        assert reply["data"] == [index, round_]
                except syncws.ConnectionClosed:
                    outcomes.put((index, "ConnectionClosed"))
                    return
                except Exception as exc:
                    outcomes.put((index, repr(exc)))
                    return
            outcomes.put((index, "ran out of rounds"))

        threads = [threading.Thread(target=caller, args=(i,), name=f"test-caller-{i}", daemon=True) for i in range(16)]
        for thread in threads:
            thread.start()
        # 8 sleeps fill the peer's 8 workers, so the echoes queue behind them: all 16 wait.
        assert wait_for(lambda: env.rh.pending == 16, 15), f"{env.rh.pending} of 16 calls pending"
        started = time.monotonic()
        env.server.stop()
        assert time.monotonic() - started < env.server.close_timeout + 2
        for thread in threads:
            thread.join(5)
        assert not [t.name for t in threads if t.is_alive()]
        results = dict(outcomes.get(timeout=1) for _ in range(16))
        # The echoes are quick, so an echo caller may be between two calls when stop()
        # begins, and its next call find the connection gone (NotConnected): released too.
        # The sleeps are always waiting, and must all end with ConnectionClosed.
        released = {i: "ConnectionClosed" if r.startswith("NotConnected") and i % 2 == 0 else r for i, r in results.items()}
        assert released == {i: "ConnectionClosed" for i in range(16)}
        assert env.rh.pending == 0
        assert wait_for(lambda: not new_threads(before), 5), new_threads(before)
        again = syncws.WebSocketServer("127.0.0.1", port, registry=syncws.ConnectionRegistry())
        again.server_close()
    finally:
        env.close()
        if peer.stdin is not None:
            peer.stdin.close()
        try:
            peer.wait(2)  # it exits once its sleeping workers are done; no need to wait for that
        except subprocess.TimeoutExpired:
            peer.terminate()
            peer.wait(5)


# ---------------------------------------------------------------------- (e) server restart


def test_remote_service_reconnects_to_a_restarted_server_on_the_same_port() -> None:
    """An in-process RemoteService reconnects by itself each time the server on its port is replaced, and requests flow again."""
    env = Env()
    port = env.server.port
    svc = syncws.RemoteService(env.url, backoff_min=0.05, backoff_max=0.2)
    svc.register("echo", lambda msg: msg.get("data"))
    envs = [env]
    try:
        svc.start(timeout=10)
        env.wait_event("open")
        assert env.rh.doRequest({"cmd": "echo", "data": 0}, timeout=10)["data"] == 0
        for restart in range(1, 4):
            env.server.stop()
            assert wait_for(lambda: not svc.connected, 5)
            env = Env(port=port)
            envs.append(env)
            env.wait_event("open", timeout=10)
            assert env.rh.doRequest({"cmd": "echo", "data": restart}, timeout=10)["data"] == restart
            assert svc.connections_made == restart + 1
    finally:
        svc.stop()
        for e in envs:
            e.close()


# ---------------------------------------------------------------------- (f) garbage requests and replies


class RawSide:
    """A server endpoint that hands every message from its peer to a queue, and lets the test write anything to it."""

    def __init__(self) -> None:
        self.server = make_server(close_timeout=1.0)
        self.inbox: queue.Queue = queue.Queue()
        self.server.add_handler("/raw", syncws.BaseWebSocketHandler, name="raw", callback=lambda handler, message: self.inbox.put(message))
        self.url = self.server.url + "/raw"

    def handler(self) -> Any:
        assert wait_for(lambda: len(self.server.registry.connections("raw")) == 1, 10)
        return self.server.registry.connections("raw")[0]

    def reply(self, call_id: Any, timeout: float = 5.0) -> dict:
        """The next JSON reply with ``call_id`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            message = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(message, str):
                reply = json.loads(message)
                if reply.get("callId") == call_id:
                    return reply
        raise AssertionError(f"no reply with callId {call_id!r}")


def _deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


BAD_REQUESTS: list[tuple[str, Any, Any]] = [
    # (what, message, expected: the status of the error reply, or "reply" for any reply)
    ("malformed JSON", "{", 400),
    ("truncated JSON", '{"cmd": "echo", "callId": 1', 400),
    ("deep nesting", "[" * 100_000, 400),
    ("deep nesting inside a request", '{"cmd": "echo", "callId": 2, "data": ' + "[" * 100_000, 400),
    ("balanced deep nesting", "[" * 100_000 + "]" * 100_000, 400),
    ("not an object", "[1, 2]", 400),
    ("a string", '"echo"', 400),
    ("null", "null", 400),
    ("missing cmd", '{"callId": 3}', 400),
    ("empty object", "{}", 400),
    ("integer too long to parse", '{"cmd": "echo", "callId": 4, "data": 1' + "0" * 5000 + "}", 400),
    ("binary message", b"\x00\x01binary", 400),
    ("cmd of the wrong type", '{"cmd": 5, "callId": 5}', 400),
    ("cmd that is a list", '{"cmd": ["echo"], "callId": 6}', 400),
    ("unknown cmd", '{"cmd": "nope", "callId": 7}', 404),
    ("huge number as size", '{"cmd": "getBytes", "callId": 8, "size": 1' + "0" * 400 + ', "seed": 1}', 500),
    ("size of the wrong type", '{"cmd": "getBytes", "callId": 9, "size": "big", "seed": 1}', 500),
    ("missing fields", '{"cmd": "getBytes", "callId": 10}', 500),
    ("huge number as seconds", '{"cmd": "sleep", "callId": 11, "seconds": 1e400}', 500),
    ("huge number as data", '{"cmd": "echo", "callId": 12, "data": 1' + "0" * 400 + "}", "reply"),
    ("huge number as callId", '{"cmd": "echo", "callId": 1' + "0" * 400 + "}", "reply"),
    ("callId of the wrong type", '{"cmd": "echo", "callId": {"a": [1]}, "data": 1}', "reply"),
    ("lone surrogate", '{"cmd": "echo", "callId": 13, "data": "\\ud800"}', "reply"),
]


def test_garbage_requests_to_remote_service_get_answered_and_the_connection_lives(caplog: pytest.LogCaptureFixture) -> None:
    """Malformed JSON, wrong types, missing fields, huge numbers, deep nesting to a RemoteService: an error reply (400 and a warning
    for what is not a request), then the next is answered."""
    side = RawSide()
    svc = syncws.RemoteService(side.url, backoff_min=0.05, backoff_max=0.2, log_interval=0.0)  # every warning logged: each is checked
    svc.register("echo", lambda msg: msg.get("data"))
    svc.register("getBytes", lambda msg: demo_payload(int(msg["size"]), int(msg["seed"])))
    svc.register("sleep", lambda msg: threading.Event().wait(float(msg["seconds"])))  # only ever asked for an impossible wait
    try:
        svc.start(timeout=10)
        handler = side.handler()
        for index, (what, message, expected) in enumerate(BAD_REQUESTS):
            warnings_before = len([r for r in caplog.records if r.name == "syncws.peer.remote" and r.levelno >= logging.WARNING])
            handler.write_message(message)
            follow_up = 1000 + index
            handler.write_message({"cmd": "echo", "callId": follow_up, "data": what})
            # Every bad request gets a reply; it and the follow-up's may arrive in either order.
            raw = [side.inbox.get(timeout=5) for _ in range(2)]
            replies = [json.loads(m) for m in raw]
            others = [r for r in replies if r.get("callId") != follow_up]
            assert len(others) == 1, (what, replies)
            if isinstance(expected, int):
                assert others[0]["status"] == expected, (what, others[0])
            assert any(r.get("callId") == follow_up and r["data"] == what for r in replies), what
            if expected == 400:
                warnings = [r for r in caplog.records if r.name == "syncws.peer.remote" and r.levelno >= logging.WARNING]
                assert len(warnings) > warnings_before, f"{what}: nothing logged"
            assert svc.connected and svc.connections_made == 1, what
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        svc.stop()
        side.server.stop()


def test_result_too_deep_to_encode_gets_error_reply(caplog: pytest.LogCaptureFixture) -> None:
    """A command whose result nests too deep for JSON (RecursionError in json.dumps) gets a 500 error reply, like any unserializable result."""
    side = RawSide()
    svc = syncws.RemoteService(side.url, backoff_min=0.05, backoff_max=0.2)
    svc.register("deep", lambda msg: _deep(100_000))
    svc.register("echo", lambda msg: msg.get("data"))
    try:
        svc.start(timeout=10)
        handler = side.handler()
        handler.write_message({"cmd": "deep", "callId": 1})
        reply = side.reply(1)
        assert reply["status"] == 500, reply
        handler.write_message({"cmd": "echo", "callId": 2, "data": "after"})
        assert side.reply(2)["data"] == "after"
    finally:
        svc.stop()
        side.server.stop()


def _bad_replies(call_id: int) -> list[tuple[str, Any, Any]]:
    """(what, reply, expected): "dropped" (the call goes on waiting) or the RequestError status the caller gets."""
    zeros = "0" * 400
    return [
        ("malformed JSON", "{", "dropped"),
        ("deep nesting", "[" * 100_000, "dropped"),
        ("balanced deep nesting", "[" * 100_000 + "]" * 100_000, "dropped"),
        ("not an object", "[1, 2]", "dropped"),
        ("null", "null", "dropped"),
        ("missing callId", {"cmd": "q", "status": 200, "data": 1}, "dropped"),
        ("callId as a string", {"cmd": "q", "callId": str(call_id), "status": 200}, "dropped"),
        ("callId as a bool", {"cmd": "q", "callId": True, "status": 200}, "dropped"),
        ("callId as a float", {"cmd": "q", "callId": call_id + 0.5, "status": 200}, "dropped"),
        ("huge callId", '{"cmd": "q", "callId": 1' + "0" * 400 + ', "status": 200}', "dropped"),
        ("integer too long to parse", '{"cmd": "q", "callId": 1' + "0" * 5000 + "}", "dropped"),
        ("binary that is not a part", b"\x00\x01\x02", "dropped"),
        ("part header for an unknown call", b"SWSB" + struct.pack("!QIIQI", call_id + 10**6, 0, 1, 0, 0), "dropped"),
        ("part before its header", b"SWSB" + struct.pack("!QIIQI", call_id, 0, 1, 0, 0) + b"x", 502),
        ("status of the wrong type", {"cmd": "q", "callId": call_id, "status": "200"}, 500),
        ("huge status", f'{{"cmd": "q", "callId": {call_id}, "status": 1{zeros}}}', 10**400),
        ("huge binary size", f'{{"cmd": "q", "callId": {call_id}, "status": 200, "dataType": "bytes", "size": 1{zeros}, "parts": 1}}', 502),
        ("binary size of the wrong type", {"cmd": "q", "callId": call_id, "status": 200, "dataType": "bytes", "size": "1", "parts": 1}, 502),
        ("negative parts", {"cmd": "q", "callId": call_id, "status": 200, "dataType": "bytes", "size": 5, "parts": -1}, 502),
        ("infinite size", f'{{"cmd": "q", "callId": {call_id}, "status": 200, "dataType": "bytes", "size": 1e400, "parts": 1}}', 502),
    ]


class _Records(logging.Handler):
    """Every record of the loggers it is added to, in a queue a test waits on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: queue.Queue[logging.LogRecord] = queue.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)

    def drain(self) -> None:
        """Forget what was logged so far."""
        while not self.records.empty():
            self.records.get_nowait()


def test_garbage_replies_to_request_handler_are_dropped_or_fail_the_call_and_the_connection_lives(caplog: pytest.LogCaptureFixture) -> None:
    """Malformed, mistyped, huge or deep replies to a RequestHandler are logged and dropped or fail the call (RequestError); the next request succeeds."""
    caplog.set_level(logging.DEBUG, logger="syncws.server.request_handler")
    # On the selector engine a good reply is matched on the I/O thread and may wake its
    # caller before the worker has logged the junk sent before it: wait for the record.
    logged = _Records()
    logging.getLogger("syncws.server.request_handler").addHandler(logged)
    env = Env(log_interval=0.0)  # every piece of junk logged: the test checks each one is
    peer = None
    try:
        peer = env.fake_peer()
        handler = env.registry.newest(NAME)
        count = len(_bad_replies(0))
        for index in range(count):
            caller, result = in_thread(lambda: env.rh.doRequest({"cmd": "q"}, timeout=10))
            request = peer.recv_request()
            call_id = request["callId"]
            what, reply, expected = _bad_replies(call_id)[index]
            logged.drain()
            peer.send(reply)
            if expected == "dropped":
                peer.send({"cmd": "q", "callId": call_id, "status": 200, "data": what})
                kind, value, _ = result.get(timeout=5)
                assert kind == "ok" and value["data"] == what, (what, value)
                try:
                    logged.records.get(timeout=5)
                except queue.Empty:
                    pytest.fail(f"{what}: nothing logged")
            else:
                kind, value, _ = result.get(timeout=5)
                assert kind == "err" and isinstance(value, syncws.RequestError), (what, value)
                assert value.status == expected, (what, value)
            caller.join(5)
            # The connection and its thread live on: a normal request right after succeeds.
            follow_up, follow_result = in_thread(lambda: env.rh.doRequest({"cmd": "ok"}, timeout=10))
            request = peer.recv_request()
            peer.send({"cmd": "ok", "callId": request["callId"], "status": 200, "data": index})
            kind, value, _ = follow_result.get(timeout=5)
            assert kind == "ok" and value["data"] == index, (what, value)
            follow_up.join(5)
            assert not handler.connection.closed, what
            assert env.registry.newest(NAME) is handler, what
        assert env.rh.pending == 0
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    finally:
        logging.getLogger("syncws.server.request_handler").removeHandler(logged)
        if peer is not None:
            peer.close()
        env.close()


def test_deeply_nested_but_parseable_reply_is_delivered() -> None:
    """A reply nested 500 deep (parseable) reaches the caller intact; depth alone is not an error."""
    env = Env()
    peer = None
    try:
        peer = env.fake_peer()
        caller, result = in_thread(lambda: env.rh.doRequest({"cmd": "q"}, timeout=10))
        request = peer.recv_request()
        peer.send(json.dumps({"cmd": "q", "callId": request["callId"], "status": 200, "data": _deep(500)}))
        kind, value, _ = result.get(timeout=5)
        assert kind == "ok" and value["data"] == _deep(500)
        caller.join(5)
    finally:
        if peer is not None:
            peer.close()
        env.close()


# ---------------------------------------------------------------------- (g) a reply too large for the memory there is

_UNDER_RLIMIT_AS = """
import json, resource, sys, threading
import syncws

server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), close_timeout=1.0).start()
rh = syncws.RequestHandler("wsData", server)  # the default max_reply_size: 4 GiB
opened = threading.Event()
server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=rh.callback, connNotify=lambda n, e: opened.set())
peer = syncws.connect(server.url + "/wsData", timeout=5)
assert opened.wait(5)
outcome = []
caller = threading.Thread(target=lambda: outcome.append(_call()), daemon=True)

def _call():
    try:
        return ("ok", rh.doRequest({"cmd": "big"}, timeout=None))
    except Exception as exc:
        return (type(exc).__name__, getattr(exc, "status", None), str(exc))

with open("/proc/self/status") as status:
    vm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
headroom = 1 << 30  # 1 GiB more address space than now: the 3 GiB the reply announces cannot be had
resource.setrlimit(resource.RLIMIT_AS, (vm_kib * 1024 + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
caller.start()
request = json.loads(peer.recv(timeout=5))
size = 3 << 30
peer.send(json.dumps({"cmd": "big", "callId": request["callId"], "status": 200, "dataType": "bytes", "size": size, "parts": 1}))
caller.join(10)
print(json.dumps(outcome[0] if outcome else "still waiting"))
sys.stdout.flush()
peer.abort()
server.stop()
"""


def test_reply_header_that_cannot_be_allocated_under_rlimit_as_fails_the_call_with_502() -> None:
    """Under RLIMIT_AS, a reply header announcing 3 GiB (within max_reply_size) fails a call made with timeout=None at once
    with RequestError 502 instead of leaving it waiting."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/status")
    done = subprocess.run([sys.executable, "-c", _UNDER_RLIMIT_AS], capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome[0] == "RequestError" and outcome[1] == 502, outcome
    assert "cannot allocate" in outcome[2], outcome
    assert "Traceback" not in done.stderr, done.stderr[-3000:]

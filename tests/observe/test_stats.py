"""server.stats() against real traffic: each figure moves by exactly what was done.

Real peers only (syncws.connect, websocket-client, RemoteService, raw
sockets) on 127.0.0.1, port 0. Every test reads the figures before and
after and asserts the exact difference. A figure the server counts a moment
after the client saw the effect (a close, a reply written) is waited for with
a bounded poll (``settles``), then asserted exactly.
"""

from __future__ import annotations

import array
import json
import logging
import queue
import re
import socket
import threading
import urllib.error
import urllib.request
from typing import Any, Callable

import pytest
import websocket

import syncws
from syncws.calls import callformat
from syncws.cluster.cluster import RedisCluster
from syncws.protocol import frames
from syncws.protocol.http import HttpResponse

from ..helpers import EchoHandler, RawClient, make_server, wait_for
from ..peers import NAME, Env, in_thread
from ..redis_server import RedisServer, needs_redis

pytestmark = pytest.mark.timeout(60)

ZERO = {"connections": 0, "opened": 0, "closed": {}, "messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0, "closed_send_queue_full": 0}


# ---------------------------------------------------------------------- helpers


def figures(server: syncws.WebSocketServer, path: str = "/echo") -> dict[str, Any]:
    """The figures of the endpoint at ``path`` (zeros before its first connection)."""
    found: dict[str, Any] = server.stats()["endpoints"].get(path, ZERO)
    return found


def moved(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """How far each figure moved from ``before`` to ``after``; ``closed`` by code, codes that did not move left out."""
    out: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            delta = {code: count - before[key].get(code, 0) for code, count in value.items()}
            out[key] = {code: d for code, d in delta.items() if d}
        else:
            out[key] = value - before[key]
    return out


def settles(read: Callable[[], Any], expected: Any, timeout: float = 5.0) -> Any:
    """Wait (bounded) until ``read()`` equals ``expected``; return what it reads last, for an exact assert."""
    wait_for(lambda: read() == expected, timeout=timeout)
    return read()


def endpoint_moves(server: syncws.WebSocketServer, before: dict[str, Any], path: str = "/echo") -> Callable[[], dict[str, Any]]:
    return lambda: moved(before, figures(server, path))


def expect(**changes: Any) -> dict[str, Any]:
    """The endpoint movement with ``changes`` and every other figure unmoved."""
    out: dict[str, Any] = {key: ({} if key == "closed" else 0) for key in ZERO}
    out.update(changes)
    return out


def refusals(server: syncws.WebSocketServer) -> dict[str, int]:
    return dict(server.stats()["handshakes_refused"])


def refusal_moves(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {reason: after[reason] - before.get(reason, 0) for reason in after if after[reason] != before.get(reason, 0)}


def requests_of(server: syncws.WebSocketServer, name: str = NAME) -> dict[str, Any]:
    found: dict[str, Any] = server.stats()["requests"][name]
    return found


def outcome_moves(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    return {o: after["outcomes"][o] - before["outcomes"][o] for o in after["outcomes"] if after["outcomes"][o] != before["outcomes"][o]}


def http_url(server: syncws.WebSocketServer, path: str) -> str:
    return server.url.replace("ws://", "http://", 1) + path


class Blocking(syncws.BaseWebSocketHandler):
    """on_message blocks until ``release`` is set (kwarg of add_handler), then notes it."""

    def initialize(self, release: threading.Event, entered: threading.Event, **kwargs: Any) -> None:  # type: ignore[override]
        super().initialize(**kwargs)
        self.release = release
        self.entered = entered

    def on_message(self, message: Any) -> None:
        self.entered.set()
        self.release.wait(10)


class Quiet(syncws.BaseWebSocketHandler):
    """Joins the registry on open; ignores what it is sent."""

    def on_message(self, message: Any) -> None:
        pass


# ---------------------------------------------------------------------- connections


def test_a_connection_counts_opened_then_closed_1000(server: syncws.WebSocketServer) -> None:
    """A connection counts opened and connections +1 once connect returns, then closed 1000 and connections back after a normal close."""
    before = figures(server)
    conn = syncws.connect(server.url + "/echo", timeout=5)
    assert moved(before, figures(server)) == expect(connections=1, opened=1)
    assert server.stats()["server"]["connections"] == 1
    conn.close()
    assert settles(endpoint_moves(server, before), expect(opened=1, closed={"1000": 1})) == expect(opened=1, closed={"1000": 1})
    assert server.stats()["server"]["connections"] == 0


def test_a_close_with_a_code_is_counted_under_that_code(server: syncws.WebSocketServer) -> None:
    """close(1001) from the client counts under closed["1001"], nothing under 1000."""
    before = figures(server)
    conn = syncws.connect(server.url + "/echo", timeout=5)
    conn.close(1001, "going away")
    assert settles(endpoint_moves(server, before), expect(opened=1, closed={"1001": 1})) == expect(opened=1, closed={"1001": 1})


def test_a_raw_socket_that_just_disconnects_counts_1006(server: syncws.WebSocketServer) -> None:
    """A client that drops its socket without a close frame counts under closed["1006"]."""
    before = figures(server)
    raw = RawClient(server.port)
    assert raw.handshake("/echo").startswith(b"HTTP/1.1 101")
    assert moved(before, figures(server)) == expect(connections=1, opened=1)
    raw.close()
    assert settles(endpoint_moves(server, before), expect(opened=1, closed={"1006": 1})) == expect(opened=1, closed={"1006": 1})


# ---------------------------------------------------------------------- messages and bytes


@pytest.mark.parametrize("text", ["hello", "é", "日本語 ok"], ids=["ascii", "e-acute", "cjk"])
def test_a_text_echo_counts_one_message_each_way_of_its_utf8_length(server: syncws.WebSocketServer, text: str) -> None:
    """A text message and its echo move messages_in/out by 1 and bytes_in/out by its UTF-8 length ("é" is 2 bytes)."""
    conn = syncws.connect(server.url + "/echo", timeout=5)
    try:
        before = figures(server)
        conn.send(text)
        assert conn.recv(timeout=5) == text
        size = len(text.encode("utf-8"))
        want = expect(messages_in=1, messages_out=1, bytes_in=size, bytes_out=size)
        assert settles(endpoint_moves(server, before), want) == want
    finally:
        conn.close()


def test_a_binary_echo_counts_its_length(server: syncws.WebSocketServer) -> None:
    """A binary message of 1001 bytes and its echo move bytes_in/out by exactly 1001."""
    conn = syncws.connect(server.url + "/echo", timeout=5)
    try:
        before = figures(server)
        payload = bytes(range(256)) * 3 + b"\xff" * 233
        conn.send(payload)
        assert conn.recv(timeout=5) == payload
        want = expect(messages_in=1, messages_out=1, bytes_in=1001, bytes_out=1001)
        assert settles(endpoint_moves(server, before), want) == want
    finally:
        conn.close()


def test_a_fragmented_message_counts_once_with_its_whole_length(server: syncws.WebSocketServer) -> None:
    """A text message in three fragments (a UTF-8 character split between two) counts one message in of its whole 6 bytes, pings none."""
    raw = RawClient(server.port)
    try:
        assert raw.handshake("/echo").startswith(b"HTTP/1.1 101")
        before = figures(server)
        raw.send_frame(frames.OP_PING, b"not a message")
        raw.send_frame(frames.OP_TEXT, b"h\xc3", fin=False)
        raw.send_frame(frames.OP_CONTINUATION, b"\xa9l", fin=False)
        raw.send_frame(frames.OP_CONTINUATION, b"lo", fin=True)
        assert raw.recv_frame() == (True, frames.OP_PONG, b"not a message")
        assert raw.recv_frame() == (True, frames.OP_TEXT, "héllo".encode())
        want = expect(messages_in=1, messages_out=1, bytes_in=6, bytes_out=6)
        assert settles(endpoint_moves(server, before), want) == want
    finally:
        raw.close()


def test_compressed_messages_count_their_payload_not_the_compressed_size(server: syncws.WebSocketServer) -> None:
    """With permessage-deflate, 3,000 bytes of text (compressing to a few dozen) count 3,000 bytes in and out."""
    conn = syncws.connect(server.url + "/echo", timeout=5, compression="deflate")
    try:
        assert conn.extensions
        before = figures(server)
        text = "é" * 1000 + "a" * 1000
        conn.send(text)
        assert conn.recv(timeout=5) == text
        want = expect(messages_in=1, messages_out=1, bytes_in=3000, bytes_out=3000)
        assert settles(endpoint_moves(server, before), want) == want
    finally:
        conn.close()


def test_a_typed_buffer_counts_its_bytes_not_its_items(server: syncws.WebSocketServer) -> None:
    """A broadcast of a memoryview of array("d") with 10 items (len 10) counts 80 bytes out, one message."""
    conn = syncws.connect(server.url + "/echo", timeout=5)
    try:
        assert wait_for(lambda: len(server.registry.connections("echo")) == 1)
        before = figures(server)
        values = array.array("d", [0.5] * 10)
        syncws.sendWebSocketMessage("echo", memoryview(values), registry=server.registry)
        assert conn.recv(timeout=5) == values.tobytes()
        want = expect(messages_out=1, bytes_out=80)
        assert settles(endpoint_moves(server, before), want) == want
    finally:
        conn.close()


def test_a_request_and_its_reply_count_one_message_each_way(env: Env) -> None:
    """doRequest to a peer: one message out of the request's length, one in of the reply's (non-ASCII data included)."""
    peer = env.fake_peer()
    before = figures(env.server, "/" + NAME)
    _caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "greet", "who": "zoë"}, timeout=10))
    request_text = peer.inbox.get(timeout=5)
    request = json.loads(request_text)
    reply = json.dumps({"cmd": "greet", "callId": request["callId"], "status": 200, "data": "héllo"}, ensure_ascii=False)
    peer.send(reply)
    assert results.get(timeout=10)[1]["data"] == "héllo"
    want = expect(messages_in=1, messages_out=1, bytes_in=len(reply.encode()), bytes_out=len(request_text.encode()))
    assert settles(endpoint_moves(env.server, before, "/" + NAME), want) == want


def test_a_binary_reply_in_large_parts_counts_every_byte(env: Env) -> None:
    """A binary reply of a JSON header and three 100 kB parts (read straight into the result) moves bytes_in by the header plus every part, whole."""
    peer = env.fake_peer()
    before = figures(env.server, "/" + NAME)
    data = bytes(range(256)) * 1200  # 307,200 bytes: three parts of 100,000 and one of 7,200
    _caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "blob"}, timeout=10))
    request = json.loads(peer.inbox.get(timeout=5))
    binary = callformat.as_binary(data)
    assert binary is not None
    header, parts = callformat.encode_binary_reply("blob", request["callId"], binary[0], binary[1], 100_000)
    peer.conn.send(header)
    sizes = [len(header.encode())]
    for part_header, chunk in parts:
        peer.conn.send_parts(part_header, chunk)
        sizes.append(len(part_header) + len(chunk))
    assert results.get(timeout=10)[1]["data"] == data
    got = moved(before, figures(env.server, "/" + NAME))
    assert (got["messages_in"], got["bytes_in"]) == (len(sizes), sum(sizes))


def test_a_broadcast_to_three_connections_counts_three_messages_out(server: syncws.WebSocketServer) -> None:
    """sendWebSocketMessage to a name with 3 connections moves messages_out by 3 and bytes_out by 3 times its length."""
    conns = [syncws.connect(server.url + "/echo", timeout=5) for _ in range(3)]
    try:
        assert wait_for(lambda: len(server.registry.connections("echo")) == 3)
        before = figures(server)
        syncws.sendWebSocketMessage("echo", "ça va", registry=server.registry)
        assert [c.recv(timeout=5) for c in conns] == ["ça va"] * 3
        want = expect(messages_out=3, bytes_out=3 * len("ça va".encode()))
        assert settles(endpoint_moves(server, before), want) == want
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------------- refused handshakes


def test_server_wide_auth_refusal_counts_auth() -> None:
    """A handshake refused by the server's auth= counts handshakes_refused["auth"] +1 and nothing else."""
    server = make_server(auth=lambda request: request.headers.get("X-Key") == "k")
    try:
        before = refusals(server)
        with pytest.raises(syncws.HandshakeError) as info:
            syncws.connect(server.url + "/echo", timeout=5)
        assert info.value.status == 401
        syncws.connect(server.url + "/echo", timeout=5, header={"X-Key": "k"}).close()
        assert refusal_moves(before, refusals(server)) == {"auth": 1}
    finally:
        server.stop()


def test_endpoint_auth_refusal_counts_auth(server: syncws.WebSocketServer) -> None:
    """A handshake refused by an endpoint's auth= (403) counts handshakes_refused["auth"] +1 and opens nothing there."""
    server.add_handler("/guarded", EchoHandler, name="guarded", auth=lambda request: 403)
    before = refusals(server)
    with pytest.raises(syncws.HandshakeError) as info:
        syncws.connect(server.url + "/guarded", timeout=5)
    assert info.value.status == 403
    assert refusal_moves(before, refusals(server)) == {"auth": 1}
    assert "/guarded" not in server.stats()["endpoints"]


def test_origin_refusal_counts_origin() -> None:
    """An Origin not in origins= counts handshakes_refused["origin"] +1; an allowed one counts nothing."""
    server = make_server(origins=["http://good.example"])
    try:
        before = refusals(server)
        with pytest.raises(syncws.HandshakeError) as info:
            syncws.connect(server.url + "/echo", timeout=5, origin="http://evil.example")
        assert info.value.status == 403
        syncws.connect(server.url + "/echo", timeout=5, origin="http://good.example").close()
        assert refusal_moves(before, refusals(server)) == {"origin": 1}
    finally:
        server.stop()


def test_max_connections_refusal_counts_limit() -> None:
    """With max_connections=1, a second client is refused (503) and counts handshakes_refused["limit"] +1."""
    server = make_server(max_connections=1)
    try:
        before = refusals(server)
        first = syncws.connect(server.url + "/echo", timeout=5)
        with pytest.raises(syncws.HandshakeError) as info:
            syncws.connect(server.url + "/echo", timeout=5)
        assert info.value.status == 503
        assert refusal_moves(before, refusals(server)) == {"limit": 1}
        assert figures(server)["opened"] == 1
        first.close()
    finally:
        server.stop()


def test_unknown_path_counts_not_found(server: syncws.WebSocketServer) -> None:
    """A handshake to a path no endpoint serves (404) counts handshakes_refused["not_found"] +1."""
    before = refusals(server)
    with pytest.raises(syncws.HandshakeError) as info:
        syncws.connect(server.url + "/nowhere", timeout=5)
    assert info.value.status == 404
    assert refusal_moves(before, refusals(server)) == {"not_found": 1}


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"THIS IS NOT HTTP\r\n\r\n",
    ],
    ids=["upgrade-without-key", "garbage"],
)
def test_a_malformed_upgrade_counts_bad_request(server: syncws.WebSocketServer, request_bytes: bytes) -> None:
    """A raw socket sending a malformed upgrade gets a 4xx and counts handshakes_refused["bad_request"] +1."""
    before = refusals(server)
    raw = RawClient(server.port)
    try:
        raw.send_raw(request_bytes)
        head = raw.read_head()
        assert re.match(rb"HTTP/1\.1 4\d\d ", head), head
    finally:
        raw.close()
    assert refusal_moves(before, refusals(server)) == {"bad_request": 1}


def test_a_plain_get_refused_by_an_http_route_is_no_handshake_refusal(server: syncws.WebSocketServer) -> None:
    """A plain HTTP GET to an add_http route whose auth refuses gets 401, and no handshakes_refused figure moves."""
    server.add_http("/secret", lambda request: HttpResponse(200, b"secret", "text/plain"), auth=lambda request: False)
    before = refusals(server)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(http_url(server, "/secret"), timeout=5)
    assert info.value.code == 401
    info.value.close()
    assert refusal_moves(before, refusals(server)) == {}


# ---------------------------------------------------------------------- requests


def test_a_successful_request_counts_ok(env: Env) -> None:
    """A call answered with status 200 counts requests +1 and outcomes["ok"] +1, nothing else."""
    env.service({"echo": lambda m: m["x"]})
    before = requests_of(env.server)
    assert env.rh.doRequest({"cmd": "echo", "x": 1}, timeout=10)["data"] == 1
    after = requests_of(env.server)
    assert (after["requests"] - before["requests"], outcome_moves(before, after)) == (1, {"ok": 1})


def test_a_failing_command_and_an_unknown_command_count_error(env: Env) -> None:
    """A command that raises (500) and an unknown cmd (404) each count outcomes["error"] +1."""

    def boom(msg: dict[str, Any]) -> None:
        raise ValueError("broken")

    env.service({"boom": boom})
    before = requests_of(env.server)
    with pytest.raises(syncws.RequestError) as raised:
        env.rh.doRequest({"cmd": "boom"}, timeout=10)
    assert raised.value.status == 500
    with pytest.raises(syncws.RequestError) as unknown:
        env.rh.doRequest({"cmd": "no-such-command"}, timeout=10)
    assert unknown.value.status == 404
    after = requests_of(env.server)
    assert (after["requests"] - before["requests"], outcome_moves(before, after)) == (2, {"error": 2})


def test_a_command_slower_than_the_timeout_counts_timeout(env: Env) -> None:
    """A command slower than the call's timeout counts outcomes["timeout"] +1."""
    gate = threading.Event()
    env.add_cleanup(gate.set)
    env.service({"slow": lambda m: gate.wait(5)})
    before = requests_of(env.server)
    with pytest.raises(syncws.RequestTimeout):
        env.rh.doRequest({"cmd": "slow"}, timeout=0.2)
    gate.set()
    after = requests_of(env.server)
    assert (after["requests"] - before["requests"], outcome_moves(before, after)) == (1, {"timeout": 1})


def test_a_peer_closing_during_a_call_counts_disconnected(env: Env) -> None:
    """The peer dropping its connection while a call waits counts outcomes["disconnected"] +1."""
    peer = env.fake_peer()
    before = requests_of(env.server)
    _caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "never"}, timeout=10))
    peer.recv_request()
    peer.close()
    kind, error, _ = results.get(timeout=10)
    assert kind == "err" and isinstance(error, syncws.ConnectionClosed)
    after = requests_of(env.server)
    assert (after["requests"] - before["requests"], outcome_moves(before, after)) == (1, {"disconnected": 1})


def test_a_call_with_no_peer_counts_disconnected(env: Env) -> None:
    """doRequest with no peer connected raises NotConnected and counts outcomes["disconnected"] +1."""
    before = requests_of(env.server)
    with pytest.raises(syncws.NotConnected):
        env.rh.doRequest({"cmd": "anyone"}, timeout=1)
    after = requests_of(env.server)
    assert (after["requests"] - before["requests"], outcome_moves(before, after)) == (1, {"disconnected": 1})


def test_a_cancelled_call_counts_cancelled_and_pending_while_it_waits(env: Env) -> None:
    """A waiting call shows as pending 1; CancelToken.cancel() ends it with outcomes["cancelled"] +1 and pending back to 0."""
    peer = env.fake_peer()
    token = syncws.CancelToken()
    before = requests_of(env.server)
    assert before["pending"] == 0
    _caller, results = in_thread(lambda: env.rh.doRequest({"cmd": "wait"}, timeout=10, cancel=token))
    peer.recv_request()
    assert requests_of(env.server)["pending"] == 1
    token.cancel()
    kind, error, _ = results.get(timeout=10)
    assert kind == "err" and isinstance(error, syncws.RequestCancelled)
    after = requests_of(env.server)
    assert (after["requests"] - before["requests"], outcome_moves(before, after), after["pending"]) == (1, {"cancelled": 1}, 0)


def test_latency_and_histogram_after_calls(env: Env) -> None:
    """After 5 calls: latency count 5 with p50 <= p90 <= p99, histogram count 5 (+Inf bucket too) and a positive sum; none before."""
    env.service({"echo": lambda m: m["x"]})
    first = requests_of(env.server)
    assert first["latency"]["p50"] is None and first["duration"]["count"] == 0
    for i in range(5):
        env.rh.doRequest({"cmd": "echo", "x": i}, timeout=10)
    figures_now = requests_of(env.server)
    latency, duration = figures_now["latency"], figures_now["duration"]
    assert latency["count"] == 5 and 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert duration["count"] == figures_now["requests"] == 5 and duration["sum"] > 0
    counts = [count for _, count in duration["buckets"]]
    assert counts == sorted(counts) and duration["buckets"][-1] == ["+Inf", 5]
    assert latency["p99"] <= duration["sum"]


def test_prepare_request_and_get_response_count_once(env: Env) -> None:
    """A call made with prepare_request and get_response counts once, when get_response ends, as ok."""
    peer = env.fake_peer()
    before = requests_of(env.server)
    call_id, conn = env.rh.prepare_request({"cmd": "two-step"})
    conn.write_message({"cmd": "two-step", "callId": call_id})
    request = peer.recv_request()
    peer.send({"cmd": "two-step", "callId": request["callId"], "status": 200, "data": 7})
    assert requests_of(env.server)["requests"] == before["requests"]
    assert env.rh.get_response(call_id, timeout=10)["data"] == 7
    after = requests_of(env.server)
    assert (after["requests"] - before["requests"], outcome_moves(before, after), after["pending"]) == (1, {"ok": 1}, 0)


# ---------------------------------------------------------------------- send queues and workers


def test_a_client_that_never_reads_is_closed_1008_and_counted_once() -> None:
    """send_nowait past max_send_queue to a client that never reads: closed["1008"] +1, send_queues.closed_full +1,
    and messages_out/bytes_out count the messages queued, not the one that overflowed."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), send_timeout=60, max_send_queue=256 * 1024)
    server.add_handler("/fanout", Quiet, name="fanout")
    server.start()
    stuck = websocket.create_connection(server.url + "/fanout", timeout=5, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    try:
        assert wait_for(lambda: len(server.registry.connections("fanout")) == 1)
        handler = server.registry.connections("fanout")[0]
        before, queues_before = figures(server, "/fanout"), server.stats()["send_queues"]
        chunk = b"\x00" * 65536
        returned = 0
        for _ in range(200):  # bounded: 256 KiB overflow well before
            try:
                handler.connection.send_nowait(chunk)
            except syncws.ConnectionClosed:
                break
            returned += 1
            if handler.connection.close_code is not None:
                break  # this send overflowed: the connection was given up
        assert handler.connection.close_code == 1008 and handler.close_reason == "send queue full"
        queued = returned - 1  # every send that returned was queued or written, but the last: it overflowed
        want = expect(connections=-1, closed={"1008": 1}, messages_out=queued, bytes_out=queued * len(chunk), closed_send_queue_full=1)
        assert settles(endpoint_moves(server, before, "/fanout"), want) == want
        queues_after = server.stats()["send_queues"]
        assert queues_after["closed_full"] - queues_before["closed_full"] == 1
        assert queues_after["bytes"] == 0
    finally:
        stuck.close()
        server.stop()


def test_workers_busy_while_a_handler_blocks() -> None:
    """A handler blocked in on_message counts workers busy and handling_messages +1; both fall back once it returns."""
    release, entered = threading.Event(), threading.Event()
    server = make_server()
    server.add_handler("/block", Blocking, name="block", release=release, entered=entered)
    conn = syncws.connect(server.url + "/block", timeout=5)
    try:
        before = server.stats()["workers"]
        conn.send("hold")
        assert entered.wait(5)
        during = server.stats()["workers"]
        assert (during["busy"] - before["busy"], during["handling_messages"] - before["handling_messages"]) == (1, 1)
        release.set()
        assert settles(lambda: server.stats()["workers"]["busy"], before["busy"]) == before["busy"]
        assert server.stats()["workers"]["handling_messages"] == before["handling_messages"]
    finally:
        release.set()
        conn.close()
        server.stop()


def test_selector_engine_workers_are_the_handler_pools() -> None:
    """On the selector engine, the handler pool's workers count: busy while a handler blocks, idle (not gone) once it returns."""
    release, entered = threading.Event(), threading.Event()
    server = make_server(engine="reactor")
    server.add_handler("/block", Blocking, name="block", release=release, entered=entered)
    conn = syncws.connect(server.url + "/block", timeout=5)
    try:
        conn.send("hold")
        assert entered.wait(5)
        during = server.stats()["workers"]
        assert during["handler_pool_threads"] >= 1 and during["handling_messages"] == 1 and during["busy"] >= 1
        release.set()
        assert settles(lambda: server.stats()["workers"]["handling_messages"], 0) == 0
        after = server.stats()["workers"]  # the worker waits for more (idle 5 s) before it leaves
        assert after["handler_pool_threads"] >= 1 and after["idle"] >= 1
    finally:
        release.set()
        conn.close()
        server.stop()


# ---------------------------------------------------------------------- cluster


def test_without_a_cluster_stats_cluster_is_none(server: syncws.WebSocketServer) -> None:
    """A server made without cluster= reports stats()["cluster"] as None."""
    assert server.stats()["cluster"] is None


@needs_redis
def test_cluster_health_follows_redis(redis_server: RedisServer, cluster_name: str) -> None:
    """A cluster node reports redis_up True and its own node once its first heartbeat is in; redis_up False within seconds of Redis stopping."""
    cluster = RedisCluster(redis_server.url, name=cluster_name, ttl=1.0)
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=cluster).start()
    try:
        assert wait_for(lambda: server.stats()["cluster"]["redis_up"], timeout=10)
        health = server.stats()["cluster"]
        assert wait_for(lambda: cluster.node_id in server.stats()["cluster"]["nodes"], timeout=5)
        assert (health["name"], health["node"]) == (cluster_name, cluster.node_id)
        redis_server.stop()
        try:
            assert wait_for(lambda: not server.stats()["cluster"]["redis_up"], timeout=10)
        finally:
            redis_server.start()
    finally:
        server.stop()
        cluster.stop()


# ---------------------------------------------------------------------- logs


def test_one_info_line_per_connection_opened_and_closed(server: syncws.WebSocketServer, caplog: pytest.LogCaptureFixture) -> None:
    """One INFO line on syncws.server.server when a connection opens and one when it closes, naming endpoint, address, code and duration."""
    caplog.set_level(logging.INFO, logger="syncws.server.server")
    ws = websocket.create_connection(server.url + "/echo", timeout=5)
    assert ws.sock is not None
    host, port = ws.sock.getsockname()[:2]
    address = f"{host}:{port}"

    def lines(kind: str) -> list[logging.LogRecord]:
        mine = [r for r in caplog.records if r.name == "syncws.server.server" and address in r.getMessage()]
        return [r for r in mine if r.getMessage().startswith(f"connection {kind}:")]

    assert wait_for(lambda: len(lines("opened")) == 1)
    ws.close()
    assert wait_for(lambda: len(lines("closed")) == 1)
    opened, closed = lines("opened"), lines("closed")
    assert len(opened) == 1 and len(closed) == 1
    assert opened[0].levelno == closed[0].levelno == logging.INFO
    assert opened[0].getMessage() == f"connection opened: /echo from {address}"
    assert re.fullmatch(rf"connection closed: /echo from {re.escape(address)}, code 1000, after \d+\.\d s", closed[0].getMessage()), closed[0].getMessage()


# ---------------------------------------------------------------------- many threads


def test_stats_from_eight_threads_during_traffic_is_consistent_and_json() -> None:
    """8 threads call stats() while two clients echo 150 messages each: each snapshot is JSON, consistent, never goes back; the end is exact."""
    server = make_server()
    stop = threading.Event()
    problems: queue.Queue[BaseException] = queue.Queue()
    count, text = 150, "ab€"  # 5 bytes each way
    size = len(text.encode())

    def watch() -> None:
        last = 0
        for _ in range(100_000):  # bounded: ends when the traffic is done
            if stop.is_set():
                return
            snapshot = server.stats()
            try:
                json.dumps(snapshot)
                echo = snapshot["endpoints"].get("/echo", ZERO)
                assert echo["bytes_in"] == size * echo["messages_in"] and echo["bytes_out"] == size * echo["messages_out"]
                assert echo["connections"] == echo["opened"] - sum(echo["closed"].values())
                assert echo["messages_in"] >= last
                last = echo["messages_in"]
            except Exception as exc:  # handed to the test thread
                problems.put(exc)
                return
            stop.wait(0.002)  # a breath between snapshots; ends at once when the traffic is done

    def talk() -> None:
        conn = syncws.connect(server.url + "/echo", timeout=5)
        try:
            for _ in range(count):
                conn.send(text)
                assert conn.recv(timeout=5) == text
        finally:
            conn.close()

    watchers = [threading.Thread(target=watch, name=f"test-stats-{i}", daemon=True) for i in range(8)]
    talkers = [threading.Thread(target=talk, name=f"test-talk-{i}", daemon=True) for i in range(2)]
    try:
        for t in watchers + talkers:
            t.start()
        for t in talkers:
            t.join(30)
        stop.set()
        for t in watchers:
            t.join(10)
        assert not any(t.is_alive() for t in watchers + talkers)
        assert problems.empty(), problems.get()
        want = {
            **ZERO,
            "opened": 2,
            "closed": {"1000": 2},
            "messages_in": 2 * count,
            "messages_out": 2 * count,
            "bytes_in": 2 * count * size,
            "bytes_out": 2 * count * size,
        }
        assert settles(lambda: figures(server), want) == want
    finally:
        stop.set()
        server.stop()

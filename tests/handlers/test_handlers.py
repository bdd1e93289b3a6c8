"""Handlers, the registry and the module functions of rtCommon.webSocketHandlers."""

from __future__ import annotations

import json
import logging
import queue
import threading

import pytest
import websocket

import syncws

from ..helpers import wait_for

pytestmark = pytest.mark.timeout(60)

RTCOMMON_NAMES = [
    "websocketState",
    "BaseWebSocketHandler",
    "DataWebSocketHandler",
    "RejectWebSocketHandler",
    "RequestHandler",
    "sendWebSocketMessage",
    "closeAllConnections",
    "defaultWebsocketCallback",
]


def test_rtcommon_names_importable() -> None:
    """Every public name of rtCommon.webSocketHandlers is importable from syncws."""
    for name in RTCOMMON_NAMES:
        assert hasattr(syncws, name), name
    assert {"wsConnLock", "wsConnectionLists", "wsCallbacks"} <= set(vars(syncws.websocketState))


def test_all_matches_exports() -> None:
    """syncws.__all__ lists exactly the public names the package defines."""
    public = {n for n in vars(syncws) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(syncws, n)).__name__ == "module"}
    assert set(syncws.__all__) == public - modules


def _connect(server: syncws.WebSocketServer, path: str) -> websocket.WebSocket:
    return websocket.create_connection(server.url + path, timeout=5)


def test_open_registers_then_notifies_and_close_reverses(server: syncws.WebSocketServer) -> None:
    """open joins the registry before connNotify('open'); on_close leaves it before connNotify('close')."""
    events: queue.Queue = queue.Queue()

    def notify(name: str, event: str) -> None:
        events.put((name, event, len(server.registry.connections(name))))

    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", connNotify=notify)
    ws = _connect(server, "/wsData")
    assert events.get(timeout=5) == ("wsData", "open", 1)
    ws.close()
    assert events.get(timeout=5) == ("wsData", "close", 0)


def test_callback_gets_handler_and_typed_messages(server: syncws.WebSocketServer) -> None:
    """The callback is called as callback(handler, message), with str for text and bytes for binary."""
    got: queue.Queue = queue.Queue()
    server.add_handler("/cb", syncws.BaseWebSocketHandler, name="cb", callback=lambda h, m: got.put((h, m)))
    ws = _connect(server, "/cb")
    ws.send("text")
    ws.send_binary(b"\x01\x02")
    handler, first = got.get(timeout=5)
    assert isinstance(handler, syncws.BaseWebSocketHandler) and first == "text"
    assert got.get(timeout=5)[1] == b"\x01\x02"
    assert server.registry.callback("cb") is not None
    ws.close()


def test_request_attributes(server: syncws.WebSocketServer) -> None:
    """handler.request has path without query, parsed query, case-insensitive headers and remote address."""
    seen: queue.Queue = queue.Queue()

    class Probe(syncws.BaseWebSocketHandler):
        def open(self) -> None:
            super().open()
            seen.put(self.request)

    server.add_handler("/probe", Probe, name="probe")
    ws = websocket.create_connection(server.url + "/probe?a=1&a=2&b=x", header=["X-Lab: mri"], timeout=5)
    request = seen.get(timeout=5)
    assert request.path == "/probe"
    assert request.query == {"a": ["1", "2"], "b": ["x"]}
    assert request.headers["x-lab"] == "mri" and request.headers["X-LAB"] == "mri"
    assert request.remote_address[0] == "127.0.0.1"
    ws.close()


def test_write_message_kinds(server: syncws.WebSocketServer) -> None:
    """write_message sends str as text, bytes or binary=True as binary, dict and list as JSON text."""
    server.add_handler("/w", syncws.BaseWebSocketHandler, name="w", connNotify=lambda n, e: None)
    ws = _connect(server, "/w")
    assert wait_for(lambda: len(server.registry.connections("w")) == 1)
    handler = server.registry.connections("w")[0]
    handler.write_message("t")
    handler.write_message(b"b")
    handler.write_message("as-binary", binary=True)
    handler.write_message({"cmd": "x"})
    handler.write_message([1, 2])
    assert ws.recv_data() == (websocket.ABNF.OPCODE_TEXT, b"t")
    assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"b")
    assert ws.recv_data() == (websocket.ABNF.OPCODE_BINARY, b"as-binary")
    assert json.loads(ws.recv()) == {"cmd": "x"}
    assert json.loads(ws.recv()) == [1, 2]
    ws.close()


def test_messages_from_one_thread_arrive_in_order(server: syncws.WebSocketServer) -> None:
    """Messages written from one thread arrive in the order written, while other threads write too."""
    server.add_handler("/o", syncws.BaseWebSocketHandler, name="o")
    ws = _connect(server, "/o")
    assert wait_for(lambda: len(server.registry.connections("o")) == 1)
    handler = server.registry.connections("o")[0]

    def writer(tag: str) -> None:
        for i in range(200):
            handler.write_message(f"{tag}:{i}")

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    seen: dict[str, list[int]] = {tag: [] for tag in "abcd"}
    for _ in range(800):
        tag, i = ws.recv().split(":")
        seen[tag].append(int(i))
    assert all(v == list(range(200)) for v in seen.values())
    ws.close()


def test_close_code_and_reason(server: syncws.WebSocketServer) -> None:
    """close_code and close_reason tell how the peer closed."""
    closed: queue.Queue = queue.Queue()

    class Watch(syncws.BaseWebSocketHandler):
        def on_close(self) -> None:
            super().on_close()
            closed.put((self.close_code, self.close_reason))

    server.add_handler("/c", Watch, name="c")
    ws = _connect(server, "/c")
    ws.close(status=4001, reason=b"bye")
    assert closed.get(timeout=5) == (4001, "bye")


def test_reject_handler(server: syncws.WebSocketServer) -> None:
    """RejectWebSocketHandler sends a 403 error message and closes with 1008 and the reason."""
    server.add_handler("/no", syncws.RejectWebSocketHandler, rejectMsg="go away " + "é" * 80)
    ws = _connect(server, "/no")
    message = json.loads(ws.recv())
    assert message["cmd"] == "error" and message["status"] == 403 and message["error"].startswith("go away")
    opcode, payload = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(payload[:2], "big") == 1008
    assert len(payload) <= 125 and payload[2:].decode("utf-8").startswith("go away")
    ws.close()


def test_send_websocket_message_to_all_survives_broken_connection(server: syncws.WebSocketServer) -> None:
    """sendWebSocketMessage reaches every live connection even when one before them is broken."""
    server.add_handler("/b", syncws.BaseWebSocketHandler, name="b")
    clients = [_connect(server, "/b") for _ in range(3)]
    assert wait_for(lambda: len(server.registry.connections("b")) == 3)
    broken = server.registry.connections("b")[0]
    broken.connection.abort()
    syncws.sendWebSocketMessage("b", {"cmd": "hello"}, registry=server.registry)
    for ws in clients[1:]:
        assert json.loads(ws.recv()) == {"cmd": "hello"}
    assert broken not in server.registry.connections("b")
    for ws in clients:
        ws.close()


def test_send_websocket_message_to_unregistered_conn_raises(server: syncws.WebSocketServer) -> None:
    """sendWebSocketMessage to a conn that is not registered under the name raises NotConnected."""
    server.add_handler("/u", syncws.BaseWebSocketHandler, name="u")
    ws = _connect(server, "/u")
    assert wait_for(lambda: len(server.registry.connections("u")) == 1)
    handler = server.registry.connections("u")[0]
    with pytest.raises(syncws.NotConnected):
        syncws.sendWebSocketMessage("other", "x", conn=handler, registry=server.registry)
    syncws.sendWebSocketMessage("u", "only you", conn=handler, registry=server.registry)
    assert ws.recv() == "only you"
    ws.close()


def test_close_all_connections(server: syncws.WebSocketServer) -> None:
    """closeAllConnections closes every registered connection with 1001 and empties the lists."""
    server.add_handler("/a", syncws.BaseWebSocketHandler, name="a")
    clients = [_connect(server, "/a") for _ in range(3)]
    assert wait_for(lambda: len(server.registry.connections("a")) == 3)
    syncws.closeAllConnections(server.registry)
    assert server.registry.connections("a") == []
    for ws in clients:
        opcode, payload = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(payload[:2], "big") == 1001
        ws.close()


def test_default_callback_logs_cmd_and_non_json(caplog: pytest.LogCaptureFixture) -> None:
    """defaultWebsocketCallback logs the cmd of JSON and logs non-JSON as such, without raising."""
    with caplog.at_level(logging.INFO, logger="syncws"):
        syncws.defaultWebsocketCallback("client", '{"cmd": "ping"}')  # type: ignore[arg-type]
        syncws.defaultWebsocketCallback("client", "not json{")  # type: ignore[arg-type]
        syncws.defaultWebsocketCallback("client", b"\xff\xfe")  # type: ignore[arg-type]
    text = caplog.text
    assert "'ping'" in text and "not a JSON object" in text


def test_default_registry_is_websocket_state() -> None:
    """A server given no registry uses the shared websocketState."""
    srv = syncws.WebSocketServer()
    assert srv.registry is syncws.websocketState
    srv.stop()


class SilentPeer:
    """A raw-socket peer on /wsData that reads requests and never answers them, nor a close frame."""

    def __init__(self, server: syncws.WebSocketServer) -> None:
        from ..helpers import RawClient

        self.raw = RawClient(server.port)
        assert self.raw.handshake("/wsData").startswith(b"HTTP/1.1 101")

    def read_request(self) -> dict:
        _, opcode, payload = self.raw.recv_frame()
        assert opcode == syncws.protocol.frames.OP_TEXT
        return json.loads(payload)


def _server_with_wsdata(**options: object) -> tuple[syncws.WebSocketServer, syncws.RequestHandler]:
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), close_timeout=30, **options)  # type: ignore[arg-type]
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    return server.start(), handler


def _call_in_thread(handler: syncws.RequestHandler) -> tuple[threading.Thread, queue.Queue]:
    outcome: queue.Queue = queue.Queue()

    def call() -> None:
        try:
            outcome.put(handler.doRequest({"cmd": "slow"}, timeout=60))
        except Exception as exc:  # the outcome under test
            outcome.put(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("how", ["handler.close()", "protocol error", "oversize message"])
def test_server_closing_releases_waiting_calls_at_once(how: str) -> None:
    """When the server decides to close a connection, a call waiting on it fails with ConnectionClosed at once, not after close_timeout."""
    server, handler = _server_with_wsdata(max_message_size=1000)
    peer = SilentPeer(server)
    try:
        assert wait_for(lambda: server.registry.newest("wsData") is not None)
        thread, outcome = _call_in_thread(handler)
        peer.read_request()
        if how == "handler.close()":
            server.registry.newest("wsData").close(1000, "done")
        elif how == "protocol error":
            peer.raw.send_frame(syncws.protocol.frames.OP_TEXT, b"x", rsv=4)
        else:
            peer.raw.send_frame(syncws.protocol.frames.OP_BINARY, bytes(2000))
        # close_timeout is 30 s and the peer never answers the close frame: only an immediate release fits in 10 s.
        assert isinstance(outcome.get(timeout=10), syncws.ConnectionClosed)
        thread.join(5)
    finally:
        peer.raw.close()
        server.stop()


def test_stop_releases_waiting_calls_at_once() -> None:
    """server.stop() fails a waiting call with ConnectionClosed at once, even while the peer never answers its close frame."""
    server, handler = _server_with_wsdata()
    peer = SilentPeer(server)
    assert wait_for(lambda: server.registry.newest("wsData") is not None)
    thread, outcome = _call_in_thread(handler)
    peer.read_request()
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    try:
        assert isinstance(outcome.get(timeout=10), syncws.ConnectionClosed)
    finally:
        peer.raw.close()  # lets stop() finish without waiting out close_timeout
        stopper.join(10)
        thread.join(5)
    assert not stopper.is_alive()


def test_request_handler_reaches_only_its_own_servers_connections() -> None:
    """Two servers sharing the default registry: a RequestHandler bound to one never sends to a client of the other."""
    guarded = syncws.WebSocketServer(port=0, auth=lambda request: request.headers.get("Authorization") == "Bearer s3cret").start()
    open_server = syncws.WebSocketServer(port=0).start()
    try:
        handler = syncws.RequestHandler("wsData", guarded)
        guarded.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
        open_server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData")
        anonymous = websocket.create_connection(open_server.url + "/wsData", timeout=5)
        try:
            assert wait_for(lambda: syncws.websocketState.newest("wsData") is not None)
            with pytest.raises(syncws.NotConnected):
                handler.doRequest({"cmd": "secret"}, timeout=5)
            stranger = syncws.websocketState.newest("wsData")
            with pytest.raises(syncws.NotConnected):
                handler.doRequest({"cmd": "secret"}, timeout=5, conn=stranger)
            anonymous.settimeout(0.5)
            with pytest.raises(websocket.WebSocketTimeoutException):
                anonymous.recv()  # nothing ever reached the anonymous client
        finally:
            anonymous.close()
    finally:
        guarded.stop()
        open_server.stop()


def test_server_clients_are_its_own() -> None:
    """Each of two servers sharing the default registry lists and broadcasts to its own clients only."""
    first = syncws.WebSocketServer(port=0).start()
    second = syncws.WebSocketServer(port=0).start()
    try:
        for server in (first, second):
            server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData")
        a = websocket.create_connection(first.url + "/wsData", timeout=5)
        b = websocket.create_connection(second.url + "/wsData", timeout=5)
        assert wait_for(lambda: len(first.clients) == 1 and len(second.clients) == 1)
        first.send_message_to_all("to first")
        assert a.recv() == "to first"
        b.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            b.recv()
        a.close()
        b.close()
    finally:
        first.stop()
        second.stop()

"""Handlers, the registry and the module functions of rtCommon.webSocketHandlers."""

from __future__ import annotations

import json
import logging
import queue
import threading

import pytest
import websocket

import syncws

from .helpers import wait_for

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

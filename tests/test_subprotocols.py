"""Subprotocol negotiation (Sec-WebSocket-Protocol) over real sockets: syncws on both sides, and python-websockets on either."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, Optional

import pytest
from websockets.sync.client import connect as websockets_connect
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as websockets_serve

import syncws

from .helpers import RawClient

pytestmark = pytest.mark.timeout(30)


class Protocols(syncws.BaseWebSocketHandler):
    """Answers every message with the subprotocol this connection agreed on."""

    def on_message(self, message: Any) -> None:
        self.write_message(f"{self.selected_subprotocol}")


@pytest.fixture
def server() -> Iterator[syncws.WebSocketServer]:
    """A server whose /proto prefers v2.json to v1.json, and whose /strict requires one of them."""
    srv = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry())
    srv.add_handler("/proto", Protocols, subprotocols=["v2.json", "v1.json"])
    srv.add_handler("/strict", Protocols, subprotocols=["v2.json", "v1.json"], require_subprotocol=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def selected(conn: syncws.ClientConnection) -> Optional[str]:
    """What the server's handler says it agreed on."""
    conn.send("which?")
    return conn.recv(timeout=5)  # type: ignore[return-value]


@pytest.fixture
def websockets_server() -> Iterator[tuple[str, queue.Queue[Optional[str]]]]:
    """A python-websockets server speaking v1.json; the subprotocol of each connection goes to the queue."""
    agreed: queue.Queue[Optional[str]] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        agreed.put(ws.subprotocol)
        for message in ws:
            ws.send(message)

    with websockets_serve(handler, "127.0.0.1", 0, subprotocols=["v1.json"]) as srv:  # type: ignore[list-item]
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{srv.socket.getsockname()[1]}", agreed
        srv.shutdown()
        thread.join(5)


def test_server_picks_its_first_choice_among_those_offered(server: syncws.WebSocketServer) -> None:
    """Offered v1.json then v2.json, the server answers with v2.json (its own first choice); both sides see it."""
    with syncws.connect(server.url + "/proto", subprotocols=["v1.json", "v2.json"]) as conn:
        assert conn.subprotocol == "v2.json"
        assert selected(conn) == "v2.json"


def test_no_common_subprotocol_opens_without_one_and_without_the_header(server: syncws.WebSocketServer) -> None:
    """A client offering only names the server does not speak is answered without Sec-WebSocket-Protocol; the handler sees None."""
    raw = RawClient(server.port)
    try:
        answer = raw.handshake("/proto", "Sec-WebSocket-Protocol: v9.json, chat\r\n")
        assert answer.startswith(b"HTTP/1.1 101") and b"sec-websocket-protocol" not in answer.lower()
    finally:
        raw.close()
    with syncws.connect(server.url + "/proto", subprotocols=["v9.json"]) as conn:
        assert conn.subprotocol is None
        assert selected(conn) == "None"


def test_endpoint_that_requires_a_subprotocol_refuses_with_400(server: syncws.WebSocketServer) -> None:
    """/strict refuses a client offering none of its subprotocols with HTTP 400 that names them, and accepts one that does."""
    with pytest.raises(syncws.HandshakeError) as refused:
        syncws.connect(server.url + "/strict", subprotocols=["v9.json"])
    assert refused.value.status == 400 and "v2.json, v1.json" in refused.value.reason
    with pytest.raises(syncws.HandshakeError):
        syncws.connect(server.url + "/strict")
    with syncws.connect(server.url + "/strict", subprotocols=["v1.json"]) as conn:
        assert conn.subprotocol == "v1.json"


def test_select_subprotocol_hook_decides_and_may_refuse() -> None:
    """A select_subprotocol hook picks from the offer by the request and refuses with its own HandshakeError; a name not offered, or a crash, gives 500."""

    def choose(request: syncws.Request, offered: list[str]) -> Optional[str]:
        wanted = request.query.get("want", [""])[0]
        if wanted == "nothing":
            raise syncws.HandshakeError(403, "no protocol for you")
        if wanted == "bogus":
            return "not-offered"
        if wanted == "crash":
            raise RuntimeError("hook bug")
        return wanted if wanted in offered else None

    srv = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry())
    srv.add_handler("/hook", Protocols, select_subprotocol=choose)
    srv.start()
    try:
        with syncws.connect(srv.url + "/hook?want=b", subprotocols=["a", "b"]) as conn:
            assert conn.subprotocol == "b" and selected(conn) == "b"
        with pytest.raises(syncws.HandshakeError) as refused:
            syncws.connect(srv.url + "/hook?want=nothing", subprotocols=["a"])
        assert refused.value.status == 403
        for broken in ("bogus", "crash"):
            with pytest.raises(syncws.HandshakeError) as failed:
                syncws.connect(srv.url + f"/hook?want={broken}", subprotocols=["a"])
            assert failed.value.status == 500
    finally:
        srv.stop()


def test_add_handler_refuses_names_that_cannot_go_in_a_header(server: syncws.WebSocketServer) -> None:
    """Subprotocol names with spaces or commas, a bare str, and require_subprotocol with nothing to require are refused."""
    with pytest.raises(ValueError):
        server.add_handler("/bad1", Protocols, subprotocols=["v1 json"])
    with pytest.raises(ValueError):
        server.add_handler("/bad2", Protocols, subprotocols=["a,b"])
    with pytest.raises(TypeError):
        server.add_handler("/bad3", Protocols, subprotocols="v1.json")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.add_handler("/bad4", Protocols, require_subprotocol=True)


def test_client_refuses_bad_offers_before_connecting(server: syncws.WebSocketServer) -> None:
    """connect() refuses names that are not tokens, duplicates, and require_subprotocol without an offer."""
    for bad in (["a b"], ["a,b"], ["v1", "v1"], [""]):
        with pytest.raises(ValueError):
            syncws.connect(server.url + "/proto", subprotocols=bad)
    with pytest.raises(ValueError):
        syncws.connect(server.url + "/proto", require_subprotocol=True)


def test_websockets_client_negotiates_with_the_syncws_server(server: syncws.WebSocketServer) -> None:
    """python-websockets' client offering v1.json gets it, and the handler sees it."""
    with websockets_connect(server.url + "/proto", subprotocols=["v1.json"], open_timeout=5) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "v1.json"
        ws.send("which?")
        assert ws.recv(timeout=5) == "v1.json"


def test_syncws_client_negotiates_with_a_websockets_server(websockets_server: tuple[str, queue.Queue[Optional[str]]]) -> None:
    """syncws.connect offering v2.json and v1.json to a python-websockets server speaking v1.json agrees on v1.json."""
    url, agreed = websockets_server
    with syncws.connect(url, subprotocols=["v2.json", "v1.json"]) as conn:
        assert conn.subprotocol == "v1.json"
        assert agreed.get(timeout=5) == "v1.json"
        conn.send("echo")
        assert conn.recv(timeout=5) == "echo"


def test_server_answering_a_subprotocol_not_offered_fails_the_handshake() -> None:
    """A server whose 101 names a subprotocol the client did not offer fails connect() with a permanent HandshakeError saying so."""
    with websockets_serve(lambda ws: None, "127.0.0.1", 0, select_subprotocol=lambda ws, offered: "evil") as srv:  # type: ignore[arg-type,return-value]
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        url = f"ws://127.0.0.1:{srv.socket.getsockname()[1]}"
        try:
            for offer in (["v1.json"], None):
                with pytest.raises(syncws.HandshakeError) as failed:
                    syncws.connect(url, subprotocols=offer)
                assert "'evil'" in failed.value.reason and "did not offer" in failed.value.reason
                assert failed.value.permanent
        finally:
            srv.shutdown()
            thread.join(5)


def test_client_that_requires_a_subprotocol_fails_when_the_server_picks_none() -> None:
    """Against a server that answers without a subprotocol, require_subprotocol fails connect(); without it the connection opens with None."""
    with websockets_serve(lambda ws: ws.send(ws.recv()), "127.0.0.1", 0) as srv:
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        url = f"ws://127.0.0.1:{srv.socket.getsockname()[1]}"
        try:
            with pytest.raises(syncws.HandshakeError) as failed:
                syncws.connect(url, subprotocols=["v1.json"], require_subprotocol=True)
            assert failed.value.status == 101 and "no subprotocol" in str(failed.value)
            with syncws.connect(url, subprotocols=["v1.json"]) as conn:
                assert conn.subprotocol is None
                conn.send("still works")
                assert conn.recv(timeout=5) == "still works"
        finally:
            srv.shutdown()
            thread.join(5)


def test_remote_service_offers_subprotocols_and_shows_the_choice(server: syncws.WebSocketServer) -> None:
    """RemoteService(subprotocols=...) gets the server's choice as .subprotocol while connected, and None once stopped."""
    service = syncws.RemoteService(server.url + "/proto", subprotocols=["v1.json"])
    assert service.subprotocol is None
    service.start(timeout=10)
    try:
        assert service.subprotocol == "v1.json"
    finally:
        service.stop()
    assert service.subprotocol is None


def test_remote_service_that_requires_a_subprotocol_gives_up_at_once(websockets_server: tuple[str, queue.Queue[Optional[str]]]) -> None:
    """A RemoteService requiring a subprotocol the server does not speak fails start() with the HandshakeError, not a timeout."""
    url, _ = websockets_server
    service = syncws.RemoteService(url, subprotocols=["v3.json"], require_subprotocol=True, backoff_min=0.05)
    with pytest.raises(syncws.HandshakeError) as failed:
        service.start(timeout=20)
    # python-websockets refuses an offer it has nothing in common with (HTTP 400).
    assert failed.value.status == 400

"""Where a server listens: IPv6 (::1, and :: dual-stack) and Unix domain sockets, with real clients."""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from websockets.sync.client import unix_connect as websockets_unix_connect

import syncws
from syncws.compat.websocket_server_api import WebsocketServer
from syncws.server.listening import describe_address, peer_address

from ..helpers import EchoHandler, syncws_threads

pytestmark = pytest.mark.timeout(30)


def _ipv6_loopback() -> bool:
    """True when this machine can listen on ::1 (a kernel without IPv6 cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _ipv6_loopback(), reason="this machine's kernel has no IPv6 loopback (::1)")


class Address(syncws.BaseWebSocketHandler):
    """Answers every message with the peer's address as the handler sees it."""

    def on_message(self, message: object) -> None:
        self.write_message(list(self.request.remote_address))


def serve(host: str = "127.0.0.1", **options: object) -> syncws.WebSocketServer:
    server = syncws.WebSocketServer(host, 0, registry=syncws.ConnectionRegistry(), **options)  # type: ignore[arg-type]
    server.add_handler("/echo", EchoHandler, name="echo")
    server.add_handler("/address", Address)
    return server.start()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A path for a Unix socket in a fresh directory (short: sun_path holds about 100 bytes)."""
    folder = tempfile.mkdtemp(prefix="syncws-")
    try:
        yield Path(folder) / "ws.sock"
    finally:
        for leftover in Path(folder).iterdir():
            leftover.unlink()
        os.rmdir(folder)


@needs_ipv6
def test_ipv6_loopback_serves_and_brackets_the_url() -> None:
    """host='::1' listens on IPv6: url is ws://[::1]:port, and syncws and websocket-client clients are echoed."""
    server = serve("::1")
    try:
        assert server.url == f"ws://[::1]:{server.port}"
        with syncws.connect(server.url + "/address") as conn:
            conn.send("who am i")
            host, port = json.loads(conn.recv(timeout=5))  # type: ignore[arg-type]
            assert host == "::1" and port > 0
        ws = websocket.create_connection(server.url + "/echo", timeout=5)
        try:
            ws.send("v6")
            assert ws.recv() == "v6"
        finally:
            ws.close()
    finally:
        server.stop()


@needs_ipv6
def test_ipv6_any_address_takes_ipv4_too() -> None:
    """host='::' is dual-stack on this system: clients reach it on ::1 and on 127.0.0.1."""
    server = serve("::")
    try:
        assert server.url == f"ws://[::]:{server.port}"
        for url in (f"ws://[::1]:{server.port}/echo", f"ws://127.0.0.1:{server.port}/echo"):
            with syncws.connect(url) as conn:
                conn.send(url)
                assert conn.recv(timeout=5) == url
    finally:
        server.stop()


def test_ipv4_server_is_not_reached_on_ipv6() -> None:
    """A server on 127.0.0.1 listens on IPv4 only, as before: nothing answers on ::1 at its port."""
    server = serve("127.0.0.1")
    try:
        assert server.socket.family == socket.AF_INET
        if _ipv6_loopback():
            with pytest.raises(syncws.NotConnected):
                syncws.connect(f"ws://[::1]:{server.port}/echo", timeout=5)
    finally:
        server.stop()


def test_unix_socket_serves_syncws_and_websockets_clients(socket_path: Path) -> None:
    """unix_socket= serves on that path: syncws.connect(unix_socket=) and python-websockets' unix_connect are echoed; url is ws://localhost."""
    server = serve(unix_socket=str(socket_path))
    try:
        assert socket_path.is_socket() and server.unix_socket == str(socket_path)
        assert server.url == "ws://localhost" and server.port == 0
        with syncws.connect("ws://localhost/echo", unix_socket=socket_path) as conn:
            conn.send(b"\x00binary")
            assert conn.recv(timeout=5) == b"\x00binary"
        with websockets_unix_connect(str(socket_path), "ws://localhost/echo", open_timeout=5) as ws:
            ws.send("text")
            assert ws.recv(timeout=5) == "text"
    finally:
        server.stop()
    assert not socket_path.exists()


def test_unix_socket_peer_address_is_a_pair_everywhere(socket_path: Path) -> None:
    """A Unix socket's peer shows as ('', 0) to handlers, server.clients and compat's client dicts, and logs as 'unix'."""
    server = serve(unix_socket=str(socket_path))
    try:
        with syncws.connect("ws://localhost/address", unix_socket=socket_path) as conn:
            conn.send("who am i")
            assert json.loads(conn.recv(timeout=5)) == ["", 0]  # type: ignore[arg-type]
            assert [client["address"] for client in server.clients] == [("", 0)]
    finally:
        server.stop()
    assert peer_address("") == ("", 0) and peer_address(("::1", 5, 0, 0)) == ("::1", 5)
    assert describe_address(("", 0)) == "unix" and describe_address(("::1", 5)) == "[::1]:5"


def test_compat_server_on_a_unix_socket_sees_its_clients(socket_path: Path) -> None:
    """websocket-server's API on a Unix socket: new_client gets a client whose address is ('', 0), and messages arrive."""
    import queue

    events: queue.Queue = queue.Queue()
    compat = WebsocketServer(unix_socket=str(socket_path))
    compat.set_fn_new_client(lambda client, server: events.put(("new", client["address"], repr(client["handler"]))))
    compat.set_fn_message_received(lambda client, server, message: events.put(("message", message)))
    compat.run_forever(threaded=True)
    try:
        with syncws.connect("ws://localhost/", unix_socket=socket_path) as conn:
            kind, address, handler = events.get(timeout=5)
            assert (kind, address) == ("new", ("", 0)) and "WebSocketHandler" in handler
            conn.send("hello")
            assert events.get(timeout=5) == ("message", "hello")
    finally:
        compat.shutdown_gracefully()


def test_stale_unix_socket_is_replaced_and_a_live_one_or_a_file_is_refused(socket_path: Path) -> None:
    """A socket file nobody listens on is replaced; one a server listens on, or a regular file, raises OSError and stays."""
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()  # the file stays, with nobody behind it: what a crashed server leaves
    server = serve(unix_socket=str(socket_path))
    try:
        with pytest.raises(OSError) as busy:
            syncws.WebSocketServer(unix_socket=str(socket_path))
        assert "another server" in str(busy.value)
        with syncws.connect("ws://localhost/echo", unix_socket=socket_path) as conn:  # the first server still serves
            conn.send("still here")
            assert conn.recv(timeout=5) == "still here"
    finally:
        server.stop()
    socket_path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        syncws.WebSocketServer(unix_socket=str(socket_path))
    assert socket_path.read_text() == "not a socket"


def test_stop_leaves_another_servers_socket_file_alone(socket_path: Path) -> None:
    """stop() removes only the socket file its server made: one put in its place meanwhile stays."""
    server = serve(unix_socket=str(socket_path))
    socket_path.unlink()
    replacement = socket.socket(socket.AF_UNIX)
    replacement.bind(str(socket_path))
    try:
        server.stop()
        assert socket_path.is_socket()
        assert syncws_threads() == []
    finally:
        replacement.close()


def test_connect_to_a_missing_unix_socket_raises_not_connected(socket_path: Path) -> None:
    """connect(unix_socket=) to a path where nothing listens raises NotConnected naming the path, with ws:// and wss:// alike."""
    for url in ("ws://localhost/echo", "wss://localhost/echo"):
        with pytest.raises(syncws.NotConnected) as failed:
            syncws.connect(url, unix_socket=socket_path)
        assert str(socket_path) in str(failed.value)


def test_remote_service_over_a_unix_socket(socket_path: Path) -> None:
    """RemoteService(unix_socket=) answers a RequestHandler's request through a Unix socket."""
    server = syncws.WebSocketServer(unix_socket=str(socket_path), registry=syncws.ConnectionRegistry()).start()
    requests = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=requests.callback)
    service = syncws.RemoteService("ws://localhost/wsData", unix_socket=str(socket_path))
    service.register("double", lambda msg: msg["x"] * 2)
    try:
        service.start(timeout=10)
        assert requests.doRequest({"cmd": "double", "x": 21}, timeout=10)["data"] == 42
    finally:
        service.stop()
        server.stop()


def test_start_warns_when_the_open_file_limit_is_below_max_connections(caplog: pytest.LogCaptureFixture) -> None:
    """A server whose max_connections exceeds the process's open-file limit says so at start, naming both figures; one within it says nothing."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    caplog.set_level(logging.WARNING, logger="syncws.server.server")
    within = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), max_connections=soft).start()
    within.stop()
    assert not [r for r in caplog.records if "open" in r.getMessage() and "files" in r.getMessage()]
    above = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), max_connections=soft + 1).start()
    above.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ulimit -n" in r.getMessage()]
    assert len(warnings) == 1 and f"may open {soft} files" in warnings[0] and f"max_connections ({soft + 1})" in warnings[0]

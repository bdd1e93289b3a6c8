"""permessage-deflate over real sockets: python-websockets and syncws on either side, the bomb, what goes compressed and what not."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import connect as websockets_connect
from websockets.sync.server import ServerConnection, serve

import syncws
from syncws import frames
from syncws.engine.connection import Connection
from syncws.protocol.deflate import Agreement, DeflateOptions, PerMessageDeflate

from .helpers import RawClient, make_server
from .peers import Env

pytestmark = pytest.mark.timeout(60)

MESSAGES: list[Any] = ["short", json.dumps({"cmd": "tick", "values": list(range(300))}), "é" * 100_000, b"\x00\x01" * 5000, os.urandom(70_000)]


@pytest.fixture
def websockets_server() -> Iterator[str]:
    """python-websockets' echo server with compression on; its ws:// URL."""

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    server = serve(echo, "127.0.0.1", 0, compression="deflate")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
    finally:
        server.shutdown()
        thread.join(10)


def deflate_raw(data: bytes) -> bytes:
    """``data`` as one permessage-deflate message payload (raw deflate, tail stripped)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


def read_frame(client: RawClient) -> tuple[int, int, bytes]:
    """The next frame a server sent to a RawClient: its first byte, its opcode and its payload."""
    b1, b2 = client._read(2)
    length = b2 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", client._read(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", client._read(8))
    return b1, b1 & 0x0F, client._read(length)


def test_websockets_client_negotiates_and_exchanges_both_ways(server: syncws.WebSocketServer) -> None:
    """python-websockets' client with compression="deflate" gets permessage-deflate from our server; every message comes back intact."""
    with websockets_connect(server.url + "/echo", compression="deflate", open_timeout=10) as ws:
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(timeout=10) == message


def test_our_client_negotiates_with_websockets_server(websockets_server: str) -> None:
    """connect(compression="deflate") agrees with python-websockets' server (its window bits included) and exchanges compressed messages."""
    with syncws.connect(websockets_server, compression="deflate") as conn:
        assert conn.extensions.startswith("permessage-deflate")
        assert conn.protocol.deflate is not None and conn.protocol.deflate.local_window_bits == 12
        for message in MESSAGES:
            conn.send(message, compress=True)
            assert conn.recv(timeout=10) == message


def test_our_client_and_server_agree(server: syncws.WebSocketServer) -> None:
    """syncws.connect(compression="deflate") and the server agree on permessage-deflate and echo every kind of message."""
    with syncws.connect(server.url + "/echo", compression="deflate") as conn:
        assert conn.extensions == "permessage-deflate"
        for message in MESSAGES:
            conn.send(message)
            assert conn.recv(timeout=10) == message


def test_client_offers_nothing_by_default(server: syncws.WebSocketServer) -> None:
    """connect() without compression offers nothing, and the connection is uncompressed."""
    with syncws.connect(server.url + "/echo") as conn:
        assert conn.extensions == "" and conn.protocol.deflate is None
        conn.send("plain")
        assert conn.recv(timeout=10) == "plain"


def test_server_without_compression_ignores_the_offer() -> None:
    """WebSocketServer(compression=None) answers an offer without Sec-WebSocket-Extensions; the client goes on uncompressed."""
    srv = make_server(compression=None)
    try:
        with syncws.connect(srv.url + "/echo", compression="deflate") as conn:
            assert conn.extensions == ""
            conn.send("x" * 1000)
            assert conn.recv(timeout=10) == "x" * 1000
    finally:
        srv.stop()


def test_server_compresses_text_but_not_a_message_sent_with_compress_false(server: syncws.WebSocketServer) -> None:
    """Text over min_size goes with RSV1 set; write_message(..., compress=False) and binary go without it."""
    sent = threading.Event()

    class Sender(syncws.BaseWebSocketHandler):
        def open(self) -> None:
            self.write_message("a" * 1000)
            self.write_message("b" * 1000, compress=False)
            self.write_message(b"c" * 1000)
            self.write_message("tiny")
            sent.set()

    server.add_handler("/sender", Sender)
    client = RawClient(server.port)
    try:
        head = client.handshake("/sender", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert b"Sec-WebSocket-Extensions: permessage-deflate" in head
        assert sent.wait(10)
        b1, _, payload = read_frame(client)
        assert b1 & frames.RSV1 and zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff") == b"a" * 1000
        assert [read_frame(client)[0] & frames.RSV1 for _ in range(3)] == [0, 0, 0]
    finally:
        client.close()


def test_send_parts_never_compresses() -> None:
    """Binary reply parts (send_parts) go uncompressed even when binary compression is on."""
    a, b = socket.socketpair()
    codec = PerMessageDeflate(Agreement(), False, DeflateOptions(compress_binary=True, min_size=0))
    conn = Connection(a, is_client=False, deflate=codec, ping_interval=None)
    try:
        b.settimeout(10)
        conn.send_parts(b"header", bytes(1000))
        first = b.recv(4, socket.MSG_WAITALL)
        assert first[0] == 0x80 | frames.OP_BINARY and struct.unpack("!H", first[2:])[0] == 1006
        assert len(b.recv(1006, socket.MSG_WAITALL)) == 1006
        conn.send(bytes(1000))
        assert b.recv(1)[0] == 0x80 | frames.RSV1 | frames.OP_BINARY
    finally:
        conn.abort()
        conn.release()
        b.close()


def test_compression_bomb_is_refused_with_1009_at_a_bounded_cost() -> None:
    """100 MB of zeros compressed to about 100 KB, sent as one message, is refused with 1009; memory stays far below 100 MB."""
    bomb = deflate_raw(bytes(100 * 1024 * 1024))
    assert len(bomb) < 200_000
    srv = make_server(max_message_size=1 << 20)
    client = RawClient(srv.port)
    try:
        head = client.handshake("/echo", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert b"permessage-deflate" in head
        tracemalloc.start()
        try:
            client.send_frame(frames.OP_BINARY, bomb, rsv=4)
            assert client.recv_close()[0] == 1009
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 1024 * 1024, peak
    finally:
        client.close()
        srv.stop()


def test_client_fails_the_handshake_on_a_bad_response() -> None:
    """A server whose 101 carries an extension response the offer does not allow fails connect() with HandshakeError."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        sock, _ = listener.accept()
        with sock:
            request = sock.recv(4096).decode()
            key = next(line.split(":", 1)[1].strip() for line in request.split("\r\n") if line.lower().startswith("sec-websocket-key"))
            sock.sendall(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {syncws.protocol.handshake.accept_key(key)}\r\n"
                "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99\r\n\r\n".encode()
            )
            sock.recv(4096)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        with pytest.raises(syncws.HandshakeError) as info:
            syncws.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", compression="deflate", timeout=5)
        assert "Sec-WebSocket-Extensions" in info.value.reason
    finally:
        thread.join(10)
        listener.close()


def test_remote_service_passes_compression_through(env: Env) -> None:
    """RemoteService(compression="deflate") offers it; the server agrees and requests and replies go compressed."""
    env.service({"echo": lambda msg: msg["text"]}, compression="deflate")
    handler = env.registry.newest("wsData")
    assert handler is not None and handler.connection.extensions == "permessage-deflate"
    text = "compressible " * 500
    assert env.rh.doRequest({"cmd": "echo", "text": text}, timeout=10)["data"] == text

"""TLS on the selector engine (engine="reactor"): after its TLS handshake, a wss:// connection runs on the I/O loop like a plain one.

Real clients (websocket-client and the websockets package's) against a real
server on 127.0.0.1 with a certificate made at test time. Large messages make
OpenSSL say "not now" on both sides (a write that must be retried with the
same bytes, decrypted bytes the selector cannot see), and a broadcaster
writing while the loop reads makes the SSL object's two directions meet.
"""

from __future__ import annotations

import queue
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect as websockets_connect

import syncws
from syncws.engine.tls import server_context
from syncws.reactor.stream import Stream

from ..helpers import EchoHandler, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(certificate: tuple[Path, Path]) -> Iterator[syncws.WebSocketServer]:
    """A started wss:// server on the selector engine with /echo, and its own registry (no session tickets, as syncws's contexts)."""
    context = server_context(str(certificate[0]), str(certificate[1]))
    made = syncws.WebSocketServer("127.0.0.1", 0, engine="reactor", ssl_context=context, registry=syncws.ConnectionRegistry(), close_timeout=2.0)
    made.add_handler("/echo", EchoHandler, name="echo")
    made.start()
    try:
        yield made
    finally:
        made.stop()


def connect(server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> syncws.ClientConnection:
    """A verified syncws client on the server's /echo."""
    return syncws.connect(server.url + "/echo", sslopt={"ca_certs": str(certificate[0])}, timeout=10)


def test_a_tls_connection_runs_on_the_loop(server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """A wss:// connection on the engine is a stream of the I/O loop, and its handshake thread ends."""
    conn = connect(server, certificate)
    try:
        assert wait_for(lambda: len(server.registry.connections("echo")) == 1)
        assert isinstance(server.registry.connections("echo")[0].connection, Stream)
        assert wait_for(lambda: not server._conn_threads)  # the handshake's thread is gone
        conn.send("over tls")
        assert conn.recv() == "over tls"
    finally:
        conn.close()


def test_large_messages_both_ways_arrive_whole(server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """Messages of 8 MiB (many TLS records, writes that would block) echo back byte for byte, text and binary."""
    binary = bytes(range(256)) * (8 * 4096)
    text = "syncws " * (8 * 2**20 // 7)
    conn = connect(server, certificate)
    try:
        for message in (binary, text, binary):
            conn.send(message)
            assert conn.recv() == message
    finally:
        conn.close()


def test_broadcasts_while_the_loop_reads_lose_nothing(server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """A thread sending to a TLS connection while its client floods it with echoes: every broadcast and every echo arrives, in order each."""
    client_context = ssl.create_default_context(cafile=str(certificate[0]))
    with websockets_connect(server.url + "/echo", ssl=client_context, open_timeout=10, max_size=None) as ws:
        assert wait_for(lambda: len(server.registry.connections("echo")) == 1)
        handler = server.registry.connections("echo")[0]
        failures: queue.Queue[BaseException] = queue.Queue()

        def broadcast() -> None:
            try:
                for n in range(300):
                    handler.write_message(f"b{n}:" + "x" * 20_000)
            except BaseException as exc:  # reported to the test thread
                failures.put(exc)

        sender = threading.Thread(target=broadcast)
        sender.start()
        for n in range(300):
            ws.send(f"e{n}:" + "y" * 20_000)
        broadcasts, echoes = [], []
        for _ in range(600):
            message = ws.recv(timeout=30)
            assert isinstance(message, str)
            (broadcasts if message[0] == "b" else echoes).append(int(message[1 : message.index(":")]))
        sender.join(30)
        assert failures.empty(), failures.get()
        assert broadcasts == list(range(300)) and echoes == list(range(300))


def test_close_handshake_over_tls(server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """A client's close over TLS gets the server's close frame back with its code, and the connection leaves the registry."""
    client_context = ssl.create_default_context(cafile=str(certificate[0]))
    with websockets_connect(server.url + "/echo", ssl=client_context, open_timeout=10) as ws:
        assert wait_for(lambda: len(server.registry.connections("echo")) == 1)
        ws.close(4000, "done here")
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 4000
    assert wait_for(lambda: not server.registry.connections("echo"))


def test_server_close_reaches_a_tls_client(server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """The server closing a TLS connection (1001) reaches the client as that close code."""
    conn = connect(server, certificate)
    try:
        assert wait_for(lambda: len(server.registry.connections("echo")) == 1)
        server.registry.connections("echo")[0].close(1001, "going away")
        assert conn.recv(timeout=10) is None
        assert conn.close_code == 1001
    finally:
        conn.close()

"""connect() and websocket URLs: a wrong scheme or no host said at once, TLS on one side only said at once by both sides, wss:// over a Unix socket."""

from __future__ import annotations

import re
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import syncws

from ..helpers import make_server

pytestmark = pytest.mark.timeout(30)


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A path for a Unix socket in a fresh, short directory (sun_path holds about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="syncws-") as folder:
        yield Path(folder) / "s"


def test_connect_to_an_http_url_says_which_ws_url_to_give() -> None:
    """connect("http://...") raises ValueError at once naming the ws:// URL to give instead (no connection attempt)."""
    started = time.monotonic()
    with pytest.raises(ValueError) as raised:
        syncws.connect("http://127.0.0.1:9/echo", timeout=5)
    assert "ws://127.0.0.1:9/echo" in str(raised.value)
    assert time.monotonic() - started < 1.0


def test_connect_to_an_https_url_says_wss() -> None:
    """connect("https://...") raises ValueError naming the wss:// URL to give instead."""
    with pytest.raises(ValueError, match=re.escape("wss://example.invalid/echo")):
        syncws.connect("https://example.invalid/echo")


def test_connect_to_a_url_without_a_host_says_so() -> None:
    """connect("ws:///echo") raises ValueError saying the URL names no host."""
    with pytest.raises(ValueError, match="names no host"):
        syncws.connect("ws:///echo")


def test_connect_with_ws_to_a_tls_server_hints_at_wss(certificate: tuple[Path, Path]) -> None:
    """ws:// to a syncws TLS server raises HandshakeError 400 whose message says to use wss://."""
    server = make_server(ssl_context=_server_context(certificate))
    try:
        with pytest.raises(syncws.HandshakeError, match="use a wss://"):
            syncws.connect(server.url.replace("wss://", "ws://") + "/echo", timeout=5)
    finally:
        server.stop()


def test_connect_with_wss_to_a_plain_server_hints_at_ws(certificate: tuple[Path, Path]) -> None:
    """wss:// to a plain server raises NotConnected whose message says to use ws://."""
    server = make_server()
    try:
        with pytest.raises(syncws.NotConnected, match="use ws://"):
            syncws.connect(server.url.replace("ws://", "wss://") + "/echo", timeout=2, sslopt={"ca_certs": str(certificate[0])})
    finally:
        server.stop()


def test_a_tls_handshake_on_a_plain_server_is_answered_at_once(certificate: tuple[Path, Path]) -> None:
    """A TLS ClientHello to a plain server gets a 400 saying to use ws:// at once, not silence until the handshake timeout (30 s here)."""
    server = make_server(handshake_timeout=30)
    try:
        client = ssl.create_default_context(cafile=str(certificate[0]))
        # Were the server to wait for its handshake timeout, this would raise TimeoutError after 10 s.
        with socket.create_connection((server.host, server.port), timeout=10) as raw, pytest.raises(ssl.SSLError):
            client.wrap_socket(raw, server_hostname="127.0.0.1")
        with socket.create_connection((server.host, server.port), timeout=10) as raw:
            raw.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a TLS handshake record
            answer = raw.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"use a ws:// URL" in answer
    finally:
        server.stop()


def test_plain_http_on_a_tls_server_is_answered_in_plain_http(certificate: tuple[Path, Path]) -> None:
    """An HTTP request where a TLS server expects its handshake gets a plain 400 saying to use wss://, not a dropped connection."""
    server = make_server(ssl_context=_server_context(certificate), handshake_timeout=30)
    try:
        with socket.create_connection((server.host, server.port), timeout=10) as raw:
            raw.sendall(b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n")
            answer = raw.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"use a wss:// (or https://) URL" in answer
    finally:
        server.stop()


def test_wss_over_a_unix_socket(certificate: tuple[Path, Path], socket_path: Path) -> None:
    """connect("wss://127.0.0.1/echo", unix_socket=path) runs TLS over the Unix socket, checked against the URL's host, and is echoed."""
    server = make_server(ssl_context=_server_context(certificate), unix_socket=str(socket_path))
    try:
        with syncws.connect("wss://127.0.0.1/echo", unix_socket=socket_path, sslopt={"ca_certs": str(certificate[0])}, timeout=5) as conn:
            conn.send("over TLS")
            assert conn.recv(timeout=5) == "over TLS"
    finally:
        server.stop()

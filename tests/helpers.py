"""Shared test helpers: servers on port 0 and a raw-socket websocket client for malformed input."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import syncws
from syncws import frames


class EchoHandler(syncws.BaseWebSocketHandler):
    """Echoes every message back as it came."""

    def on_message(self, message: Any) -> None:
        self.write_message(message)


def make_server(**options: Any) -> syncws.WebSocketServer:
    """A started server on 127.0.0.1, port 0, with its own registry and an /echo endpoint."""
    options.setdefault("registry", syncws.ConnectionRegistry())
    server = syncws.WebSocketServer("127.0.0.1", 0, **options)
    server.add_handler("/echo", EchoHandler, name="echo")
    return server.start()


def syncws_threads() -> list[threading.Thread]:
    """The syncws threads alive now."""
    return [t for t in threading.enumerate() if t.name.startswith("syncws-")]


def stop_with_a_handshake_in_progress(server: syncws.WebSocketServer, silent: socket.socket) -> None:
    """Stop ``server`` while ``silent`` is in its handshake; assert that stop() cut it short.

    stop() returns well before close_timeout (5 s here: without the cut it
    waits close_timeout + 1 s), the client sees its socket closed, and no
    syncws thread is left.
    """
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 4
    assert silent.recv(16) == b""
    assert syncws_threads() == []
    silent.close()


class RawClient:
    """A websocket client on a plain socket, for sending what a real client never would."""

    def __init__(self, port: int, path: str = "/echo", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def handshake(self, path: str = "/echo", extra: str = "") -> bytes:
        """Send an upgrade request; return the response head (status line and headers)."""
        key = base64.b64encode(os.urandom(16)).decode()
        self.send_raw(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            ).encode()
        )
        return self.read_head()

    def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, mask: bool = True) -> None:
        key = os.urandom(4) if mask else None
        header = bytearray(frames.encode_header(opcode, len(payload), fin, key))
        header[0] |= rsv << 4
        body = bytearray(payload)
        if key:
            frames.apply_mask(body, key)
        self.send_raw(bytes(header) + bytes(body))

    def recv_frame(self) -> tuple[bool, int, bytes]:
        b1, b2 = self._read(2)
        length = b2 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return bool(b1 & 0x80), b1 & 0x0F, self._read(length)

    def recv_close(self) -> tuple[int, str]:
        """Read frames until a close frame; return its code (1005 if empty) and reason."""
        while True:
            _, opcode, payload = self.recv_frame()
            if opcode == frames.OP_CLOSE:
                if not payload:
                    return 1005, ""
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the server closes the TCP connection within ``timeout`` (data is discarded)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
            return True
        except (socket.timeout, ConnectionResetError):
            return False

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout``; for state that has no event to wait on."""
    event = threading.Event()
    deadline = timeout
    waited = 0.0
    while waited < deadline:
        if predicate():
            return True
        event.wait(interval)
        waited += interval
    return bool(predicate())


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made now and written to ``folder``: (certificate, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path

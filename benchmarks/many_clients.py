"""Many connections in one thread, for fan-out and idle.

One selector and a hand-made handshake and frame parser: the same client code
for every websocket implementation (and the length-prefixed framing for
``raw``), so that the clients cost every server the same.
"""

from __future__ import annotations

import base64
import os
import selectors
import socket
import time
from typing import Any, Optional

from .common import HOST, RAW_HDR, BenchError, raw_connect


class ManyClients:
    """``n`` connections to ``path`` of a served implementation, read by ``collect``."""

    def __init__(self, impl: str, port: int, path: str, n: int) -> None:
        self.raw = impl == "raw"
        # syncws_deflate's clients offer permessage-deflate as a browser does: the
        # server then compresses what it sends them (they only count the frames).
        self.offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if impl == "syncws_deflate" else ""
        self.socks: list[socket.socket] = []
        self.state: dict[int, dict[str, Any]] = {}
        self.sel = selectors.DefaultSelector()
        self.add(port, path, n)

    def add(self, port: int, path: str, n: int) -> None:
        """Open ``n`` more connections to ``path`` on ``port`` (another server's, for a cluster); all close on failure."""
        try:
            for _ in range(n):
                s = self._open(port, path)
                self.socks.append(s)
                st = self.state[s.fileno()] = {"sock": s, "buf": bytearray(), "msgs": 0, "bytes": 0}
                self.sel.register(s, selectors.EVENT_READ, st)
        except BaseException:
            self.close()
            raise

    def _open(self, port: int, path: str) -> socket.socket:
        if self.raw:
            s = raw_connect(port, path)
        else:
            s = socket.create_connection((HOST, port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(
                (
                    "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 13\r\n%s\r\n" % (path, HOST, port, key, self.offer)
                ).encode()
            )
            resp = b""
            while b"\r\n\r\n" not in resp:  # bounded by the 64 KiB check and the socket's timeout
                chunk = s.recv(4096)
                if not chunk:
                    raise BenchError("handshake: connection closed")
                resp += chunk
                if len(resp) > 65536:
                    raise BenchError("handshake: response too long")
            if not resp.startswith(b"HTTP/1.1 101"):
                raise BenchError(f"handshake refused: {resp[:80]!r}")
            if resp.split(b"\r\n\r\n", 1)[1]:
                raise BenchError("unexpected data after handshake")
        s.setblocking(False)
        return s

    def _parse(self, st: dict[str, Any]) -> None:
        """Count the complete messages in a connection's buffer and drop them."""
        buf = st["buf"]
        pos, n = 0, len(buf)
        while True:  # each pass consumes a frame, or breaks
            if self.raw:
                if n - pos < RAW_HDR.size:
                    break
                _, _, ln = RAW_HDR.unpack_from(buf, pos)
                total = RAW_HDR.size + ln
                fin_data = True
            else:
                if n - pos < 2:
                    break
                b0, b1 = buf[pos], buf[pos + 1]
                ln, hl = b1 & 0x7F, 2
                if ln == 126:
                    if n - pos < 4:
                        break
                    ln, hl = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
                elif ln == 127:
                    if n - pos < 10:
                        break
                    ln, hl = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
                if b1 & 0x80:
                    hl += 4
                total = hl + ln
                fin_data = bool(b0 & 0x80) and (b0 & 0x0F) in (0, 1, 2)
            if n - pos < total:
                break
            pos += total
            if fin_data:
                st["msgs"] += 1
        if pos:
            del buf[:pos]

    def collect(self, target: int, timeout: float) -> Optional[float]:
        """Read until every connection has `target` messages; returns the
        monotonic time at which the last one completed."""
        waiting = {fd for fd, st in self.state.items() if st["msgs"] < target}
        t_last = None
        deadline = time.monotonic() + timeout
        while waiting:  # bounded by the deadline
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("%d of %d clients did not receive the broadcast" % (len(waiting), len(self.state)))
            for key, _ in self.sel.select(min(left, 0.5)):
                st = key.data
                try:
                    chunk = st["sock"].recv(262144)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise BenchError("server closed a fan-out connection")
                st["buf"] += chunk
                st["bytes"] += len(chunk)
                self._parse(st)
                fd = key.fd
                if fd in waiting and st["msgs"] >= target:
                    waiting.discard(fd)
                    if not waiting:
                        t_last = time.monotonic()
        return t_last

    def bytes_received(self) -> int:
        """Bytes read so far on every connection together (frames as they came on the wire)."""
        return sum(st["bytes"] for st in self.state.values())

    def close(self) -> None:
        """Close every connection."""
        for s in self.socks:
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
        self.socks = []
        self.sel.close()

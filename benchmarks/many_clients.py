"""Many connections in one thread, for fan-out and idle.

One selector and a hand-made handshake and frame parser: the same client code
for every websocket implementation (and the length-prefixed framing for
``raw``), so that the clients cost every server the same. ``open_batched``
and ``drop_closed`` serve the many-idle benchmark (benchmarks/many_idle.py):
thousands of connections within a time budget, kept only while the server
holds them.
"""

from __future__ import annotations

import base64
import errno
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

    def _request(self, port: int, path: str) -> bytes:
        """The upgrade request of one connection."""
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            "Sec-WebSocket-Version: 13\r\n%s\r\n" % (path, HOST, port, key, self.offer)
        ).encode()

    def _adopt(self, s: socket.socket, buf: bytes = b"") -> None:
        """Keep an open, upgraded, non-blocking connection; ``buf``: what came after its handshake."""
        self.socks.append(s)
        st = self.state[s.fileno()] = {"sock": s, "buf": bytearray(buf), "msgs": 0, "bytes": len(buf)}
        self.sel.register(s, selectors.EVENT_READ, st)
        if buf:
            self._parse(st)

    def open_batched(self, port: int, path: str, n: int, deadline: float, batch: int = 100) -> Optional[str]:
        """Open ``n`` more websocket connections to ``path``, ``batch`` handshakes in flight at a time, until ``deadline``.

        Returns None when all ``n`` are open, else why it stopped (the time
        budget, or the first batch in which the server refused, closed or did
        not answer a handshake); the connections opened until then are kept.
        Sending a batch's requests before reading any answer keeps the time
        to open thousands of connections down to the server's own pace; a
        batch stays below the listen backlogs and syncws's ``max_handshakes``
        (128), which would otherwise drop connections that are not its fault.
        """
        opened = 0
        while opened < n:  # each pass opens one batch; bounded by n and the deadline
            if time.monotonic() >= deadline:
                return "time budget spent"
            k = min(batch, n - opened)
            got, why = self._open_batch(port, path, k, deadline)
            opened += got
            if why is not None:
                return why
        return None

    def _open_batch(self, port: int, path: str, k: int, deadline: float) -> tuple[int, Optional[str]]:
        """Send ``k`` upgrade requests, then read the answers until ``deadline``: (connections kept, why some failed or None)."""
        pending: dict[int, tuple[socket.socket, bytearray]] = {}
        sel = selectors.DefaultSelector()
        why: Optional[str] = None
        kept = 0
        try:
            for _ in range(k):
                left = deadline - time.monotonic()
                if left <= 0:
                    why = "time budget spent while connecting"
                    break
                try:
                    s = socket.create_connection((HOST, port), timeout=min(10.0, left))
                except OSError as e:
                    why = "connect: %s" % (errno.errorcode.get(e.errno or 0, str(e)) if e.errno else e)
                    break
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(self._request(port, path))
                s.setblocking(False)
                pending[s.fileno()] = (s, bytearray())
                sel.register(s, selectors.EVENT_READ)
            while pending:  # bounded by the deadline
                left = deadline - time.monotonic()
                if left <= 0:
                    why = why or "%d handshakes unanswered at the time budget" % len(pending)
                    break
                for key, _ in sel.select(min(left, 0.5)):
                    s, resp = pending[key.fd]
                    try:
                        chunk = s.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        chunk, why = b"", why or "handshake: %s" % e
                    if chunk:
                        resp += chunk
                        if b"\r\n\r\n" not in resp and len(resp) <= 65536:
                            continue
                    del pending[key.fd]
                    sel.unregister(s)
                    head, sep, rest = bytes(resp).partition(b"\r\n\r\n")
                    if sep and head.startswith(b"HTTP/1.1 101"):
                        self._adopt(s, rest)
                        kept += 1
                        continue
                    s.close()
                    why = why or ("handshake refused: %r" % head[:60] if head else "server closed the connection during its handshake")
        finally:
            for s, _ in pending.values():
                s.close()
            sel.close()
        return kept, why

    def drop_closed(self) -> int:
        """Forget the connections the server has closed (or that got anything but frames); how many are left."""
        for key, _ in self.sel.select(0):
            st = key.data
            try:
                chunk = st["sock"].recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if chunk:
                st["buf"] += chunk
                st["bytes"] += len(chunk)
                self._parse(st)
                continue
            self.sel.unregister(st["sock"])
            del self.state[key.fd]
            self.socks.remove(st["sock"])
            st["sock"].close()
        return len(self.socks)

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

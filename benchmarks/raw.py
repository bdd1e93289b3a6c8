"""``raw``: plain TCP with length-prefixed messages, the floor every figure is divided by.

A thread per connection with blocking reads, as syncws has; for requests the
same pattern as syncws (a condition per call, a reader thread dispatching
replies), the peer in another process.
"""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from .common import (
    HOST,
    RAW_BIN,
    RAW_TEXT,
    BenchError,
    RequesterBase,
    ServeBase,
    handle_cmd,
    payload,
    raw_connect,
    raw_recv,
    raw_send,
)


class Serve(ServeBase):
    """Thread per connection, blocking reads, length-prefixed messages."""

    def __init__(self, impl: str = "raw") -> None:
        self.lsock = socket.create_server((HOST, 0), backlog=2048)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns: dict[str, list[tuple[socket.socket, threading.Lock]]] = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:  # ends with the process (a daemon thread of a peer process)
            s, _ = self.lsock.accept()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._conn, args=(s,), daemon=True).start()

    def _conn(self, s: socket.socket) -> None:
        rfile = s.makefile("rb", buffering=65536)
        first = raw_recv(rfile)
        if first is None:
            s.close()
            return
        path = first[2].decode()
        entry = (s, threading.Lock())
        with self.lock:
            self.conns.setdefault(path, []).append(entry)
        try:
            while True:  # until the client closes
                m = raw_recv(rfile)
                if m is None:
                    break
                kind, _, data = m
                if path == "/echo":
                    if kind == RAW_TEXT:
                        out = data.decode().encode()  # same work as a text frame
                    else:
                        out = data
                    with entry[1]:
                        raw_send(s, kind, out)
                elif path == "/bulkup":
                    with entry[1]:
                        raw_send(s, RAW_TEXT, str(len(data)).encode())
                elif path == "/bulkdown":
                    with entry[1]:
                        raw_send(s, RAW_BIN, payload(int(data.decode())))
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns[path].remove(entry)
            s.close()

    def count(self, path: str) -> int:
        """Open connections on ``path``."""
        with self.lock:
            return len(self.conns.get(path, ()))

    def broadcast(self, msg: str) -> None:
        """Send ``msg`` to every connection of /fanout, one after the other."""
        data = msg.encode()
        with self.lock:
            targets = list(self.conns.get("/fanout", ()))
        for s, lk in targets:
            with lk:
                raw_send(s, RAW_TEXT, data)


class Client:
    """The echo and bulk client."""

    def __init__(self, port: int, path: str) -> None:
        self.s = raw_connect(port, path)
        self.s.settimeout(30)
        self.rf = self.s.makefile("rb", buffering=65536)

    def send(self, msg: Any) -> None:
        """A str as a text message, bytes as a binary one."""
        if isinstance(msg, str):
            raw_send(self.s, RAW_TEXT, msg.encode())
        else:
            raw_send(self.s, RAW_BIN, msg)

    def recv(self) -> Any:
        """The next message: str for text, bytearray for binary."""
        m = raw_recv(self.rf)
        if m is None:
            raise BenchError("raw connection closed")
        kind, _, data = m
        return data.decode() if kind == RAW_TEXT else data

    def close(self) -> None:
        """Close the connection."""
        self.rf.close()
        self.s.close()


class Requester(RequesterBase):
    """The request pattern over raw TCP: a reader thread, a lock around writes, the callId in the header."""

    def __init__(self, impl: str = "raw") -> None:
        super().__init__()
        self.lsock = socket.create_server((HOST, 0))
        self.url = "raw://%s:%d" % (HOST, self.lsock.getsockname()[1])
        self.sock: Any = None
        self.wlock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        s, _ = self.lsock.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        threading.Thread(target=self._reader, args=(s,), daemon=True).start()
        self.connected.set()

    def _reader(self, s: socket.socket) -> None:
        rfile = s.makefile("rb", buffering=65536)
        while True:  # until the peer closes
            m = raw_recv(rfile)
            if m is None:
                return
            kind, cid, data = m
            if kind == RAW_TEXT:
                self._deliver(json.loads(data))
            else:
                self._deliver({"callId": cid, "status": 200, "data": data})

    def doRequest(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send ``msg`` to the peer and wait for its reply."""
        cid, p = self._new_call()
        data = json.dumps(dict(msg, callId=cid)).encode()
        with self.wlock:
            raw_send(self.sock, RAW_TEXT, data, cid)
        return p.wait(timeout)


def run_peer(impl: str, url: str) -> None:
    """The peer: answers each request on its reader, until the server closes."""
    host, port = url[len("raw://"):].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile = s.makefile("rb", buffering=65536)
    while True:  # until the server closes (or the process's alarm)
        m = raw_recv(rfile)
        if m is None:
            return
        reply, data = handle_cmd(json.loads(m[2]), False)
        if data is None:
            raw_send(s, RAW_TEXT, json.dumps(reply).encode(), reply["callId"])
        else:
            raw_send(s, RAW_BIN, data, reply["callId"])

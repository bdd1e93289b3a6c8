"""``websockets``: the ``websockets`` package's sync server and client.

Compression, pings and the size limit are off. The request pattern uses the
harness's call table (``common.RequesterBase``), with the connection's
handler thread as the reader, and a peer on ``websockets.sync.client``.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .common import HOST, RequesterBase, ServeBase, binary_reply, handle_cmd, payload, ws_url

OPTIONS: dict[str, Any] = {"compression": None, "max_size": None, "ping_interval": None}


class Serve(ServeBase):
    """Echo, bulk, fan-out and idle on one ``websockets.sync.server``; the handler dispatches on the path."""

    def __init__(self, impl: str = "websockets") -> None:
        from websockets.sync.server import serve

        self.lock = threading.Lock()
        self.conns: dict[str, set[Any]] = {"/fanout": set(), "/idle": set()}

        def handler(ws: Any) -> None:
            path = ws.request.path
            if path == "/echo":
                for m in ws:
                    ws.send(m)
            elif path == "/bulkup":
                for m in ws:
                    ws.send(str(len(m)))
            elif path == "/bulkdown":
                for m in ws:
                    ws.send(payload(int(m)))
            else:
                with self.lock:
                    self.conns.setdefault(path, set()).add(ws)
                try:
                    for _ in ws:
                        pass
                finally:
                    with self.lock:
                        self.conns[path].discard(ws)

        self.server = serve(handler, HOST, 0, backlog=2048, **OPTIONS)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path: str) -> int:
        """Open connections on ``path``."""
        with self.lock:
            return len(self.conns.get(path, ()))

    def broadcast(self, msg: str) -> None:
        """Send ``msg`` to every connection of /fanout, one after the other."""
        with self.lock:
            targets = list(self.conns["/fanout"])
        for ws in targets:
            ws.send(msg)


class Client:
    """The echo and bulk client: ``websockets.sync.client.connect``."""

    def __init__(self, port: int, path: str) -> None:
        from websockets.sync.client import connect

        # entered as a context manager, the form websockets 15+ asks for
        self.c = connect(ws_url(port, path), **OPTIONS).__enter__()

    def send(self, msg: Any) -> None:
        """A str as a text frame, bytes as a binary one."""
        self.c.send(msg)

    def recv(self) -> Any:
        """The next message, within 30 s."""
        return self.c.recv(timeout=30)

    def close(self) -> None:
        """Close the connection."""
        self.c.close()


class Requester(RequesterBase):
    """The request pattern on ``websockets.sync.server``: its handler thread reads the replies."""

    def __init__(self, impl: str = "websockets") -> None:
        super().__init__()
        from websockets.sync.server import serve

        self.ws: Any = None

        def handler(ws: Any) -> None:  # runs on the connection's thread: the reader
            self.ws = ws
            self.connected.set()
            for m in ws:
                self._dispatch(m)

        self.server = serve(handler, HOST, 0, **OPTIONS)
        self.url = ws_url(self.server.socket.getsockname()[1], "/wsData")
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def doRequest(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send ``msg`` to the peer and wait for its reply."""
        cid, p = self._new_call()
        self.ws.send(json.dumps(dict(msg, callId=cid)))  # send() is thread-safe
        return p.wait(timeout)


def run_peer(impl: str, url: str) -> None:
    """The peer: answers each request on its reader, until the server closes."""
    from websockets.sync.client import connect

    with connect(url, **OPTIONS) as ws:
        for m in ws:
            reply, data = handle_cmd(json.loads(m), False)
            ws.send(json.dumps(reply) if data is None else binary_reply(reply, data))

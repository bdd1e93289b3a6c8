"""``tornado_seed`` and ``tornado_seed_b64``: the design of rtCommon.webSocketHandlers, written afresh.

A Tornado IOLoop on its own thread; worker threads schedule each send with
``IOLoop.add_callback`` and wait on a per-call ``Semaphore``, the seed's own
call table (kept as the seed had it rather than the harness's
``common.Pending``, since that design is what is measured). Clients and peers
use websocket-client, as the seed's did. ``tornado_seed_b64`` sends large
replies as base64 text, as the seed did.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from .common import RequesterBase, ServeBase, WebsocketClientClient, parse_reply, payload, peer_websocket_client, start_tornado, ws_url

Client = WebsocketClientClient


class Serve(ServeBase):
    """Echo, bulk, fan-out and idle handlers on a Tornado application."""

    def __init__(self, impl: str = "tornado_seed") -> None:
        import tornado.websocket

        owner = self
        self.conns: dict[str, set[Any]] = {"/fanout": set(), "/idle": set()}  # touched on the IOLoop only

        class Echo(tornado.websocket.WebSocketHandler):
            def on_message(self, message: Any) -> None:
                self.write_message(message, binary=isinstance(message, bytes))

        class BulkUp(tornado.websocket.WebSocketHandler):
            def on_message(self, message: Any) -> None:
                self.write_message(str(len(message)))

        class BulkDown(tornado.websocket.WebSocketHandler):
            def on_message(self, message: Any) -> None:
                self.write_message(payload(int(message)), binary=True)

        class Tracked(tornado.websocket.WebSocketHandler):
            def open(self) -> None:
                owner.conns[self.request.path].add(self)

            def on_close(self) -> None:
                owner.conns[self.request.path].discard(self)

            def on_message(self, message: Any) -> None:
                pass

        routes = [("/echo", Echo), ("/bulkup", BulkUp), ("/bulkdown", BulkDown), ("/fanout", Tracked), ("/idle", Tracked)]
        self.port, self.ioloop = start_tornado(routes)

    def count(self, path: str) -> int:
        """Open connections on ``path``."""
        return len(self.conns.get(path, ()))

    def broadcast(self, msg: str) -> None:
        """Send ``msg`` to every connection of /fanout, from the IOLoop."""

        def send_all() -> None:
            for h in list(self.conns["/fanout"]):
                h.write_message(msg)

        self.ioloop.add_callback(send_all)


class Requester(RequesterBase):
    """The old rtCommon.webSocketHandlers design: IOLoop thread, sends
    scheduled with add_callback, each caller waits on its own Semaphore."""

    def __init__(self, impl: str = "tornado_seed") -> None:
        super().__init__()
        import tornado.websocket

        self.b64 = impl == "tornado_seed_b64"
        owner = self
        self.conn: Any = None

        class DataHandler(tornado.websocket.WebSocketHandler):
            def open(self) -> None:
                owner.conn = self
                owner.connected.set()

            def on_message(self, message: Any) -> None:
                reply = parse_reply(message)
                with owner.lock:
                    entry = owner.pending.pop(reply.get("callId"), None)
                if entry is not None:
                    entry["reply"] = reply
                    entry["sem"].release()

        port, self.ioloop = start_tornado([("/wsData", DataHandler)])
        self.url = ws_url(port, "/wsData")

    def doRequest(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Schedule the send on the IOLoop and wait on this call's Semaphore."""
        with self.lock:
            self.next_id += 1
            cid = self.next_id
            entry = {"sem": threading.Semaphore(0), "reply": None}
            self.pending[cid] = entry
        self.ioloop.add_callback(self.conn.write_message, json.dumps(dict(msg, callId=cid)))
        if not entry["sem"].acquire(timeout=timeout):
            with self.lock:
                self.pending.pop(cid, None)
            raise TimeoutError("request timed out")
        return self.finish(entry["reply"])


def run_peer(impl: str, url: str) -> None:
    """The seed's peer: websocket-client, answering on its reader (blobs as base64 for tornado_seed_b64)."""
    peer_websocket_client(url, b64=impl == "tornado_seed_b64")

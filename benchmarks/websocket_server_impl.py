"""``websocket_server``: the unmodified ``websocket-server`` 0.6.4.

It has text frames only and no paths: every endpoint echoes, bulk is n/a, and
bytes results travel as base64 text. The request pattern uses the harness's
call table (``common.RequesterBase``) with the connection's handler thread as
the reader; the peer is websocket-client, answering inline on its reader.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .common import HOST, RequesterBase, ServeBase, WebsocketClientClient, peer_websocket_client, ws_url

Client = WebsocketClientClient


class Serve(ServeBase):
    """websocket-server 0.6.4, unmodified: text only, no paths (echo for all)."""

    def __init__(self, impl: str = "websocket_server") -> None:
        from websocket_server import WebsocketServer

        self.server = WebsocketServer(host=HOST, port=0, loglevel=logging.ERROR)
        self.server.set_fn_message_received(lambda c, s, m: s.send_message(c, m))
        self.server.run_forever(threaded=True)
        self.port = self.server.port

    def count(self, path: str) -> int:
        """Open connections (of any path)."""
        return len(self.server.clients)

    def broadcast(self, msg: str) -> None:
        """``send_message_to_all``."""
        self.server.send_message_to_all(msg)


class Requester(RequesterBase):
    """The request pattern on websocket-server: its handler thread reads the replies."""

    b64 = True

    def __init__(self, impl: str = "websocket_server") -> None:
        super().__init__()
        from websocket_server import WebsocketServer

        self.client: Any = None
        self.server = WebsocketServer(host=HOST, port=0, loglevel=logging.ERROR)

        def new_client(client: Any, server: Any) -> None:
            self.client = client
            self.connected.set()

        # message_received runs on the connection's handler thread: the reader
        self.server.set_fn_new_client(new_client)
        self.server.set_fn_message_received(lambda c, s, m: self._dispatch(m))
        self.server.run_forever(threaded=True)
        self.url = ws_url(self.server.port, "/wsData")

    def doRequest(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send ``msg`` to the peer and wait for its reply (base64 results decoded)."""
        cid, p = self._new_call()
        self.server.send_message(self.client, json.dumps(dict(msg, callId=cid)))
        return self.finish(p.wait(timeout))


def run_peer(impl: str, url: str) -> None:
    """websocket-client, answering on its reader; blobs as base64 text."""
    peer_websocket_client(url, b64=True)

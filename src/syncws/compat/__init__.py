"""Other libraries' APIs on syncws: websocket-server 0.6.4's ``WebsocketServer``
(``from syncws.compat import WebsocketServer``).

Layer 6, an edge: imports the server and everything below it; nothing imports it.
"""

from __future__ import annotations

from .websocket_server_api import Client, WebSocketHandler, WebsocketServer
from .websocket_server_api import websocket_server as websocket_server  # the package itself, as before

__all__ = ["Client", "WebSocketHandler", "WebsocketServer"]

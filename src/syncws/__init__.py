"""syncws: synchronous, thread-based websockets for blocking Python.

A websocket server on its own thread with named endpoints and per-connection
handlers (the API of ``rtCommon.webSocketHandlers``), blocking requests to
connected peers and from peers to the server (:class:`RequestHandler`), and
the peer side (:class:`RemoteService`).
"""

from __future__ import annotations

from ._moved import install as _install_moved_paths
from .calls.calls import CancelToken
from .calls.commands import IncomingCall, current_call
from .client.client import ClientConnection, connect
from .cluster.cluster import ClusterConnection, ClusterError, RedisCluster
from .engine.connection import Connection
from .exceptions import (
    ConnectionClosed,
    HandshakeError,
    NotConnected,
    PayloadTooBig,
    ProtocolError,
    RequestCancelled,
    RequestError,
    RequestTimeout,
    SendTimeout,
    SendUnconfirmed,
    SyncWSError,
)
from .handlers.handlers import (
    BaseWebSocketHandler,
    DataWebSocketHandler,
    RejectWebSocketHandler,
    closeAllConnections,
    defaultWebsocketCallback,
    sendWebSocketMessage,
    websocketState,
)
from .handlers.registry import ConnectionRegistry
from .peer.remote import RemoteService
from .protocol.auth import bearer_token, cookie_value
from .protocol.handshake import Headers, Request
from .server.request_handler import RequestHandler
from .server.server import WebSocketServer
from .static import javascript_client

_install_moved_paths()  # the flat package's module paths (syncws.deflate, ...) keep working

__version__ = "0.1.0"

__all__ = [
    "RedisCluster",
    "ClusterConnection",
    "ClusterError",
    "SendUnconfirmed",
    "BaseWebSocketHandler",
    "CancelToken",
    "ClientConnection",
    "Connection",
    "ConnectionClosed",
    "ConnectionRegistry",
    "DataWebSocketHandler",
    "HandshakeError",
    "Headers",
    "IncomingCall",
    "NotConnected",
    "PayloadTooBig",
    "ProtocolError",
    "RejectWebSocketHandler",
    "RemoteService",
    "Request",
    "RequestCancelled",
    "RequestError",
    "RequestHandler",
    "RequestTimeout",
    "SendTimeout",
    "SyncWSError",
    "WebSocketServer",
    "bearer_token",
    "closeAllConnections",
    "connect",
    "cookie_value",
    "current_call",
    "defaultWebsocketCallback",
    "javascript_client",
    "sendWebSocketMessage",
    "websocketState",
]

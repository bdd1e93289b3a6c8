"""Named endpoints and their connections: ``BaseWebSocketHandler`` and the other names of
``rtCommon.webSocketHandlers`` (``handlers``), and the lock-guarded ``ConnectionRegistry``.

Layer 3, beside ``calls`` and ``client``: imports ``engine``, ``protocol`` and the base
modules. A handler's methods run on its connection's thread.
"""

from __future__ import annotations

from .handlers import (
    BaseWebSocketHandler,
    DataWebSocketHandler,
    HandlerHost,
    RejectWebSocketHandler,
    closeAllConnections,
    defaultWebsocketCallback,
    sendWebSocketMessage,
    websocketState,
)

__all__ = [
    "BaseWebSocketHandler",
    "DataWebSocketHandler",
    "HandlerHost",
    "RejectWebSocketHandler",
    "closeAllConnections",
    "defaultWebsocketCallback",
    "sendWebSocketMessage",
    "websocketState",
]

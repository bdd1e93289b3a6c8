"""Per-connection handler objects and the module functions of rtCommon.webSocketHandlers.

A server creates one handler object for each connection on an endpoint, as
Tornado did: ``handler_class(server, connection, request)``, then
``initialize(**kwargs)`` with the keyword arguments given to ``add_handler``,
then, once the handshake is done, ``open()``. Every message calls
``on_message(message)``; the end calls ``on_close()``.

Threads: ``initialize``, ``open``, ``on_message`` and ``on_close`` all run on the
connection's own thread (``syncws-conn-N``), one at a time, so a callback that
blocks holds up only its own connection. ``write_message`` and ``close`` are
safe from any thread.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional, Protocol

from ..engine.connection import Connection, Message, Outgoing, encode_message
from ..exceptions import ClusterError, ConnectionClosed, NotConnected, SendTimeout
from ..lograte import RateLimitedLog
from ..protocol import frames
from ..protocol.handshake import Request
from .registry import Callback, ConnectionRegistry

__all__ = [
    "HandlerHost",
    "websocketState",
    "BaseWebSocketHandler",
    "DataWebSocketHandler",
    "RejectWebSocketHandler",
    "sendWebSocketMessage",
    "closeAllConnections",
    "defaultWebsocketCallback",
]

logger = logging.getLogger(__name__)
# One line per interval per registry while a cluster's Redis is away, not one per send.
_cluster_down_log = RateLimitedLog(logger)

ConnNotify = Callable[[str, str], Any]


class HandlerHost(Protocol):
    """What a handler needs of the server that accepted its connection: the registry to join.

    :class:`syncws.WebSocketServer` is one; the handlers never import the server.
    """

    @property
    def registry(self) -> ConnectionRegistry[BaseWebSocketHandler]: ...


class BaseWebSocketHandler:
    """A handler for one connection on a named endpoint.

    ``open`` joins the registry list of its name and then calls
    ``connNotify(name, "open")``; ``on_close`` leaves it and then calls
    ``connNotify(name, "close")``. ``on_message`` hands each message to the
    name's callback as ``callback(handler, message)``; an exception there is
    logged and the connection lives on.
    """

    def __init__(self, server: HandlerHost, connection: Connection, request: Request) -> None:
        self.server = server
        self.connection = connection
        self.request = request
        self.registry: ConnectionRegistry[BaseWebSocketHandler] = server.registry
        self.name: str = request.path.lstrip("/")
        self.callback: Callback = defaultWebsocketCallback
        self.connNotify: Optional[ConnNotify] = None
        #: The subprotocol agreed in the handshake (``add_handler(subprotocols=...)``), or None.
        #: Set before ``initialize`` runs.
        self.selected_subprotocol: Optional[str] = None
        connection.on_closing = self.on_closing

    def on_closing(self, code: int, reason: str) -> None:
        """Called once, the moment the connection starts to end (our close frame went out, the
        peer's came in, or the socket was lost), before ``on_close``.

        It runs on whichever thread decided that, possibly while a send lock
        is held: it must return at once and must not send. The default does nothing.
        """

    def initialize(self, name: Optional[str] = None, callback: Optional[Callback] = None, connNotify: Optional[ConnNotify] = None) -> None:
        """Take the endpoint's settings (connection thread, before the upgrade is answered)."""
        if name is not None:
            self.name = name
        self.registry.ensure(self.name, callback)
        self.callback = callback or self.registry.callback(self.name) or defaultWebsocketCallback
        self.connNotify = connNotify

    def open(self) -> None:
        """Called once the connection is open (connection thread)."""
        self.registry.add(self.name, self)
        self._notify("open")

    def on_message(self, message: Message) -> None:
        """Called for each message, str for text and bytes for binary (connection thread)."""
        try:
            self.callback(self, message)
        except Exception:
            logger.exception("callback of %r failed on a message", self.name)

    def on_close(self) -> None:
        """Called once the connection is closed (connection thread)."""
        self.registry.remove(self.name, self)
        self._notify("close")

    def _notify(self, event: str) -> None:
        if self.connNotify is None:
            return
        try:
            self.connNotify(self.name, event)
        except Exception:
            logger.exception("connNotify of %r failed on %r", self.name, event)

    def write_message(self, message: Outgoing, binary: bool = False, compress: Optional[bool] = None) -> None:
        """Send a message: str as text, bytes-like (or ``binary=True``) as binary, dict or list as JSON text.

        Safe from any thread; messages written from one thread arrive in the
        order written. Raises TypeError for anything else (before sending),
        ConnectionClosed if the connection is closed or closing, SendTimeout
        if the peer stopped reading. ``compress`` (where permessage-deflate
        was agreed): False sends this message uncompressed, True compresses
        it, None follows the server's settings (see ``Connection.send``).
        """
        self.connection.send(message, binary, compress)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; returns at once. Safe from any thread."""
        self.connection.close(code, reason)

    def ping(self, data: bytes = b"") -> None:
        """Send a ping. Safe from any thread."""
        self.connection.ping(data)

    @property
    def close_code(self) -> Optional[int]:
        """The close code once closed (1006 when the connection dropped without a close frame)."""
        return self.connection.close_code if self.connection.closed else None

    @property
    def close_reason(self) -> Optional[str]:
        """The close reason once closed."""
        return self.connection.close_reason if self.connection.closed else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} from {self.request.remote_address}>"


class DataWebSocketHandler(BaseWebSocketHandler):
    """A handler whose closing fails at once the requests still waiting on its connection.

    That is the moment the server sends its close frame (a protocol error,
    ``close()``, ``server.stop()``), the peer's close frame arrives, or the
    socket drops: callers do not wait for the closing handshake to end. The
    registry passes the news to the closing listeners of the endpoint's name,
    which is how every :class:`syncws.RequestHandler` of that name hears it.
    """

    def on_closing(self, code: int, reason: str) -> None:
        """Tell the name's closing listeners (the thread that decided to close)."""
        self.registry.connection_closing(self.name, self, code, reason)


class RejectWebSocketHandler(BaseWebSocketHandler):
    """Completes the handshake, sends ``{"cmd": "error", "status": 403, "error": rejectMsg}``
    and closes with code 1008 and the message as the reason."""

    def initialize(self, rejectMsg: str = "connection rejected") -> None:  # type: ignore[override]
        """Take the rejection message (connection thread)."""
        self.rejectMsg = rejectMsg

    def open(self) -> None:
        """Send the error and close (connection thread)."""
        try:
            self.write_message({"cmd": "error", "status": 403, "error": self.rejectMsg})
        except (ConnectionClosed, SendTimeout):
            return
        self.close(1008, self.rejectMsg)

    def on_message(self, message: Message) -> None:
        """Ignore anything the rejected peer still sends."""

    def on_close(self) -> None:
        """Nothing to leave: a rejected connection never joined the registry."""


#: The default registry, shared by every server that is not given its own (rtCommon's name).
websocketState: ConnectionRegistry[BaseWebSocketHandler] = ConnectionRegistry()


def sendWebSocketMessage(
    wsName: str, msg: Outgoing, conn: Optional[BaseWebSocketHandler] = None, registry: ConnectionRegistry[BaseWebSocketHandler] = websocketState
) -> None:
    """Send ``msg`` to every connection of ``wsName``, or to ``conn`` alone. Safe from any thread.

    A connection that fails is closed and dropped from the registry, and the
    others still get the message. A ``conn`` not registered under ``wsName``
    raises NotConnected. On the registry of a clustered server, a message to
    every connection goes to every connection of the name on every node.
    """
    if conn is None and registry.broadcaster is not None:
        try:
            registry.broadcaster.send(wsName, msg)
            return
        except ClusterError as exc:
            # Redis is away: this process's own connections still get it (docs/cluster.md).
            _cluster_down_log.log(registry, logging.WARNING, "sending to this node's connections of %r only: %s", wsName, exc)
    if conn is not None:
        if not registry.contains(wsName, conn):
            raise NotConnected(f"connection {conn!r} is not registered under {wsName!r}")
        targets = [conn]
    else:
        targets = registry.connections(wsName)
    deliver(registry, wsName, targets, msg)


def deliver(registry: ConnectionRegistry[BaseWebSocketHandler], name: str, targets: list[BaseWebSocketHandler], msg: Outgoing) -> None:
    """Send ``msg`` to each of ``targets`` (connections of ``name``) without waiting on any one. Safe from any thread.

    The frame is made once for them all. Each connection takes what its
    socket takes at once and keeps the rest for its own writer thread
    (``Connection.send_nowait``), so a client that stops reading delays no
    other; one whose queue passes ``max_send_queue`` is closed. A connection
    that is closed is dropped from the registry.
    """
    # JSON-encoded once, not once per connection.
    message: Outgoing = json.dumps(msg) if isinstance(msg, (dict, list)) else msg
    opcode, payload = encode_message(message)
    # Server connections send unmasked frames: one frame object serves every one of them.
    frame = frames.encode_header(opcode, len(payload)) + payload if len(targets) > 1 else None
    for handler in targets:
        try:
            handler.connection.send_encoded_nowait(opcode, payload, frame)
        except (ConnectionClosed, SendTimeout, OSError) as exc:
            logger.info("dropping %r after a failed send: %s", handler, exc)
            registry.remove(name, handler)
            handler.connection.abort()


def closeAllConnections(registry: ConnectionRegistry[BaseWebSocketHandler] = websocketState) -> None:
    """Close every registered connection with 1001 and empty the lists. Safe from any thread.

    On the registry of a clustered server, every node closes its connections.
    """
    if registry.broadcaster is not None:
        try:
            registry.broadcaster.close_all(1001, "closing all connections")
            return
        except ClusterError as exc:
            _cluster_down_log.log(registry, logging.WARNING, "closing this node's connections only: %s", exc)
    for handler in registry.take_all():
        handler.close(1001, "closing all connections")


def defaultWebsocketCallback(client: BaseWebSocketHandler, message: Message) -> None:
    """Log the ``cmd`` of a JSON message; log a message that is not JSON as such."""
    try:
        cmd = json.loads(message).get("cmd")
    except (ValueError, TypeError, AttributeError):
        logger.info("%r: message that is not a JSON object (%d bytes)", client, len(message))
        return
    logger.info("%r: message with cmd %r", client, cmd)

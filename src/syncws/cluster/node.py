"""A server as a node of a cluster: its connections' presence, and the cluster's sends delivered here.

:class:`ClusterNode` joins a :class:`~syncws.server.WebSocketServer` to a
:class:`~syncws.cluster.RedisCluster`: it hears from the registry when one
of this server's handlers opens or closes and publishes or withdraws it; it
delivers the cluster's sends and close-alls to this server's connections;
and it makes the registry's module functions (``sendWebSocketMessage``,
``closeAllConnections``) act on the whole cluster.

A send through the registry (:class:`ClusterBroadcaster`) is at most once:
when Redis cannot be reached nothing was published, and the registry's
functions deliver to this node's own connections instead; when Redis took
the PUBLISH but did not confirm it (it stalled), Redis may still deliver it,
so this node does not deliver it too, and logs why.

Threads: ``connection_added`` and ``connection_removed`` run on connection
threads (a handler's ``open`` and ``on_close``); ``deliver`` and
``close_all`` on the cluster's subscriber thread (``syncws-cluster-sub``): a
connection that stops reading holds up the cluster's sends on this node for
up to the server's ``send_timeout``. The rest is safe from any thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Optional, Protocol, Union

from ..calls import callformat
from ..calls.callformat import CONN_FIELD, LINK_FIELD
from ..engine.connection import Message
from ..exceptions import ConnectionClosed, NotConnected, SyncWSError
from ..handlers.handlers import BaseWebSocketHandler, deliver
from ..handlers.registry import ConnectionRegistry
from ..lograte import RateLimitedLog
from ..protocol.handshake import Request
from .cluster import ClusterConnection, RedisCluster, SendUnconfirmed
from .untrusted import MAX_ID

__all__ = ["ClusterNode", "ClusterBroadcaster", "NodeLinkHandler", "Forwarder", "NODE_LINK_PATH", "LINK_FIELD"]

logger = logging.getLogger(__name__)

# Junk on node links, by link handler; and sends Redis did not confirm, by broadcaster.
_junk_log = RateLimitedLog(logger)
_unconfirmed_log = RateLimitedLog(logger)


class ClusterBroadcaster:
    """A clustered server's ``registry.broadcaster``: the registry's functions send through the cluster, at most once.

    A :class:`~syncws.cluster.ClusterError` passes on (nothing was
    published: ``sendWebSocketMessage`` and ``closeAllConnections`` then act
    on this node's connections). A send Redis did not confirm
    (:class:`~syncws.cluster.SendUnconfirmed`) is logged, rate-limited, and
    not delivered here: Redis may still deliver it to every node. Safe from
    any thread.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster

    def send(self, name: str, message: Any) -> None:
        """Send ``message`` to every connection of ``name`` on every node (the sending thread)."""
        try:
            self.cluster.send(name, message)
        except SendUnconfirmed as exc:
            _unconfirmed_log.log(self, logging.WARNING, "send to %r: %s; not delivered to this node's connections directly", name, exc)

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection on every node (the calling thread)."""
        try:
            self.cluster.close_all(code, reason)
        except SendUnconfirmed as exc:
            _unconfirmed_log.log(self, logging.WARNING, "close-all: %s; this node's connections are not closed directly", exc)


#: The path of the endpoint that other nodes call this node's peers through.
NODE_LINK_PATH = "/_syncws/node"


class Forwarder(Protocol):
    """What answers calls forwarded to this node: the RequestHandler of a name (its relay)."""

    def relay(self, msg: dict[str, Any], conn: BaseWebSocketHandler, sink: Any, link_call_id: Any) -> None: ...

    def cancel_relay(self, sink: Any, link_call_id: Any) -> bool: ...


class NodeServer(Protocol):
    """What a ClusterNode needs of its server."""

    @property
    def registry(self) -> ConnectionRegistry[BaseWebSocketHandler]: ...

    @property
    def url(self) -> str: ...

    def add_handler(self, path: str, handler_class: type[BaseWebSocketHandler], *, auth: Any = None, **kwargs: Any) -> None: ...


class ClusterNode:
    """This server's side of a cluster (see the module docstring)."""

    def __init__(self, server: NodeServer, cluster: RedisCluster) -> None:
        self.server = server
        self.cluster = cluster
        # Synchronize access to _ids, _handlers and _forwarders.
        self._lock = threading.Lock()
        self._ids: dict[BaseWebSocketHandler, str] = {}  # this server's registered handlers, by handler
        self._handlers: dict[str, BaseWebSocketHandler] = {}  # and by connection id
        self._forwarders: dict[str, Forwarder] = {}  # the RequestHandler of each name, for forwarded calls
        #: What the registry's sendWebSocketMessage and closeAllConnections go through.
        self.broadcaster = ClusterBroadcaster(cluster)

    def start(self) -> None:
        """Join the cluster: presence, sends, and the registry's module functions (the thread that starts the server)."""
        self.cluster.token()  # made now if this is the cluster's first node (ClusterError when Redis is away)
        self.server.add_handler(NODE_LINK_PATH, NodeLinkHandler, auth=self._link_auth, node=self)
        registry = self.server.registry
        registry.add_membership_listener(self)
        registry.broadcaster = self.broadcaster
        self.cluster.attach(self, {"url": (self.cluster.advertise or self.server.url) + NODE_LINK_PATH})
        self.cluster.start()

    def stop(self) -> None:
        """Leave the cluster: this node's presence is removed at once (the thread that stops the server)."""
        registry = self.server.registry
        registry.remove_membership_listener(self)
        if registry.broadcaster is self.broadcaster:
            registry.broadcaster = None
        self.cluster.stop()

    def _link_auth(self, request: Request) -> bool:
        """Admit a node link that carries the cluster's token (connection thread, before the upgrade)."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.cluster.check_token(value.strip())

    def add_forwarder(self, name: str, forwarder: Forwarder) -> None:
        """Answer calls that other nodes forward to this node's connections of ``name`` with ``forwarder``."""
        with self._lock:
            self._forwarders[name] = forwarder

    def forwarder(self, name: str) -> Optional[Forwarder]:
        """The forwarder of ``name``, or None."""
        with self._lock:
            return self._forwarders.get(name)

    # ------------------------------------------------------------------ presence

    def connection_added(self, name: str, handler: BaseWebSocketHandler) -> None:
        """Publish a connection this server accepted (its connection thread, in ``open``)."""
        if handler.server is not self.server:
            return  # another server sharing the registry
        conn_id = self.cluster.new_connection_id()
        with self._lock:
            self._ids[handler] = conn_id
            self._handlers[conn_id] = handler
        host, port = handler.request.remote_address[:2]
        self.cluster.connection_opened(ClusterConnection(self.cluster.node_id, conn_id, name, (str(host), int(port)), time.time()))

    def connection_removed(self, name: str, handler: BaseWebSocketHandler) -> None:
        """Withdraw a connection (its connection thread in ``on_close``, or whoever emptied the registry)."""
        with self._lock:
            conn_id = self._ids.pop(handler, None)
            if conn_id is not None:
                self._handlers.pop(conn_id, None)
        if conn_id is not None:
            self.cluster.connection_closed(conn_id)

    def handler(self, conn_id: str) -> Optional[BaseWebSocketHandler]:
        """This server's handler of the connection ``conn_id``, or None."""
        with self._lock:
            return self._handlers.get(conn_id)

    def connection_id(self, handler: BaseWebSocketHandler) -> Optional[str]:
        """The cluster id of one of this server's handlers, or None."""
        with self._lock:
            return self._ids.get(handler)

    # ------------------------------------------------------------------ the cluster's sends

    def deliver(self, name: str, message: Union[str, bytes]) -> None:
        """Send a cluster-wide message to this server's connections of ``name`` (subscriber thread)."""
        registry = self.server.registry
        deliver(registry, name, registry.connections(name, server=self.server), message)

    def close_all(self, code: int, reason: str) -> None:
        """Close this server's registered connections (subscriber thread)."""
        with self._lock:
            handlers = list(self._ids)
        for handler in handlers:
            handler.registry.remove(handler.name, handler)
            handler.close(code, reason)


class NodeLinkHandler(BaseWebSocketHandler):
    """The server side of a node link: another node (or a process without a server) calls this node's peers through it.

    Each request names the connection it is for (``_syncwsConn``). The
    link's connection thread hands it to the name's RequestHandler
    (:meth:`~syncws.request_handler.RequestHandler.relay`), which sends it to
    the peer; the peer's connection thread relays each message of the reply
    back on the link under the caller's callId as it arrives (JSON as it
    came, binary parts with their CRC-32), and a peer that went away as a
    ``_syncwsLink`` note that the caller turns back into ConnectionClosed.
    No thread of this node waits for the reply.
    """

    def initialize(self, node: Optional[ClusterNode] = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Take the node whose peers are called (connection thread)."""
        super().initialize(**kwargs)
        if node is None:
            raise ValueError("NodeLinkHandler needs node=")
        self.node = node

    def open(self) -> None:
        """A link is not a peer: it joins no registry list (connection thread)."""

    def on_close(self) -> None:
        """Nothing to leave; the count of junk still suppressed is logged (connection thread)."""
        _junk_log.forget(self, what=f"node link {self!r}")

    def on_message(self, message: Message) -> None:
        """Send a forwarded call on to its local peer, or pass a cancel of one on (connection thread). Never raises.

        The reply is relayed back as it comes. A cancel (the caller's timeout
        passed) names the connection as the request did; the peer is told,
        so that a long command can stop, and what it still sends is dropped.
        Whatever else the link sends is dropped with a rate-limited warning.
        """
        try:
            self._on_message(message)
        except Exception as exc:  # the link's junk must not end its connection thread
            _junk_log.log(self, logging.WARNING, "node link %r: message dropped: %r", self, exc)

    def _on_message(self, message: Message) -> None:
        try:
            kind, request = callformat.parse_message(message)
        except callformat.RefusedRequest as exc:
            if exc.answer:
                self._reply(error_reply(exc.cmd, exc.call_id, 400, str(exc)))
            else:
                logger.debug("node link %r: %s, ignored", self, exc)
            return
        if kind is not callformat.REQUEST:
            if kind is callformat.CANCEL:
                self._cancel(request)
            else:
                logger.debug("node link %r: a reply-like message ignored", self)
            return
        call_id = request.pop("callId", None)
        conn_id = request.pop(CONN_FIELD, None)
        cmd = request.get("cmd")
        handler, forwarder = self._local(conn_id)
        if handler is None or forwarder is None:
            why = f"no connection {conn_id!r} on this node" if handler is None else f"no RequestHandler for {handler.name!r} on this node"
            self._reply({**error_reply(cmd, call_id, 503, why), LINK_FIELD: {"notConnected": why}})
            return
        try:
            forwarder.relay(request, handler, self, call_id)
        except ConnectionClosed as exc:
            self._reply({**error_reply(cmd, call_id, 502, str(exc)), LINK_FIELD: {"closed": [exc.code, exc.reason]}})
        except (NotConnected, ValueError, TypeError) as exc:
            self._reply({**error_reply(cmd, call_id, 503, str(exc)), LINK_FIELD: {"notConnected": str(exc)}})

    def _local(self, conn_id: Any) -> tuple[Optional[BaseWebSocketHandler], Optional[Forwarder]]:
        """This node's connection ``conn_id`` and the forwarder of its name (either None when missing)."""
        handler = self.node.handler(conn_id) if isinstance(conn_id, str) and len(conn_id) <= MAX_ID else None
        return handler, self.node.forwarder(handler.name) if handler is not None else None

    def _cancel(self, cancel: dict[str, Any]) -> None:
        """Pass the caller's cancel on to the peer its call was relayed to; nothing when the call is over."""
        _, forwarder = self._local(cancel.get(CONN_FIELD))
        if forwarder is None:
            logger.debug("node link %r: cancel of callId %r for a connection that is gone, ignored", self, cancel[callformat.CANCEL_FIELD])
            return
        forwarder.cancel_relay(self, cancel[callformat.CANCEL_FIELD])

    def send_text(self, text: str) -> None:
        """Send a relayed reply's text on the link (the peer's connection thread)."""
        self.connection.send(text)

    def send_parts(self, header: bytes, data: memoryview) -> None:
        """Send a relayed binary part on the link (the peer's connection thread)."""
        self.connection.send_parts(header, data)

    def _reply(self, reply: dict[str, Any]) -> None:
        try:
            self.write_message(json.dumps(reply))
        except SyncWSError as exc:
            logger.info("node link %r closed while sending a reply: %s", self, exc)


def error_reply(cmd: Any, call_id: Any, status: int, error: str) -> dict[str, Any]:
    """An error reply dict (see callformat.error_reply)."""
    return callformat.error_reply(cmd, call_id, status, error)

"""A server as a node of a cluster: its connections' presence, and the cluster's sends delivered here.

:class:`ClusterNode` joins a :class:`~syncws.server.WebSocketServer` to a
:class:`~syncws.cluster.RedisCluster`: it hears from the registry when one
of this server's handlers opens or closes and publishes or withdraws it; it
delivers the cluster's sends and close-alls to this server's connections;
and it makes the registry's module functions (``sendWebSocketMessage``,
``closeAllConnections``) act on the whole cluster.

Threads: ``connection_added`` and ``connection_removed`` run on connection
threads (a handler's ``open`` and ``on_close``); ``deliver`` and
``close_all`` on the cluster's subscriber thread (``syncws-cluster-sub``): a
connection that stops reading holds up the cluster's sends on this node for
up to the server's ``send_timeout``. The rest is safe from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional, Protocol, Union

from .cluster import ClusterConnection, RedisCluster
from .handlers import BaseWebSocketHandler, deliver
from .registry import ConnectionRegistry

__all__ = ["ClusterNode", "NODE_LINK_PATH"]

logger = logging.getLogger(__name__)

#: The path of the endpoint that other nodes call this node's peers through.
NODE_LINK_PATH = "/_syncws/node"


class NodeServer(Protocol):
    """What a ClusterNode needs of its server."""

    @property
    def registry(self) -> ConnectionRegistry[BaseWebSocketHandler]: ...

    @property
    def url(self) -> str: ...


class ClusterNode:
    """This server's side of a cluster (see the module docstring)."""

    def __init__(self, server: NodeServer, cluster: RedisCluster) -> None:
        self.server = server
        self.cluster = cluster
        # Synchronize access to _ids and _handlers.
        self._lock = threading.Lock()
        self._ids: dict[BaseWebSocketHandler, str] = {}  # this server's registered handlers, by handler
        self._handlers: dict[str, BaseWebSocketHandler] = {}  # and by connection id

    def start(self) -> None:
        """Join the cluster: presence, sends, and the registry's module functions (the thread that starts the server)."""
        registry = self.server.registry
        registry.add_membership_listener(self)
        registry.broadcaster = self.cluster
        self.cluster.attach(self, {"url": self.server.url + NODE_LINK_PATH})
        self.cluster.start()

    def stop(self) -> None:
        """Leave the cluster: this node's presence is removed at once (the thread that stops the server)."""
        registry = self.server.registry
        registry.remove_membership_listener(self)
        if registry.broadcaster is self.cluster:
            registry.broadcaster = None
        self.cluster.stop()

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

"""Where a RequestHandler's calls go in a cluster: :class:`ClusterRoutes`.

A call goes to a connection of this server when the target is here, and
over a :class:`~syncws.node_link.NodeLink` to the node that holds it
otherwise. The routes pick the default target (the newest connection of the
name in the whole cluster, this node's own counting even while Redis is
away) and keep one link per node, opened on first use.

A caller's deadline (``time.monotonic()``, from its timeout) bounds every
step that may wait: the presence read, the link's address and token, and
opening the link. A Redis that does not answer in time leaves the choice to
this node's own connections; a link that cannot be opened in time, or whose
address Redis cannot give, is NotConnected, never ClusterError.

Threads: every method is safe from any thread; opening a link (network
I/O) happens outside the lock, on the calling thread.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from ..exceptions import HandshakeError, NotConnected
from ..handlers.handlers import BaseWebSocketHandler
from .cluster import ClusterConnection, ClusterError, RedisCluster
from .node import ClusterNode
from .node_link import LinkOwner, NodeLink

__all__ = ["ClusterRoutes", "LINK_TIMEOUT"]

#: The longest wait for each step of opening a link (connect, handshake), whatever the caller's timeout.
LINK_TIMEOUT = 10.0


class ClusterRoutes:
    """The cluster side of one RequestHandler: its target choice and its links.

    Args:
        name: the endpoint name the handler calls.
        cluster: the cluster it calls across.
        node: this process's node, when it runs a clustered server (its
            connections are called directly); None in a process without one.
        owner: gets the replies of the links and hears when one drops.
    """

    def __init__(self, name: str, cluster: RedisCluster, node: Optional[ClusterNode], owner: LinkOwner) -> None:
        self.name = name
        self.cluster = cluster
        self.node = node
        self.owner = owner
        # Synchronize access to _links (a link is opened outside it).
        self._lock = threading.Lock()
        self._links: dict[str, NodeLink] = {}

    def newest(self, deadline: Optional[float] = None) -> ClusterConnection:
        """The newest connection of the name on any node; NotConnected when there is none.

        This node's own connections count even when Redis is away, has not
        answered by ``deadline``, or has not had them republished yet after a
        restart (docs/cluster.md).
        """
        local = self.cluster.local_connections(self.name)
        redis_failure: Optional[ClusterError] = None
        try:
            records = self.cluster.connections(self.name, deadline)
        except ClusterError as exc:
            records, redis_failure = [], exc
        if self.node is not None:
            # This node's own connections are known here first hand: Redis (or the cache) may still list one that closed.
            mine = {r.id for r in local}
            records = [r for r in records if r.node != self.cluster.node_id or r.id in mine]
        if local:
            seen = {r.id for r in records}
            records = sorted(records + [r for r in local if r.id not in seen], key=lambda r: (r.opened_at, r.id))
        if not records:
            if redis_failure is not None:
                # The other nodes' connections are unknown, not absent: say why.
                raise NotConnected(
                    f"{self.name} not connected on this node, and the other nodes of cluster {self.cluster.name!r} cannot be asked: {redis_failure}"
                ) from redis_failure
            raise NotConnected(f"{self.name} not connected on any node of cluster {self.cluster.name!r}. Please start the remote service.")
        return records[-1]

    def is_local(self, record: ClusterConnection) -> bool:
        """True when ``record`` is a connection of this process's server."""
        return self.node is not None and record.node == self.cluster.node_id

    def local_handler(self, record: ClusterConnection) -> Optional[BaseWebSocketHandler]:
        """This server's handler of ``record``, or None when it is gone."""
        return self.node.handler(record.id) if self.node is not None else None

    def link(self, node: str, deadline: Optional[float] = None) -> NodeLink:
        """The open link to ``node``, opened now if there is none (calling thread; I/O outside the lock).

        NotConnected when the node is gone, Redis cannot say where it is, or
        the link cannot be opened, all by ``deadline`` when one is given.
        """
        with self._lock:
            link = self._links.get(node)
        if link is not None and not link.connection.closed:
            return link
        try:
            url = self.cluster.link_url(node, deadline)
        except (ClusterError, ValueError) as exc:  # Redis away or too slow; a node id no member has
            raise NotConnected(f"cannot find node {node!r} of cluster {self.cluster.name!r}: {exc}") from exc
        if url is None:
            # A node that ended without a word: the cached presence may still list its peers; the next call asks Redis.
            self.cluster.presence_cache.invalidate(self.name)
            raise NotConnected(f"node {node} of cluster {self.cluster.name!r} is gone")
        try:
            try:
                link = self._open(node, url, self.cluster.token(deadline=deadline), deadline)
            except HandshakeError as exc:
                if exc.status != 401:
                    raise
                # The token changed (a Redis that restarted empty got a new one): read it again, once.
                link = self._open(node, url, self.cluster.token(refresh=True, deadline=deadline), deadline)
        except (NotConnected, HandshakeError, ClusterError, OSError, ValueError) as exc:
            self.cluster.presence_cache.invalidate(self.name)  # as for a node that is gone
            raise NotConnected(f"cannot reach node {node} of cluster {self.cluster.name!r} at {url}: {exc}") from exc
        with self._lock:
            current = self._links.get(node)
            if current is not None and not current.connection.closed:
                spare, link = link, current  # another thread opened one first: use it, close ours
            else:
                spare, self._links[node] = None, link
        if spare is not None:
            spare.close()
        return link

    def _open(self, node: str, url: str, token: str, deadline: Optional[float]) -> NodeLink:
        """A new link, its opening bounded by what is left of ``deadline`` (without one, by the 10 s connect timeout)."""
        timeout = LINK_TIMEOUT if deadline is None else min(LINK_TIMEOUT, deadline - time.monotonic())
        if timeout <= 0:
            raise NotConnected("the caller's timeout passed before the link could be opened")
        return NodeLink(node, url, token, self.owner, self.cluster.ttl, self.cluster.link_sslopt, timeout=timeout)

    def forget(self, link: NodeLink) -> None:
        """Forget a link that dropped (its link thread)."""
        with self._lock:
            if self._links.get(link.node) is link:
                del self._links[link.node]

    def close_links(self) -> None:
        """Close every link (their calls fail with ConnectionClosed)."""
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()

"""Calls relayed for other nodes, and the links they go on: the cluster side of a RequestHandler.

In a cluster, a caller on one node asks a peer connected to another: the
caller's node sends the request over a node link (:mod:`syncws.cluster.node_link`),
and the peer's node relays it to its own connection, passing every reply
message back as it comes (:class:`~syncws.calls.calls.RelayCall`). This
module is the RequestHandler's part of that: :meth:`Relaying.relay` and
:meth:`Relaying.cancel_relay` run on the link's connection thread of the
peer's node; :meth:`Relaying.link_closed` on the caller's node when a link
drops.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..calls import callformat
from ..calls.calls import CallTable, RelayCall, RelaySink
from ..exceptions import ConnectionClosed, NotConnected, SendTimeout
from ..handlers.handlers import BaseWebSocketHandler
from ..handlers.registry import ConnectionRegistry
from .node_link import NodeLink
from .routing import ClusterRoutes

__all__ = ["Relaying"]

logger = logging.getLogger("syncws.server.request_handler")  # its records are the RequestHandler's: one logger


class Relaying(CallTable):
    """A RequestHandler's calls for other nodes and its links to them: a mixin of RequestHandler."""

    routes: Optional[ClusterRoutes]
    name: str
    registry: ConnectionRegistry[BaseWebSocketHandler]  # RequestHandler's
    _server: Optional[object]  # RequestHandler's: the server whose connections count, None for the registry's

    def relay(self, msg: dict[str, Any], conn: BaseWebSocketHandler, sink: RelaySink, link_call_id: Any) -> None:
        """Send ``msg`` to ``conn`` for another node; its reply goes on to ``sink`` as it arrives. Returns at once.

        A node's link endpoint calls this on the link's connection thread.
        Raises as :meth:`doRequest` does before it sends, and ConnectionClosed
        when the request cannot be sent. The call ends with its reply, with
        the peer's connection (a ``closed`` link note), or by pruning.
        """
        callformat.check_request(msg)
        handler = self._open_handler(conn)
        call = self.add(lambda call_id: RelayCall(call_id, msg.get("cmd"), handler, sink, link_call_id))
        try:
            conn.write_message(callformat.encode_request(msg, call.call_id))
        except (ConnectionClosed, SendTimeout) as exc:
            self.forget(call.call_id)
            raise ConnectionClosed(getattr(exc, "code", 1006), getattr(exc, "reason", ""), f"request {msg.get('cmd')!r} could not be sent: {exc}") from exc

    def cancel_relay(self, sink: RelaySink, link_call_id: Any) -> bool:
        """The caller on another node gave up on a call relayed for it: tell the peer, drop the call. False if it was over.

        A node's link endpoint calls this on the link's connection thread,
        which read the request before the cancel, so a call still going is
        found. Whatever the peer still sends for it is dropped here.
        """
        call = self.relayed(sink, link_call_id)
        if call is None:
            logger.debug("%s: cancel of relayed call %r, which is over, ignored", self.name, link_call_id)
            return False
        self.forget(call.call_id)
        channel: BaseWebSocketHandler = call.conn  # type: ignore[assignment]  # relay put the peer's handler there
        try:
            channel.write_message(callformat.encode_cancel(call.call_id))
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("cancel of relayed callId %d not sent: %s", call.call_id, exc)
        return True

    def link_closed(self, link: NodeLink) -> None:
        """A link to another node dropped: forget it and fail its calls at once (its link thread)."""
        if self.routes is not None:
            self.routes.forget(link)
        with self.callbackLock:
            calls = [c for c in self._calls.values() if c.conn is link]
        for call in calls:
            call.fail(ConnectionClosed(1006, "", f"node {link.node} went away while waiting for {call.cmd!r} (callId {call.call_id})"))

    def close_links(self) -> None:
        """Close this handler's links to other nodes (their calls fail with ConnectionClosed). Safe from any thread."""
        if self.routes is not None:
            self.routes.close_links()

    def _open_handler(self, handler: Optional[BaseWebSocketHandler]) -> BaseWebSocketHandler:
        """``handler`` when its connection is open; else NotConnected, naming the names that do have peers."""
        if handler is None or handler.connection.closed:
            message = f"{self.name} not connected. Please start the remote service."
            others = {name: n for name, n in self.registry.connected_names(self._server).items() if name != self.name}
            if others:
                # A peer under another name is the usual slip: RequestHandler("wsData") for an endpoint named "data".
                listed = ", ".join(f"{name!r} ({n})" for name, n in sorted(others.items()))
                message += f" Connected now under other names: {listed}; a RequestHandler's name is its endpoint's name= (or its path without '/')."
            raise NotConnected(message)
        return handler

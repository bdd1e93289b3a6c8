"""Requests from blocking threads to connected peers: :class:`RequestHandler`.

A worker thread calls :meth:`RequestHandler.doRequest`; the request goes out
as JSON with a fresh ``callId`` and the thread blocks on that call's own
:class:`~syncws.future.CallFuture`. The connection's thread delivers the reply
through :meth:`RequestHandler.callback`: a JSON reply finishes the future; a
binary reply's header finishes it with a :class:`~syncws.reassembly.Transfer`
that the caller then collects the parts from. When the connection closes,
:class:`~syncws.handlers.DataWebSocketHandler` has every call still waiting on
it failed at once. The format itself is :mod:`syncws.callformat`'s.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from . import callformat, lograte, timeouts
from .calls import CallTable, Channel, PendingCall, RelayCall, RelaySink, Target
from .cluster import RedisCluster
from .connection import Message
from .exceptions import ConnectionClosed, NotConnected, RequestError, SendTimeout
from .handlers import BaseWebSocketHandler, websocketState
from .node import CONN_FIELD, LINK_FIELD
from .node_link import NodeLink
from .reassembly import Progress, describe
from .registry import ConnectionRegistry
from .routing import ClusterRoutes
from .server import WebSocketServer

__all__ = ["RequestHandler", "Progress"]

logger = logging.getLogger(__name__)

class RequestHandler(CallTable):
    """Sends requests to the peers of one endpoint name and matches their replies.

    Register it with its endpoint::

        handler = RequestHandler("wsData", server)
        server.add_handler("/wsData", DataWebSocketHandler, name="wsData", callback=handler.callback)

    Args:
        name: the endpoint name whose connections it sends to.
        server: the server (its registry is used, and its ``stop()`` fails
            waiting calls). Requests then only ever go to connections that
            this server accepted, even when other servers share its registry.
            None uses the shared ``websocketState`` and reaches any connection
            of the name.
        max_reply_size: a binary reply announcing more bytes is refused.
        log_interval: junk from a peer (replies that are not replies) is
            logged at most once per this many seconds per connection; the next
            line says how many were suppressed.
        cluster: reach the peers of ``name`` on every node of this cluster
            (taken from ``server`` when it is a node; given alone, from a
            process that runs no server). See docs/cluster.md.
    """

    def __init__(
        self,
        name: str,
        server: Optional[WebSocketServer] = None,
        max_reply_size: int = 4 << 30,
        log_interval: float = lograte.DEFAULT_INTERVAL,
        *,
        cluster: Optional[RedisCluster] = None,
    ) -> None:
        self.name = name
        self._server = server
        cluster = cluster if cluster is not None else (server.cluster if server is not None else None)
        node = server.node if server is not None else None
        #: Where calls go in a cluster (None: this process's connections only).
        self.routes: Optional[ClusterRoutes] = ClusterRoutes(name, cluster, node, self) if cluster is not None else None
        self.registry: ConnectionRegistry[BaseWebSocketHandler] = server.registry if server is not None else websocketState
        self.max_reply_size = max_reply_size
        self._junk_log = lograte.RateLimitedLog(logger, log_interval)
        CallTable.__init__(self)
        # Told when a connection of the name starts to close (DataWebSocketHandler), and when the server stops.
        self.registry.add_closing_listener(name, self)
        if server is not None:
            server.add_stop_callback(self.close_pending_requests)
            server.add_drain_check(lambda: self.pending)  # stop(drain=...) waits for the calls in flight
        if node is not None:
            node.add_forwarder(name, self)  # other nodes' calls to this node's peers of the name

    # ------------------------------------------------------------------ caller side

    def doRequest(
        self, msg: dict[str, Any], timeout: Optional[float] = None, conn: Optional[Target] = None, progress: Optional[Progress] = None
    ) -> dict[str, Any]:
        """Send ``msg`` to a peer and block until its whole reply is in. Safe from any number of threads.

        Args:
            msg: a JSON-able dict with a str ``cmd``; a ``callId`` is added to a copy.
            timeout: seconds to wait for the reply, any non-negative number
                (None or ``math.inf``: forever). For a reply in binary parts it
                bounds the wait for each next part, so a long transfer that
                keeps moving does not time out.
            conn: the connection to ask: a handler of this server, or (in a
                cluster) a record from ``cluster.connections()``; default: the
                newest one of the name (accepted by this handler's server, or,
                in a cluster, on any node).
            progress: ``progress(received, total)`` for binary replies, called
                on the connection's thread after each part.

        Returns the reply dict: ``cmd``, ``callId``, ``status`` and, when the
        peer returned something, ``data`` (bytes for a bytes result).

        Raises, before anything is sent, TypeError or ValueError for a ``msg``
        that is not a dict with a str ``cmd`` or a NaN or negative ``timeout``,
        and NotConnected (no peer, or ``conn`` belongs to another server); then
        RequestTimeout, ConnectionClosed (the peer went away, at once) and
        RequestError (a status other than 200; 502: a binary reply not taken).
        """
        callformat.check_request(msg)
        timeout = timeouts.check_timeout(timeout)
        call, extra = self._register(msg, conn, progress, waiting=True)
        try:
            try:
                if extra:  # a link to another node: say which connection
                    call.conn.write_message(callformat.encode_request({**msg, **extra}, call.call_id))
                else:
                    call.conn.write_message(callformat.encode_request(msg, call.call_id))
            except (ConnectionClosed, SendTimeout) as exc:
                raise ConnectionClosed(getattr(exc, "code", 1006), getattr(exc, "reason", ""), f"request {msg.get('cmd')!r} could not be sent: {exc}") from exc
            return callformat.check_reply_status(call.outcome(timeout))
        finally:
            self._forget(call.call_id)

    def relay(self, msg: dict[str, Any], conn: BaseWebSocketHandler, sink: RelaySink, link_call_id: Any) -> None:
        """Send ``msg`` to ``conn`` for another node; its reply goes on to ``sink`` as it arrives. Returns at once.

        A node's link endpoint calls this on the link's connection thread.
        Raises as :meth:`doRequest` does before it sends, and ConnectionClosed
        when the request cannot be sent. The call ends with its reply, with
        the peer's connection (a ``closed`` link note), or by pruning.
        """
        callformat.check_request(msg)
        handler = self._open_handler(conn)
        with self.callbackLock:
            call_id = next(self._call_ids)
            self._calls[call_id] = RelayCall(call_id, msg.get("cmd"), handler, sink, link_call_id)
        try:
            conn.write_message(callformat.encode_request(msg, call_id))
        except (ConnectionClosed, SendTimeout) as exc:
            self._forget(call_id)
            raise ConnectionClosed(getattr(exc, "code", 1006), getattr(exc, "reason", ""), f"request {msg.get('cmd')!r} could not be sent: {exc}") from exc

    def prepare_request(
        self, msg: dict[str, Any], conn: Optional[BaseWebSocketHandler] = None, progress: Optional[Progress] = None
    ) -> tuple[int, BaseWebSocketHandler]:
        """Give ``msg`` a callId and a connection and register the call: ``(callId, conn)``.

        Raises as :meth:`doRequest` does before it sends.
        """
        callformat.check_request(msg)
        if conn is not None and not isinstance(conn, BaseWebSocketHandler):
            raise TypeError("prepare_request takes a handler of this server; a call across nodes goes through doRequest")
        # Only this server's connections: a call across nodes needs doRequest to wait on it.
        call, _ = self._register(msg, conn or self._open_handler(self.registry.newest(self.name, server=self._server)), progress, waiting=False)
        assert isinstance(call.conn, BaseWebSocketHandler)
        return call.call_id, call.conn

    def _register(self, msg: dict[str, Any], conn: Optional[Target], progress: Optional[Progress], waiting: bool) -> tuple[PendingCall, dict[str, Any]]:
        """Choose the channel, register the call; the call and the fields a link request carries ({} for a local one)."""
        channel, extra = self._channel(conn)
        self._maybe_prune()
        with self.callbackLock:
            call_id = next(self._call_ids)
            # A call a thread waits for (doRequest's, or once get_response is called) is never pruned.
            call = self._calls[call_id] = PendingCall(call_id, msg.get("cmd"), channel, progress, waiting)
        return call, extra

    def _channel(self, conn: Optional[Target]) -> tuple[Channel, dict[str, Any]]:
        """Where a call to ``conn`` (default: the newest connection of the name) goes; NotConnected when nowhere."""
        if isinstance(conn, BaseWebSocketHandler):
            if self._server is not None and conn.server is not self._server:
                raise NotConnected(f"{conn!r} was not accepted by this RequestHandler's server")
            return self._open_handler(conn), {}
        routes = self.routes
        if routes is None:
            if conn is not None:
                raise NotConnected(f"{conn!r} is a cluster connection, and this RequestHandler has no cluster")
            return self._open_handler(self.registry.newest(self.name, server=self._server)), {}
        record = conn if conn is not None else routes.newest()
        if routes.is_local(record):
            return self._open_handler(routes.local_handler(record)), {}
        return routes.link(record.node), {CONN_FIELD: record.id}

    def _open_handler(self, handler: Optional[BaseWebSocketHandler]) -> BaseWebSocketHandler:
        if handler is None or handler.connection.closed:
            raise NotConnected(f"{self.name} not connected. Please start the remote service.")
        return handler

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

    def get_response(self, callId: int, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the reply to ``callId``; see :meth:`doRequest` for what it returns and raises."""
        timeout = timeouts.check_timeout(timeout)
        with self.callbackLock:
            call = self._calls.get(callId)
            if call is not None:
                call.waiting = True
        if call is None:
            raise KeyError(f"no pending call with callId {callId}")
        try:
            reply = call.outcome(timeout)
        finally:
            self._forget(callId)
        return callformat.check_reply_status(reply)

    # ------------------------------------------------------------------ connection side

    def callback(self, client: Channel, message: Message) -> None:
        """Take a reply or reply part from a peer (connection thread). Never raises.

        A reply is matched by its callId and by the connection it came on; one
        that is invalid, unknown or late is logged and dropped (junk at most
        once per ``log_interval`` per connection). A binary reply's header or
        part that cannot be taken, for whatever reason, fails its call at once
        with RequestError 502.
        """
        try:
            if isinstance(message, str):
                self._on_text(client, message)
            else:
                self._on_binary(client, message)
        except Exception:  # a bug here must not kill the connection thread
            logger.exception("%s: failed to handle a reply", self.name)

    def _find(self, client: Channel, call_id: int) -> Optional[PendingCall]:
        """The call ``call_id`` sent on ``client``, or None (logged at debug level)."""
        with self.callbackLock:
            call = self._calls.get(call_id)
        if call is None or call.conn is not client:
            logger.debug("%s: reply to unknown or finished callId %d dropped", self.name, call_id)
            return None
        return call

    def _on_text(self, client: Channel, message: str) -> None:
        try:
            reply = callformat.parse_reply(message)
        except ValueError as exc:
            self._junk_log.log(client, logging.WARNING, "%s: %s", self.name, exc)
            return
        call_id = callformat.reply_call_id(reply)
        if call_id is None:
            if callformat.is_refusal(reply):
                # The peer's answer to a message it could not take and whose callId it could not read.
                status, error = _short_repr(reply.get("status")), _short_repr(reply["error"])
                self._junk_log.log(client, logging.WARNING, "%s: the peer refused a message: status %s: %s", self.name, status, error)
            else:
                invalid = _short_repr(reply.get("callId"))
                self._junk_log.log(client, logging.WARNING, "%s: reply with a missing or invalid callId %s dropped", self.name, invalid)
            return
        call = self._find(client, call_id)
        if call is None:
            return
        if isinstance(call, RelayCall):
            if call.relay_reply(reply):
                self._forget(call.call_id)
        elif LINK_FIELD in reply and isinstance(client, NodeLink):
            call.apply_link_note(reply)
        elif call.transfer is not None:
            call.fail(RequestError(502, "damaged binary reply: a reply came in the middle of its parts", reply))
        elif callformat.is_binary_header(reply):
            call.start_transfer(reply, self.max_reply_size)
        else:
            call.set_result(reply)

    def _on_binary(self, client: Channel, message: bytes) -> None:
        part = callformat.decode_part_header(message)
        if part is None:
            self._junk_log.log(client, logging.WARNING, "%s: binary message that is not a reply part dropped (%d bytes)", self.name, len(message))
            return
        call = self._find(client, part.call_id)
        if call is None:
            return
        if isinstance(call, RelayCall):
            if call.relay_part(part, message):
                self._forget(call.call_id)
            return
        try:
            if call.transfer is None:
                raise ValueError("binary part before the reply header")
            call.transfer.add(part, message)
        except Exception as exc:  # whatever goes wrong with a part, its call ends with a 502 at once
            call.fail(RequestError(502, f"damaged binary reply: {describe(exc)}", {"cmd": call.cmd, "callId": call.call_id, "status": 502}))

    def connection_closing(self, handler: BaseWebSocketHandler, code: int, reason: str) -> None:
        """A connection of this name started to close: fail its calls at once (the thread that decided the close).

        The registry calls it (see DataWebSocketHandler); the count of junk
        still suppressed for ``handler`` is logged then.
        """
        self._junk_log.forget(handler, what=self.name)
        self._fail_calls(handler, code, reason)

    def close_pending_requests(self, conn: Optional[BaseWebSocketHandler] = None) -> None:
        """Fail at once, with ConnectionClosed, the calls sent on ``conn`` (all calls when None). Safe from any thread."""
        if conn is not None:
            self._junk_log.forget(conn, what=self.name)
        self._fail_calls(conn, None, "")

    def _fail_calls(self, conn: Optional[BaseWebSocketHandler], code: Optional[int], reason: str) -> None:
        with self.callbackLock:
            calls = [c for c in self._calls.values() if conn is None or c.conn is conn]
        for call in calls:
            if isinstance(call, RelayCall):
                self._forget(call.call_id)  # no caller of this node forgets it
            connection = call.conn.connection
            call.fail(
                ConnectionClosed(
                    code or connection.close_code or 1006,
                    reason or connection.close_reason,
                    f"connection closed while waiting for {call.cmd!r} (callId {call.call_id})",
                )
            )


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: a peer's junk goes into the log only this long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

"""Requests both ways between a server and its peers: :class:`RequestHandler`.

A worker thread calls :meth:`RequestHandler.doRequest`; the request goes out
as JSON with a fresh ``callId`` and the thread blocks on that call's own
:class:`~syncws.future.CallFuture`. The connection's thread delivers the reply
through :meth:`RequestHandler.callback`: a JSON reply finishes the future; a
binary reply's header finishes it with a :class:`~syncws.reassembly.Transfer`
that the caller then collects the parts from. When the connection closes,
:class:`~syncws.handlers.DataWebSocketHandler` has every call still waiting on
it failed at once. The format itself is :mod:`syncws.callformat`'s.

The other way, a peer (RemoteService, a browser page) calls a command
registered with :meth:`RequestHandler.register` or
:meth:`RequestHandler.command`: the connection's thread reads the request and
hands it to the handler's :class:`~syncws.command_pool.CommandPool`, so the
connection reads on while the command runs (docs/protocol.md).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Union

from .. import lograte, timeouts
from ..calls import callformat, rtcloud_wire
from ..calls.callformat import CANCEL, CONN_FIELD, REPLY
from ..calls.calls import CallTable, CancelToken, PendingCall, RelayCall, closed_while_waiting
from ..calls.command_pool import CommandPool
from ..calls.commands import CommandDecorator, Commands, current_call
from ..calls.reassembly import Progress
from ..calls.rtcloud_reply import ReplyAssembler, RtcloudCall
from ..cluster.cluster import ClusterConnection, RedisCluster
from ..cluster.node_link import NodeLink
from ..cluster.relaying import Relaying
from ..cluster.routing import ClusterRoutes
from ..engine.connection import Message
from ..exceptions import ConnectionClosed, NotConnected, RequestCancelled, SendTimeout
from ..handlers.handlers import BaseWebSocketHandler, defaultWebsocketCallback, websocketState
from ..handlers.registry import ConnectionRegistry
from ..observe.requests import RequestCounters
from ..reactor.handler_pool import release_the_loop
from .answering import Answering
from .server import WebSocketServer
from .waiting import Waiting, loop_leader

__all__ = ["RequestHandler", "Progress", "Channel", "Target"]

logger = logging.getLogger(__name__)

#: Where a call goes: a connection's handler on this server, or a link to the node that holds the peer.
Channel = Union[BaseWebSocketHandler, NodeLink]
#: What ``doRequest(conn=...)`` takes: a handler of this server, or a connection anywhere in the cluster.
Target = Union[BaseWebSocketHandler, ClusterConnection]

#: Bytes per binary message of a large result of a command.
DEFAULT_PART_SIZE = 8 * 1024 * 1024

#: The formats a RequestHandler speaks: syncws's own, and rt-cloud's (its deployed peers).
WIRES = ("syncws", "rtcloud")


class RequestHandler(Waiting, Answering, Relaying, CommandDecorator):
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
        workers: how many commands (see :meth:`register`) may run at once,
            on threads ``syncws-cmd-N`` started when needed.
        max_pending: how many more may wait for a worker; past that a
            request is answered 503 at once.
        max_per_connection: how many of those places (running and waiting)
            one connection's requests may hold; past that its requests are
            answered 503 while the other connections' still get in. Default:
            half of ``workers + max_pending``, at least ``workers + 1``.
        part_size: bytes per binary message of a large command result.
        wire: ``"syncws"`` (the default) or ``"rtcloud"``: speak to rt-cloud's
            deployed peers in their own format (docs/migration.md): bytes
            arguments go out in base64, replies in JSON parts are joined,
            checked and decoded into the reply a syncws peer gives, and no
            cancel is sent when a call times out (those peers would answer
            it as a malformed call). Not with a cluster.
        allow_pickle: with ``wire="rtcloud"``, load every pickled result. By
            default only None, booleans, numbers, strings, bytes, containers
            and numpy arrays are loaded, and anything else fails the call
            with RequestError 502 naming what was refused. True lets the peer
            run any code in this process: only for peers trusted that far.

    ``server`` may also be any other object (rt-cloud's ``ioLoopInst``):
    the handler then works as ``server=None`` does, and says so in the log.
    """

    def __init__(
        self,
        name: str,
        server: Optional[WebSocketServer] = None,
        max_reply_size: int = 4 << 30,
        log_interval: float = lograte.DEFAULT_INTERVAL,
        *,
        cluster: Optional[RedisCluster] = None,
        workers: int = 8,
        max_pending: int = 64,
        max_per_connection: Optional[int] = None,
        part_size: int = DEFAULT_PART_SIZE,
        wire: str = "syncws",
        allow_pickle: bool = False,
    ) -> None:
        if part_size <= 0:
            raise ValueError("part_size must be positive")
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(map(repr, WIRES))}, not {wire!r}")
        if server is not None and not isinstance(server, WebSocketServer):
            # rt-cloud's RequestHandler(name, ioLoopInst): Tornado's IOLoop has no registry of ours.
            logger.info("RequestHandler %r: %r is not a syncws WebSocketServer; using the default registry websocketState", name, server)
            server = None
        if wire == "rtcloud" and (cluster is not None or (server is not None and server.cluster is not None)):
            raise ValueError("wire='rtcloud' reaches this process's own connections only, not a cluster")
        self.name = name
        #: The format spoken to the peers: "syncws" or "rtcloud".
        self.wire = wire
        self.allow_pickle = allow_pickle
        self._encode_request = rtcloud_wire.encode_request if wire == "rtcloud" else callformat.encode_request
        self._server = server
        cluster = cluster if cluster is not None else (server.cluster if server is not None else None)
        node = server.node if server is not None else None
        #: Where calls go in a cluster (None: this process's connections only).
        self.routes: Optional[ClusterRoutes] = ClusterRoutes(name, cluster, node, self) if cluster is not None else None
        self.registry: ConnectionRegistry[BaseWebSocketHandler] = server.registry if server is not None else websocketState
        CallTable.__init__(self, name, max_reply_size, lograte.RateLimitedLog(logger, log_interval))
        #: The commands peers may call, and the calls being answered now.
        self.commands = Commands()
        self.part_size = part_size
        self._pool = CommandPool(workers, max_pending, max_per_owner=max_per_connection)
        #: The calls made (doRequest, get_response) counted: what the server's stats() reports of this handler.
        self.request_counters = RequestCounters(name, lambda: self.pending, self._pool.threads)
        # Told when a connection of the name starts to close (DataWebSocketHandler), and when the server stops.
        self.registry.add_closing_listener(name, self)
        if server is not None:
            server.add_request_counters(self.request_counters)
            server.add_stop_callback(self.close_pending_requests)
            server.add_stop_callback(self.stop_commands)
            # stop(drain=...) waits for the calls in flight: the server's own, and the peers' commands.
            server.add_drain_check(lambda: self.pending + self.commands_busy)
        if node is not None:
            node.add_forwarder(name, self)  # other nodes' calls to this node's peers of the name

    # ------------------------------------------------------------------ caller side

    def doRequest(
        self,
        msg: dict[str, Any],
        timeout: Optional[float] = None,
        conn: Optional[Target] = None,
        progress: Optional[Progress] = None,
        *,
        cancel: Optional[CancelToken] = None,
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
            cancel: a :class:`~syncws.CancelToken`; its ``cancel()``, from any
                thread, ends the call at once with RequestCancelled and tells
                the peer as a timeout does.

        Returns the reply dict: ``cmd``, ``callId``, ``status`` and, when the
        peer returned something, ``data`` (bytes for a bytes result).

        Raises, before anything is sent, TypeError or ValueError for a ``msg``
        that is not a dict with a str ``cmd`` or a NaN or negative ``timeout``,
        and NotConnected (no peer, or ``conn`` belongs to another server); then
        RequestTimeout, ConnectionClosed (the peer went away, at once) and
        RequestError (a status other than 200; 502: a binary reply not taken).
        RuntimeError, before anything is sent, when the peer's endpoint was
        added without ``callback=handler.callback``: no reply could arrive.
        When the timeout passes, the peer is told (a cancel, docs/protocol.md;
        not with ``wire="rtcloud"``) and its late reply is dropped. RuntimeError, before anything is sent,
        from a command registered ``inline=True`` that asks its own
        connection: the thread that would read the reply is its own.
        """
        callformat.check_request(msg)
        deadline = timeouts.deadline(timeout)
        with self.request_counters.counting():  # from here on, the call counts, whatever its outcome
            # Finding the connection (Redis, a link to another node) spends the same timeout.
            channel, extra = self._channel(conn, deadline)
            timeout = timeouts.remaining(deadline)
            _refuse_waiting_on_own_reader(channel)
            self._check_routed(channel)
            if cancel is not None and cancel.cancelled:
                raise RequestCancelled(None, msg.get("cmd"))
            call = self._register(msg, channel, progress, waiting=True)
            # On the selector engine a caller asking back to back may read its reply itself (syncws.reactor.caller_lead).
            pool = loop_leader(channel)
            if pool is not None and not pool.may_lead():
                pool = None
            call.on_finish = pool.begin_wait() if pool is not None else None
            leader = pool if call.on_finish is not None else None
            if leader is None:
                release_the_loop()  # a handler on the thread that left the I/O loop, or a caller not leading: the reply comes through it
            try:
                try:
                    if extra:  # a link to another node: say which connection
                        channel.write_message(callformat.encode_request({**msg, **extra}, call.call_id))
                    else:
                        channel.write_message(self._encode_request(msg, call.call_id))
                except (ConnectionClosed, SendTimeout) as exc:
                    why = f"request {msg.get('cmd')!r} could not be sent: {exc}"
                    raise ConnectionClosed(getattr(exc, "code", 1006), getattr(exc, "reason", ""), why) from exc
                return callformat.check_reply_status(self._outcome(call, channel, extra, timeout, cancel, leader))
            finally:
                self.forget(call.call_id)
                if pool is not None:
                    pool.end_wait()

    def _register(self, msg: dict[str, Any], channel: Channel, progress: Optional[Progress], waiting: bool) -> PendingCall:
        if self.wire == "rtcloud":
            # Replies in JSON parts, put together by the call itself; nothing is read into place.
            assembler = ReplyAssembler(self.max_reply_size, allow_pickle=self.allow_pickle)
            return self.add(lambda call_id: RtcloudCall(call_id, msg.get("cmd"), channel, progress, waiting, assembler))
        if isinstance(channel, BaseWebSocketHandler) and channel.connection.placer is None:
            # Large reply parts on this connection are read straight into their results (syncws.reassembly).
            channel.connection.placer = functools.partial(self.place, channel)
        # A call a thread waits for (doRequest's, or once get_response is called) is never pruned.
        return self.add(lambda call_id: PendingCall(call_id, msg.get("cmd"), channel, progress, waiting))

    def _channel(self, conn: Optional[Target], deadline: Optional[float] = None) -> tuple[Channel, dict[str, Any]]:
        """Where a call to ``conn`` (default: the newest connection of the name) goes; NotConnected when nowhere.

        In a cluster, asking Redis and opening a link to another node give up
        at ``deadline`` (a ``time.monotonic()`` moment) with NotConnected.
        """
        if isinstance(conn, BaseWebSocketHandler):
            if self._server is not None and conn.server is not self._server:
                raise NotConnected(f"{conn!r} was not accepted by this RequestHandler's server")
            return self._open_handler(conn), {}
        routes = self.routes
        if routes is None:
            if conn is not None:
                raise NotConnected(f"{conn!r} is a cluster connection, and this RequestHandler has no cluster")
            return self._open_handler(self.registry.newest(self.name, server=self._server)), {}
        record = conn if conn is not None else routes.newest(deadline)
        if routes.is_local(record):
            return self._open_handler(routes.local_handler(record)), {}
        return routes.link(record.node, deadline), {CONN_FIELD: record.id}

    # ------------------------------------------------------------------ connection side

    def callback(self, client: Channel, message: Message) -> None:
        """Take a message from a peer (connection thread): a reply or reply part, a request, or a cancel. Never raises.

        A reply is matched by its callId and by the connection it came on; one
        that is invalid, unknown or late is logged and dropped (junk at most
        once per ``log_interval`` per connection). A binary reply's header or
        part that cannot be taken, for whatever reason, fails its call at once
        with RequestError 502. A request is answered by its command (see
        :meth:`register`); a cancel marks the call it names cancelled.
        """
        try:
            if isinstance(message, str):
                self._on_text(client, message)
            elif not self.take_part(client, message):
                self._junk_log.log(client, logging.WARNING, "%s: binary message that is not a reply part dropped (%d bytes)", self.name, len(message))
        except Exception:  # a bug here must not kill the connection thread
            logger.exception("%s: failed to handle a message", self.name)

    def _on_text(self, client: Channel, message: str) -> None:
        try:
            kind, parsed = callformat.parse_message(message)
        except callformat.RefusedRequest as refused:
            if not (refused.cmd is None and isinstance(refused.message, dict) and self.take_statusless(client, refused.message)):
                self._refuse(client, refused)
            return
        if kind is REPLY:
            self.take_reply(client, parsed, via_link=isinstance(client, NodeLink))
        elif not isinstance(client, BaseWebSocketHandler):
            self._junk_log.log(client, logging.WARNING, "%s: a %s on a node link dropped", self.name, kind.value)
        elif kind is CANCEL:
            self.commands.cancel(client, parsed[callformat.CANCEL_FIELD])
        else:
            self._on_request(client, parsed)

    def _refuse(self, client: Channel, refused: callformat.RefusedRequest) -> None:
        """A message that is neither a reply, a request nor a cancel: answer 400 when it names its callId, else log it."""
        if refused.answer and refused.call_id is not None and isinstance(client, BaseWebSocketHandler):
            self._junk_log.log(client, logging.WARNING, "%s: %s; answered with status 400", self.name, refused.reason)
            self._send_error(client, refused.cmd, refused.call_id, 400, refused.reason)
        else:
            self._junk_log.log(client, logging.WARNING, "%s: %s; dropped", self.name, refused.reason)

    def connection_closing(self, handler: BaseWebSocketHandler, code: int, reason: str) -> None:
        """A connection of this name started to close: fail its calls at once (the thread that decided the close).

        The registry calls it (see DataWebSocketHandler); the count of junk
        still suppressed for ``handler`` is logged then.
        """
        self._junk_log.forget(handler, what=self.name)
        # Its queued requests never start; the running ones see their cancellation.
        self._pool.drop(handler)
        self.commands.cancel_all(handler, forget=True)
        self._fail_calls(handler, code, reason)

    def close_pending_requests(self, conn: Optional[BaseWebSocketHandler] = None) -> None:
        """Fail at once, with ConnectionClosed, the calls sent on ``conn`` (all calls when None). Safe from any thread."""
        if conn is not None:
            self._junk_log.forget(conn, what=self.name)
        self._fail_calls(conn, None, "")

    def _fail_calls(self, conn: Optional[BaseWebSocketHandler], code: Optional[int], reason: str) -> None:
        for call in self.calls_on(conn):
            if isinstance(call, RelayCall):
                self.forget(call.call_id)  # no caller of this node forgets it
            channel: Channel = call.conn  # type: ignore[assignment]  # what _register and relay put there
            connection = channel.connection
            call.fail(closed_while_waiting(code or connection.close_code or 1006, reason or connection.close_reason, call.cmd, call.call_id))

    def _check_routed(self, channel: Channel) -> None:
        """RuntimeError, before anything is sent, when the peer's endpoint hands its messages to no RequestHandler.

        Its replies would go to the default callback, which logs and drops
        them, and the caller would wait for nothing. An endpoint with a
        callback of its own may pass them on: that is left to it.
        """
        if isinstance(channel, BaseWebSocketHandler) and channel.callback is defaultWebsocketCallback:
            raise RuntimeError(
                f"the connections of {channel.name!r} hand their messages to defaultWebsocketCallback, so no reply would reach "
                f"this RequestHandler: add callback=handler.callback to add_handler('{channel.request.path}', ..., name={channel.name!r}, "
                "callback=handler.callback)"
            )


def _refuse_waiting_on_own_reader(channel: Channel) -> None:
    """RuntimeError when the calling thread reads ``channel`` itself: an inline command that would wait forever."""
    answering = current_call()
    if answering is not None and answering.inline and answering.conn is channel:
        raise RuntimeError(
            f"command {answering.cmd!r} runs inline on the thread that reads its connection, so it cannot wait for a reply "
            "on that connection; register it without inline=True"
        )

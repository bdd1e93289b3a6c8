"""The waits of a RequestHandler beside ``doRequest``: for a peer to connect, and for a call made in two steps.

:meth:`Waiting.wait_connected` blocks until a peer of the handler's name is
connected. ``rtCommon.webSocketHandlers`` let a caller split ``doRequest`` in
two: :meth:`Waiting.prepare_request` gives the request a callId and a
connection and registers the call without sending it;
:meth:`Waiting.get_response` waits for its reply. A mixin of
:class:`~syncws.RequestHandler`; every method is safe from any thread, as
``doRequest`` is.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from .. import timeouts
from ..calls import callformat
from ..calls.calls import CallTable, CancelToken, PendingCall
from ..calls.reassembly import Progress
from ..cluster.cluster import ClusterError
from ..cluster.routing import ClusterRoutes
from ..exceptions import ConnectionClosed, NotConnected, RequestCancelled, RequestTimeout, SendTimeout
from ..handlers.handlers import BaseWebSocketHandler
from ..handlers.registry import ConnectionRegistry
from ..observe.requests import RequestCounters
from ..reactor.handler_pool import HandlerPool
from ..reactor.stream import Stream

if TYPE_CHECKING:
    from .request_handler import Channel, Target

__all__ = ["Waiting", "loop_leader"]

# How often wait_connected looks in a cluster's Redis for a peer on another node, in seconds.
_CLUSTER_POLL = 0.1


# Its records are the RequestHandler's: one logger to configure.
logger = logging.getLogger("syncws.server.request_handler")


class Waiting(CallTable):
    """``wait_connected``, ``prepare_request`` and ``get_response``: a mixin of RequestHandler, built on its routing and its calls."""

    registry: ConnectionRegistry[BaseWebSocketHandler]
    routes: Optional[ClusterRoutes]
    _server: Optional[object]
    request_counters: RequestCounters
    wire: str

    if TYPE_CHECKING:  # what it uses of RequestHandler and Relaying; declared only for the type checker

        def _channel(self, conn: Optional[Target]) -> tuple[Channel, dict[str, Any]]: ...  # RequestHandler's

        def _open_handler(self, handler: Optional[BaseWebSocketHandler]) -> BaseWebSocketHandler: ...  # Relaying's

        def _register(self, msg: dict[str, Any], channel: Channel, progress: Optional[Progress], waiting: bool) -> PendingCall: ...  # RequestHandler's

    def _outcome(
        self,
        call: PendingCall,
        channel: Channel,
        extra: dict[str, Any],
        timeout: Optional[float],
        cancel: Optional[CancelToken] = None,
        leader: Optional[HandlerPool] = None,
    ) -> dict[str, Any]:
        """The whole reply to ``call``; when the timeout passes, the peer is told to give up on it too.

        On a link to another node the cancel names the connection, as the
        request did (``extra``), and that node passes it on to its peer.
        With a ``leader``, the caller reads its reply itself when the I/O
        loop is kept for it (:mod:`syncws.reactor.caller_lead`).
        """
        try:
            return call.outcome(timeout, cancel, leader)
        except (RequestTimeout, RequestCancelled):
            if self.wire == "rtcloud":
                raise  # rt-cloud's peers know no cancel: they would answer it as a malformed call
            try:
                channel.write_message(callformat.encode_cancel(call.call_id, extra))
            except (ConnectionClosed, SendTimeout) as exc:
                logger.debug("cancel of callId %d not sent: %s", call.call_id, exc)
            raise

    def take_on_io_thread(self, client: BaseWebSocketHandler, message: Union[str, bytes]) -> bool:
        """Take a reply or a reply's binary part at once, on the I/O thread of a server on the selector
        engine (``engine="reactor"``); False for anything else (a request, a cancel, junk), which the
        connection's worker hands to :meth:`callback` as usual. Quick, and never raises.

        Matching a reply wakes its caller without a hand-off to a worker first,
        as the connection's own thread does on the thread engine. A
        ``progress=`` function then runs on that I/O thread: it must be quick.
        """
        try:
            if isinstance(message, str):
                if '"status"' not in message:
                    return False  # no reply: a request or a cancel, for the worker
                kind, parsed = callformat.parse_message(message)
                if kind is not callformat.REPLY:
                    return False
                self.take_reply(client, parsed)
                return True
            return self.take_part(client, message)
        except Exception:  # a reply the worker's callback will refuse or log, as on the thread engine
            return False

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Block until a peer of this handler's name is connected; True, or False once ``timeout`` s passed (None: forever).

        It counts the connections ``doRequest`` would reach: this server's
        (or, without a server, the registry's), and in a cluster those on any
        node (looked up in Redis about ten times a second; a Redis that
        cannot be reached counts as no peer yet). Locally it wakes the moment
        the peer's connection opens. ValueError for a NaN or negative timeout.
        """
        timeout = timeouts.check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        joined = _Joined(self.name, self._server)
        self.registry.add_membership_listener(joined)
        try:
            while not self._has_peer():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                # A cluster's other nodes tell nothing: look again now and then.
                wait = remaining if self.routes is None else min(_CLUSTER_POLL, remaining if remaining is not None else _CLUSTER_POLL)
                joined.event.wait(wait)
                joined.event.clear()
            return True
        finally:
            self.registry.remove_membership_listener(joined)

    def _has_peer(self) -> bool:
        try:
            self._channel(None)
        except (NotConnected, ClusterError):
            return False
        return True

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
        handler, _ = self._channel(conn or self._open_handler(self.registry.newest(self.name, server=self._server)))
        assert isinstance(handler, BaseWebSocketHandler)
        call = self._register(msg, handler, progress, waiting=False)
        return call.call_id, handler

    def get_response(self, callId: int, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the reply to ``callId``; see :meth:`doRequest` for what it returns and raises."""
        timeout = timeouts.check_timeout(timeout)
        with self.callbackLock:
            call = self._calls.get(callId)
            if call is not None:
                call.waiting = True
        if call is None:
            raise KeyError(f"no pending call with callId {callId}")
        with self.request_counters.counting():
            try:
                reply = self._outcome(call, call.conn, {}, timeout)  # type: ignore[arg-type]  # a handler: prepare_request makes no call across nodes
            finally:
                self.forget(callId)
            return callformat.check_reply_status(reply)


class _Joined:
    """A membership listener that sets ``event`` when a connection of ``name`` (accepted by ``server``, if given) joins."""

    def __init__(self, name: str, server: Optional[object]) -> None:
        self.name = name
        self.server = server
        self.event = threading.Event()

    def connection_added(self, name: str, handler: BaseWebSocketHandler) -> None:
        """Any thread that registers a connection (its connection thread), outside the registry's lock."""
        if name == self.name and (self.server is None or handler.server is self.server):
            self.event.set()

    def connection_removed(self, name: str, handler: BaseWebSocketHandler) -> None:
        """A connection left: nothing to do for a wait for one to come."""


def loop_leader(channel: Channel) -> Optional[HandlerPool]:
    """The handler pool whose I/O loop reads ``channel`` (a connection of a server on the selector engine); None for any other channel."""
    if isinstance(channel, BaseWebSocketHandler):
        connection = channel.connection
        if isinstance(connection, Stream):
            return connection.lane.pool
    return None

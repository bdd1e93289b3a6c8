"""One named thread per accepted socket, with a bound on the sockets still in their handshake, and what it runs.

:class:`ConnectionHandler` is the life of one connection on its thread:
TLS and the handshake (:mod:`syncws.admission`), then the messages to the
handler until the connection closes, each counted as work in flight for a
drain (:mod:`syncws.drain`). :class:`ConnectionThreads` is the part of
``socketserver.ThreadingMixIn`` that a websocket server needs, done its
way: each thread is named
(``syncws-conn-N``), at most ``max_handshakes`` sockets are in their
handshake at once (each holds a thread for up to ``handshake_timeout``), and
the server can cut those short when it stops. :class:`syncws.WebSocketServer`
mixes it in.

Threads: ``process_request`` runs on the accept thread (``syncws-server``);
the rest on the connection threads, or under the server's lock from any thread.
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any, Callable, Optional, Protocol, cast

from ..engine.connection import Connection
from ..exceptions import ConnectionClosed, HandshakeError, SyncWSError
from ..handlers.handlers import BaseWebSocketHandler
from ..observe.counters import EndpointCounters, ServerCounters
from ..protocol.deflate import PerMessageDeflate
from ..protocol.protocol import CloseCode, Message
from ..protocol.protocol import Protocol as WebSocketProtocol
from ..reactor.handler_pool import HandlerPool
from ..reactor.loop import IOLoop
from ..reactor.stream import Stream
from .admission import AdmissionHost, end_tls, handshake, refuse, start_tls
from .drain import Drain
from .listening import describe_address, peer_address

__all__ = ["ConnectionThreads", "ConnectionHandler", "ServingHost"]

logger = logging.getLogger("syncws.server.server")  # its records are the server's: one logger to configure


class ServingHost(AdmissionHost, Protocol):
    """What a connection's thread needs of its server beyond admission: its drain and two bookkeeping calls."""

    _drain: Drain

    def _handshake_ended(self) -> None:
        """Forget this thread's handshake, whatever its outcome."""

    def _connection_ended(self, connection: Connection) -> None:
        """Forget an admitted connection once its handler's on_close has run."""

    def _handed_over(self, sock: socket.socket) -> None:
        """``sock`` belongs to a stream on the I/O loop now: its thread must not close it."""


class ConnectionHandler(socketserver.BaseRequestHandler):
    """socketserver's per-connection handler, made and run on the connection's own thread (``syncws-conn-N``)."""

    server: ServingHost  # type: ignore[assignment]  # socketserver types it as its BaseServer

    def handle(self) -> None:
        """The life of one connection (connection thread): handshake, then messages to the handler."""
        server, sock, address = self.server, self.request, peer_address(self.client_address)
        if sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        try:
            opened = self._open(sock, address)
        finally:
            server._handshake_ended()
        if opened is None:
            return
        connection, handler = opened
        counters = connection.meter
        assert isinstance(counters, EndpointCounters)  # the endpoint's, set by admission
        counters.connection_opened()
        opened_at = time.monotonic()
        logger.info("connection opened: %s from %s", counters.label, describe_address(address))
        ended = functools.partial(_ended, server, connection, counters, address, opened_at)
        if isinstance(connection, Stream):
            self._hand_over(connection, handler, ended)  # this thread's part ends here
            return
        try:
            self._run(connection, handler)
        finally:
            ended()

    def _open(self, raw: socket.socket, address: tuple[str, int]) -> Optional[tuple[Connection, BaseWebSocketHandler]]:
        """TLS and the handshake (connection thread); the connection and handler, or None when refused (HTTP error sent)."""
        sock = raw
        try:
            raw.settimeout(self.server.handshake_timeout)
            deadline = time.monotonic() + self.server.handshake_timeout
            sock = start_tls(self.server, raw)
            opened = handshake(self.server, sock, address, deadline)
        except HandshakeError as exc:
            logger.info("refused handshake from %s: %s", address, exc)
            refuse(sock, exc)
            opened = None
        except (OSError, ssl.SSLError) as exc:
            logger.info("handshake with %s failed: %s", address, exc)
            opened = None
        if opened is None:
            end_tls(sock, raw)
        return opened

    def _hand_over(self, stream: Stream, handler: BaseWebSocketHandler, ended: Callable[[], None]) -> None:
        """Give an admitted connection to the I/O loop (connection thread, which then ends).

        The handler's ``open``, ``on_message`` and ``on_close`` run on the
        stream's lane of the server's handler pool, in that order and one at a
        time, each ``on_message`` counted as work in flight as on a thread of its own.
        """
        drain = self.server._drain
        self.server._handed_over(self.request)

        def on_close(code: int, reason: str) -> None:
            try:
                _close(handler)
            finally:
                ended()

        stream.on_message = functools.partial(_deliver, drain, handler)
        stream.on_close = on_close
        # A RequestHandler's endpoint (the base on_message, calling its callback): replies are taken
        # on the I/O thread, so a caller is woken without a hand-off to a worker first.
        owner = getattr(handler.callback, "__self__", None)
        if type(handler).on_message is BaseWebSocketHandler.on_message and hasattr(owner, "take_on_io_thread"):
            stream.quick = functools.partial(owner.take_on_io_thread, handler)  # type: ignore[union-attr]
        stream.lane.submit(functools.partial(_open, handler, cast(Connection, stream)))  # first in the lane: before any message
        stream.start()

    def _run(self, connection: Connection, handler: BaseWebSocketHandler) -> None:
        """Deliver messages to the handler until the connection closes (connection thread)."""
        _open(handler, connection)
        try:
            drain = self.server._drain
            for message in connection:
                _deliver(drain, handler, message)
                # Not held while the next message is awaited: a large one is freed now (docs/tuning.md).
                del message
        finally:
            _close(handler)


# The handler's calls, the same on a connection's own thread and on a reactor's worker.


def _open(handler: BaseWebSocketHandler, connection: Connection) -> None:
    """``open()``, then the held-back 101 response (closing with 1011 if open fails)."""
    try:
        handler.open()
    except Exception:
        logger.exception("open() of %r failed; closing", handler)
        connection.close(1011, "handler failed to open")
    try:
        connection.flush_preamble()
    except SyncWSError:
        pass  # the peer is gone: the reader sees it


def _deliver(drain: Drain, handler: BaseWebSocketHandler, message: Message) -> None:
    """One message to ``on_message``, counted as work in flight: a drain lets the handling (and the reply it writes) finish."""
    drain.started()
    try:
        handler.on_message(message)
    except Exception as exc:
        _handler_failed(handler, exc)
    finally:
        drain.ended()


def _close(handler: BaseWebSocketHandler) -> None:
    """``on_close()``, whatever it raises (logged)."""
    try:
        handler.on_close()
    except Exception:
        logger.exception("on_close of %r failed", handler)


def _handler_failed(handler: BaseWebSocketHandler, error: Exception) -> None:
    """Log what a handler's on_message raised: a traceback, unless it only found its own connection closed meanwhile."""
    if isinstance(error, ConnectionClosed) and handler.connection.close_code is not None:
        # The peer left (or the connection was closed) while the message was being handled: no bug of the handler's.
        logger.info("%r: the connection closed while a message was handled: %s", handler, error)
    else:
        logger.error("on_message of %r failed", handler, exc_info=error)


def _ended(server: ServingHost, connection: Connection, counters: EndpointCounters, address: tuple[str, int], opened_at: float) -> None:
    """An admitted connection's end, once its handler's on_close has run: forgotten, counted, logged (its thread or lane)."""
    server._connection_ended(connection)
    code = connection.close_code or CloseCode.ABNORMAL_CLOSURE
    counters.connection_closed(code)
    logger.info("connection closed: %s from %s, code %d, after %.1f s", counters.label, describe_address(address), code, time.monotonic() - opened_at)
    connection.release()


class ConnectionThreads(socketserver.BaseServer):
    """socketserver.ThreadingMixIn's part, done for a websocket server: a named thread per accepted
    socket, and at most ``max_handshakes`` sockets in their handshake at once.

    Its state lives under the server's ``_lock`` (see WebSocketServer.__init__).
    """

    _lock: threading.Lock
    _stopped: bool
    max_handshakes: int
    # Under _lock: the threads alive, and the socket of each thread still in its handshake
    # (so that stop() can cut those short instead of waiting out handshake_timeout).
    _conn_threads: set[threading.Thread]
    _handshakes: dict[threading.Thread, socket.socket]
    _handshakes_refused: int
    counters: ServerCounters
    # The server's settings a new connection takes.
    engine: str
    max_connections: int
    max_message_size: Optional[int]
    ping_interval: Optional[float]
    ping_timeout: Optional[float]
    send_timeout: Optional[float]
    max_send_queue: int
    close_timeout: float

    def _init_threads(self) -> None:
        self._conn_threads = set()
        self._handshakes = {}
        self._handshakes_refused = 0
        self._ids = itertools.count(1)
        # Under _lock: the sockets whose connection runs on the I/O loop (by id), which their
        # thread must not close when it ends; and the loop and handler pool, made on first use.
        self._handed: set[int] = set()
        self._loop: Optional[IOLoop] = None
        self._pool: Optional[HandlerPool] = None

    def _new_connection(self, sock: socket.socket, *, initial_data: bytes, preamble: bytes, deflate: Optional[PerMessageDeflate], name: str) -> Connection:
        """The connection of an accepted upgrade (connection thread): a thread of its own, or with
        ``engine="reactor"`` a Stream on the I/O loop (a TLS socket with its TLS handshake done)."""
        if self.engine == "reactor":
            loop, pool = self._engine_parts()
            stream = Stream(
                loop,
                sock,
                WebSocketProtocol(False, self.max_message_size, deflate),
                pool,
                on_message=lambda message: None,  # the handler's, once admitted (see ConnectionHandler._hand_over)
                on_close=lambda code, reason: None,
                initial_data=initial_data,
                close_timeout=self.close_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                send_timeout=self.send_timeout,
                max_send_queue=self.max_send_queue,
                preamble=preamble,
                name=name,
            )
            # A Stream offers the connection's API to handlers and the server (duck-typed while both engines exist).
            return cast(Connection, stream)
        return Connection(
            sock,
            is_client=False,
            max_message_size=self.max_message_size,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            send_timeout=self.send_timeout,
            max_send_queue=self.max_send_queue,
            close_timeout=self.close_timeout,
            initial_data=initial_data,
            preamble=preamble,
            deflate=deflate,
            name=name,
        )

    def _engine_parts(self) -> tuple[IOLoop, HandlerPool]:
        """The I/O loop and the handler pool, started on first use (any thread)."""
        with self._lock:
            if self._loop is None or self._pool is None:
                self._loop = IOLoop(name="syncws-io")
                # As many workers as connections at most: a handler that blocks holds up only its own
                # connection. They lead the loop in turn, so that a message meets its handler on the
                # thread that read it (syncws.reactor.handler_pool).
                self._pool = HandlerPool(max_workers=self.max_connections, idle_timeout=5.0, name="syncws-worker", loop=self._loop)
            return self._loop, self._pool

    def _handler_pool_threads(self) -> int:
        """The handler pool's worker threads alive now, busy or idle; 0 before the first stream (for stats(), any thread)."""
        with self._lock:
            pool = self._pool
        if pool is None:
            return 0
        counts = pool.counts()
        return counts["busy"] + counts["idle"]

    def _stop_engine(self, timeout: float) -> None:
        """Let the handler pool finish what its lanes hold (on_close calls), then stop it and the loop (stop()'s thread)."""
        with self._lock:
            loop, pool = self._loop, self._pool
        if pool is not None:
            pool.stop(timeout)
        if loop is not None:
            loop.stop(timeout)

    def _handed_over(self, sock: socket.socket) -> None:
        """``sock`` belongs to a stream on the I/O loop now: its thread must not close it (connection thread)."""
        with self._lock:
            self._handed.add(id(sock))

    def shutdown_request(self, request: Any) -> None:
        """Close an accepted socket when its thread ends, unless its connection went on to the I/O loop."""
        with self._lock:
            if id(request) in self._handed:
                self._handed.discard(id(request))
                return
        super().shutdown_request(request)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a named thread for a new connection, or close it at once when too many handshake (accept thread)."""
        thread = threading.Thread(
            target=self._connection_thread,
            args=(request, client_address),
            name=f"syncws-conn-{next(self._ids)}",
            daemon=True,
        )
        with self._lock:
            stopping = self._stopped
            refused = len(self._handshakes) >= self.max_handshakes
            if refused:
                self._handshakes_refused += 1
                first_refusal = self._handshakes_refused == 1
            elif not stopping:
                self._handshakes[thread] = request
                self._conn_threads.add(thread)
        if refused:
            self.counters.refused("limit")
        if refused and not stopping:
            # Logged once per burst, not per socket: a flood must not flood the log too.
            log = logger.warning if first_refusal else logger.debug
            log("%d handshakes in progress: closing the new connection from %s unanswered", self.max_handshakes, client_address)
        if refused or stopping:
            self.shutdown_request(request)
            return
        thread.start()

    def _connection_thread(self, request: socket.socket, client_address: Any) -> None:
        """What socketserver.ThreadingMixIn's thread does, plus the bookkeeping (connection thread)."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._conn_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an unexpected error of a connection thread once, without socketserver's traceback print."""
        logger.exception("unexpected error on the connection from %s", client_address)

    def _handshake_ended(self) -> None:
        """Forget this thread's handshake, whatever its outcome (connection thread)."""
        with self._lock:
            self._handshakes.pop(threading.current_thread(), None)
            if len(self._handshakes) < self.max_handshakes:
                self._handshakes_refused = 0

    def _track_handshake(self, sock: socket.socket) -> None:
        """Make ``sock`` the socket that stop() cuts short for this thread; raise if stopping (connection thread)."""
        with self._lock:
            if self._stopped:
                raise ConnectionAbortedError("server is stopping")
            self._handshakes[threading.current_thread()] = sock

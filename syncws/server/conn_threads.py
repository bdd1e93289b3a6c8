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

import itertools
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any, Optional, Protocol

from ..engine.connection import Connection
from ..exceptions import HandshakeError, SyncWSError
from ..handlers.handlers import BaseWebSocketHandler
from .admission import AdmissionHost, end_tls, handshake, refuse, start_tls
from .drain import Drain
from .listening import peer_address

__all__ = ["ConnectionThreads", "ConnectionHandler", "ServingHost"]

logger = logging.getLogger("syncws.server.server")  # its records are the server's: one logger to configure


class ServingHost(AdmissionHost, Protocol):
    """What a connection's thread needs of its server beyond admission: its drain and two bookkeeping calls."""

    _drain: Drain

    def _handshake_ended(self) -> None:
        """Forget this thread's handshake, whatever its outcome."""

    def _connection_ended(self, connection: Connection) -> None:
        """Forget an admitted connection once its handler's on_close has run."""


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
        try:
            self._run(connection, handler)
        finally:
            server._connection_ended(connection)
            connection.release()

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

    def _run(self, connection: Connection, handler: BaseWebSocketHandler) -> None:
        """Deliver messages to the handler until the connection closes (connection thread)."""
        try:
            handler.open()
        except Exception:
            logger.exception("open() of %r failed; closing", handler)
            connection.close(1011, "handler failed to open")
        try:
            connection.flush_preamble()
        except SyncWSError:
            pass  # the peer is gone; recv() below sees it
        try:
            drain = self.server._drain
            for message in connection:
                # Counted as work in flight: a drain lets the handling (and the reply it writes) finish.
                drain.started()
                try:
                    handler.on_message(message)
                except Exception:
                    logger.exception("on_message of %r failed", handler)
                finally:
                    drain.ended()
        finally:
            try:
                handler.on_close()
            except Exception:
                logger.exception("on_close of %r failed", handler)


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

    def _init_threads(self) -> None:
        self._conn_threads = set()
        self._handshakes = {}
        self._handshakes_refused = 0
        self._ids = itertools.count(1)

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

"""One named thread per accepted socket, with a bound on the sockets still in their handshake.

:class:`ConnectionThreads` is the part of ``socketserver.ThreadingMixIn``
that a websocket server needs, done its way: each thread is named
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
import threading
from typing import Any

__all__ = ["ConnectionThreads"]

logger = logging.getLogger("syncws.server")  # its records are the server's: one logger to configure


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

"""A server's graceful stop: the work in flight, and the wait for it to end.

:class:`Drain` counts what a server has in flight: every message a handler
is still handling (``on_message`` running, and so whatever reply it is
about to write), plus what components report through checks added with
:meth:`Drain.add_check` (a :class:`~syncws.RequestHandler` reports the calls
waiting for their replies). ``WebSocketServer.stop(drain=...)`` stops
accepting, then waits in :meth:`Drain.wait` until that count is zero, the
time is up, or :meth:`Drain.cut` ends the wait early (a second ``stop()``,
a second SIGTERM). :class:`Stopping` is the server's part of it: ``stop()``
and the callbacks and checks it runs.

Threads: :meth:`started` and :meth:`ended` run on the connection threads
around each message; :meth:`wait` on the thread in ``stop()``; :meth:`add_check`,
:meth:`in_flight` and :meth:`cut` are safe from any thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from ..cluster.node import ClusterNode
    from ..engine.connection import Connection
    from ..handlers.handlers import BaseWebSocketHandler
from ..reactor.handler_pool import current_lane, release_the_loop
from ..reactor.stream import Stream

__all__ = ["Drain", "DrainCheck", "Stopping", "check_drain"]

logger = logging.getLogger("syncws.server.server")  # its records are the server's: one logger to configure

#: Returns how many units of work a component has in flight now (0: none). Called on stop()'s thread.
DrainCheck = Callable[[], int]

#: How often a drain looks at the count again. The work in flight reports no event of its
#: own (a reply finishes a call on some connection's thread, not the server's), so the
#: count is polled: a stop that drains ends at most this much after its last call did.
POLL_INTERVAL = 0.02


def check_drain(drain: Optional[float]) -> float:
    """``drain`` as seconds to wait: None and 0 mean no drain; NaN and negatives raise ValueError."""
    if drain is None:
        return 0.0
    seconds = float(drain)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"drain must be None or a non-negative number of seconds, not {drain!r}")
    return seconds


class Drain:
    """The work a server has in flight, and the wait for it to end."""

    def __init__(self) -> None:
        # Synchronize access to _checks.
        self._lock = threading.Lock()
        self._checks: list[DrainCheck] = []
        # The connection threads inside a handler's on_message now, by thread ident
        # (cheaper than Thread objects on this per-message path). No lock: it only
        # changes by set.add and set.discard, each one atomic (a set's own lock on a
        # free-threaded build), and is read through one copy, atomic too; a lock
        # here would be two more acquisitions for every message of every connection.
        self._handling: set[int] = set()
        self._cut = threading.Event()

    def add_check(self, check: DrainCheck) -> None:
        """Count ``check()`` as work in flight while draining. Safe from any thread."""
        with self._lock:
            self._checks.append(check)

    def started(self) -> None:
        """Count the calling connection thread as busy: it starts to handle a message."""
        self._handling.add(threading.get_ident())

    def ended(self) -> None:
        """The calling connection thread is done with its message."""
        self._handling.discard(threading.get_ident())

    def handling(self) -> int:
        """How many threads are inside a handler's ``on_message`` (or an ``in_flight`` block) now. Any thread."""
        return len(self._handling.copy())

    def in_flight(self) -> int:
        """The work in flight now: messages being handled (but the caller's own) and what the checks report.

        A check that raises is logged and counts as nothing, so that it cannot hold a stop up.
        """
        me = threading.get_ident()
        with self._lock:
            checks = list(self._checks)
        count = sum(1 for thread in self._handling.copy() if thread != me)
        for check in checks:
            try:
                count += max(0, int(check()))
            except Exception:
                logger.exception("drain check %r failed", check)
        return count

    def cut(self) -> None:
        """End a :meth:`wait` now, or the next one at once. Safe from any thread."""
        self._cut.set()

    def wait(self, seconds: float) -> bool:
        """Wait until nothing is in flight, for at most ``seconds`` (the thread in stop()); True when it all ended."""
        deadline = time.monotonic() + seconds
        while True:
            left = self.in_flight()
            if left == 0:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._cut.wait(min(POLL_INTERVAL, remaining)):
                logger.info("drain %s with %d still in flight", "cut short" if self._cut.is_set() else "expired", left)
                return False


class Stopping(socketserver.BaseServer):
    """The server's stop, graceful or not, and what it runs at the stop: a mixin of WebSocketServer.

    Its state lives under the server's ``_lock`` (see WebSocketServer.__init__).
    """

    _lock: threading.Lock
    _serving: bool
    _stopped: bool
    _stop_callbacks: list[Callable[[], None]]
    _drain: Drain
    _handlers: dict[Connection, BaseWebSocketHandler]
    _ended: threading.Condition  # on _lock: notified when a connection is forgotten
    _handshakes: dict[threading.Thread, socket.socket]
    _conn_threads: set[threading.Thread]
    node: Optional[ClusterNode]
    close_timeout: float
    thread: Optional[threading.Thread]

    if TYPE_CHECKING:

        def _stop_engine(self, timeout: float) -> None: ...  # ConnectionThreads'

        @property
        def url(self) -> str: ...

    def add_stop_callback(self, callback: Callable[[], None]) -> None:
        """Have ``callback()`` called once ``stop()`` has begun to close the connections, on stop()'s thread.

        A RequestHandler bound to this server registers its
        ``close_pending_requests`` here, so that every call waiting on this
        server fails at once. Safe from any thread.
        """
        with self._lock:
            self._stop_callbacks.append(callback)

    def add_drain_check(self, check: DrainCheck) -> None:
        """Have ``stop(drain=...)`` wait while ``check()`` returns more than 0 (work in flight).

        ``check`` runs on stop()'s thread, a few times a second while the
        drain lasts; it must be quick and must not block. A RequestHandler
        bound to this server registers its count of calls waiting for
        replies here. Safe from any thread.
        """
        self._drain.add_check(check)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count the calling thread's ``with`` block as work in flight: ``stop(drain=...)`` waits for it. Any thread.

        The connection threads are counted while a handler handles a message;
        a thread of a handler's own (the ``/call`` gateway's, which forwards a
        request and sends the reply back) holds this instead.
        """
        self._drain.started()
        try:
            yield
        finally:
            self._drain.ended()

    def stop(self, code: int = 1001, reason: str = "server shutting down", *, drain: Optional[float] = None) -> None:
        """Close every connection with ``code``, stop serving, wait for the threads.

        With ``drain`` (seconds), stop gracefully: stop accepting at once
        (the listening socket closes: new connections are refused, handshakes
        under way get 503), then let the work in flight finish for up to
        ``drain`` seconds while the open connections keep working: calls
        waiting for replies (every RequestHandler bound to this server),
        messages that handlers are still handling, and messages being sent.
        Then, or as soon as nothing is in flight, close what is left as
        without ``drain``: connections with ``code``, waiting calls failed
        with ConnectionClosed. None or 0 (the default): no drain.

        Safe from any thread, and more than once: a ``stop()`` without
        ``drain`` while another stop drains cuts that drain short (the first
        call finishes the stop) and returns at once. Returns within about
        ``drain`` + ``close_timeout`` + 1 s even when clients never answer.
        """
        seconds = check_drain(drain)
        release_the_loop()  # called from a handler that runs where the loop was read: the closing needs the loop
        with self._lock:
            serving, self._serving = self._serving, False
        self._finish_stop(code, reason, end_accept_loop=serving and self.thread is not threading.current_thread(), drain=seconds, cut=seconds == 0)

    def _finish_stop(self, code: int, reason: str, end_accept_loop: bool = False, drain: float = 0.0, cut: bool = False) -> None:
        with self._lock:
            stopping, self._stopped = self._stopped, True  # from now on, handshakes are refused with 503
        if stopping:
            if cut:
                self._drain.cut()
            return
        if drain > 0:
            self._stop_listening(end_accept_loop)
            end_accept_loop = False
            if self._drain.wait(drain):
                logger.info("drained %s", self.url)
        with self._lock:
            connections = list(self._handlers)
            stop_callbacks = list(self._stop_callbacks)
        if self.node is not None:
            self.node.stop()  # the rest of the cluster stops counting on this node at once
        # First what callers see: every connection starts its closing handshake
        # and every call waiting on this server fails now, not after the
        # accept loop's next poll or the peers' answers.
        for connection in connections:
            connection.close(code, reason)
        _run_stop_callbacks(stop_callbacks)
        self._stop_listening(end_accept_loop)
        deadline = time.monotonic() + self.close_timeout
        self._join_threads(deadline)
        with self._lock:
            leftovers = list(self._handlers)
        for connection in leftovers:
            connection.abort()
        # stop() called by a handler: once its connection's socket is closed, that on_close waits in
        # its lane, which the pool runs when the handler returns, before its workers end.
        own = current_lane()
        mine = [c for c in leftovers if own is not None and isinstance(c, Stream) and c.lane is own]
        for connection in mine:
            connection.wait_closed(1.0)
        self._join_threads(time.monotonic() + 1.0)
        self._stop_engine(1.0)
        _run_stop_callbacks(stop_callbacks)
        logger.info("stopped %s", self.url)

    def _stop_listening(self, end_accept_loop: bool) -> None:
        """End the accept loop, close the listening socket, and cut short the handshakes under way."""
        if end_accept_loop:
            self.shutdown()  # wait for the accept loop to end
        self.server_close()
        with self._lock:
            in_handshake = list(self._handshakes.values())
        for sock in in_handshake:
            try:
                # socket.socket's own shutdown: on a TLS socket it leaves the SSL
                # object to the connection thread, whose read then ends at once.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already gone

    def _join_threads(self, deadline: float) -> None:
        """Wait until ``deadline`` for the connection threads to end and the connections on the I/O loop to be done with."""
        with self._lock:
            threads = list(self._conn_threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        # A connection on the I/O loop has no thread to join: it is done once its on_close ran. Called
        # from a handler, stop() does not wait for that handler's own connection: its on_close runs
        # only once the handler has returned.
        own = current_lane()
        with self._ended:
            self._ended.wait_for(lambda: not any(isinstance(c, Stream) and c.lane is not own for c in self._handlers), max(0.0, deadline - time.monotonic()))


def _run_stop_callbacks(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("stop callback %r failed", callback)

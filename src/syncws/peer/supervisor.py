"""Keeping a peer connected: :class:`Supervisor`, the connect, serve and reconnect loop with backoff.

A :class:`~syncws.RemoteService` is a supervisor: its base class starts the
``syncws-remote`` thread (``start``, and ``run_forever``, which waits for it),
makes connection attempts, serves each connection until it closes, and
tries again after a capped exponential backoff with jitter. A permanent
refusal (HTTP 4xx other than 408 and 429) before the first connection ends
the loop and is raised to whoever waits in ``start`` or ``run_forever``.

What one attempt does (log in, shake hands), how a connection is served
(the worker threads) and let go of are the subclass's:
:meth:`Supervisor._attempt`, :meth:`Supervisor._serve` and
:meth:`Supervisor._release`; what a graceful stop waits for is
:meth:`Supervisor._wait_drained`.

Threads: ``syncws-remote`` runs :meth:`Supervisor._run`; ``start``, ``stop``,
``wait_connected`` and the properties are safe from any thread;
``run_forever`` blocks its caller, and on the main thread handles SIGTERM
while it runs (:class:`_SigtermAsInterrupt`).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Optional, TypeVar

from .. import timeouts
from ..client.client import ClientConnection
from ..exceptions import HandshakeError, NotConnected

__all__ = ["Supervisor"]

logger = logging.getLogger(__name__)

_Self = TypeVar("_Self", bound="Supervisor")

#: Seconds ``run_forever`` lets the calls in flight finish after Ctrl-C or SIGTERM, by default.
DEFAULT_DRAIN = 10.0

# How often run_forever's waiting thread wakes up to run a signal handler that another thread
# received: the longest a Ctrl-C can wait to be seen.
_SIGNAL_CHECK = 0.1


class Supervisor:
    """The lifecycle of a peer's connection: start, the reconnect loop, stop. Subclassed by RemoteService."""

    def __init__(self, url: str, backoff_min: float, backoff_max: float) -> None:
        self.url = url
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        # Synchronize access to _connection, _thread and _failure; _changed
        # (on this lock) is notified when _connected is set or _failure is.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._failure: Optional[HandshakeError] = None  # a permanent refusal before the first connection
        self._connection: Optional[ClientConnection] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        # Set by stop(drain=...): the server's new requests are answered 503 (the session checks it).
        self._draining = threading.Event()
        # Set by stop() without a drain: a drain that another thread waits out ends at once.
        self._cut = threading.Event()
        #: How many times a connection was opened (1 after the first).
        self.connections_made = 0

    # ------------------------------------------------------------------ what the subclass supplies

    def _attempt(self) -> ClientConnection:
        """Open one connection (the ``syncws-remote`` thread); HandshakeError or NotConnected when it fails."""
        raise NotImplementedError

    def _serve(self, connection: ClientConnection) -> None:
        """Serve ``connection`` until it closes (the ``syncws-remote`` thread)."""
        raise NotImplementedError

    def _release(self, connection: ClientConnection) -> None:
        """Let go of ``connection`` once it closed and is no longer the current one (the ``syncws-remote`` thread)."""
        raise NotImplementedError

    def _wait_drained(self, limit: Optional[float], cut: threading.Event) -> None:
        """Wait up to ``limit`` seconds (None: no bound) for the work in flight to end, or until ``cut`` is set (the thread that stops)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ state

    @property
    def subprotocol(self) -> Optional[str]:
        """The subprotocol the server chose on the current connection; None when none, or not connected."""
        with self._lock:
            connection = self._connection
        return connection.subprotocol if connection is not None else None

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._connected.is_set()

    @property
    def draining(self) -> bool:
        """True while :meth:`stop` with a ``drain`` waits for the calls in flight."""
        return self._draining.is_set()

    def _current(self) -> Optional[ClientConnection]:
        """The open connection, or None."""
        with self._lock:
            return self._connection

    def wait_connected(self, timeout: Optional[float] = None) -> bool:
        """Block until connected; False on timeout, or at once when the service gave up
        (a permanent refusal, see :meth:`start`). Safe from any thread.

        ``timeout``: seconds, None or ``math.inf`` for no bound; NaN or a
        negative value raises ValueError.
        """
        limit = timeouts.check_timeout(timeout)
        with self._changed:
            self._changed.wait_for(lambda: self._connected.is_set() or self._failure is not None, limit)
            return self._connected.is_set()

    # ------------------------------------------------------------------ starting and stopping

    def start(self: _Self, timeout: Optional[float] = 10.0) -> _Self:
        """Run in the background (thread ``syncws-remote``); return once connected. Safe from any thread.

        Raises HandshakeError at once, and stops, when the server refuses the
        connection for good (HTTP 4xx other than 408 and 429: a wrong path, a
        missing or wrong token, refused login credentials); it carries the
        status and the server's error text. Transient failures (connection
        refused, HTTP 5xx such as 503 at the connection limit) are retried
        with backoff; NotConnected, and the service stops trying, if no
        connection opened within ``timeout`` (None or ``math.inf``: no bound;
        NaN or a negative value raises ValueError before anything starts).
        """
        limit = timeouts.check_timeout(timeout)
        with self._lock:
            if self._thread is None:
                self._begin(target=self._run)
        with self._changed:
            self._changed.wait_for(lambda: self._connected.is_set() or self._failure is not None, limit)
            connected, failure = self._connected.is_set(), self._failure
        if failure is not None:
            self.stop()
            raise failure
        if not connected:
            self.stop()
            raise NotConnected(f"could not connect to {self.url} within {timeout} s")
        return self

    def run_forever(self, drain: Optional[float] = DEFAULT_DRAIN) -> None:
        """Serve until :meth:`stop`, Ctrl-C or SIGTERM, reconnecting as needed; blocks the calling thread.

        The connections are served on the ``syncws-remote`` thread, as after
        :meth:`start`, while the calling thread waits. Ctrl-C
        (KeyboardInterrupt) on that thread, or SIGTERM when it is the main
        thread and SIGTERM's handler is the default one, stops the service
        as ``stop(drain=drain)`` does: the server's new requests are answered
        503, the calls in flight get up to ``drain`` seconds (default 10) to
        finish and send their replies, then the connection closes and
        run_forever returns. A second Ctrl-C or SIGTERM stops at once. None
        or 0 stops at once; NaN or a negative value raises ValueError before
        anything starts. While it runs, run_forever handles SIGTERM (the
        default handler is put back when it returns).

        Raises HandshakeError, as :meth:`start` does, when the server refuses
        the first connection for good (HTTP 4xx other than 408 and 429): a
        program that can never connect ends with the server's reason instead
        of retrying forever. Once connected, a refusal while reconnecting (a
        server that restarts and has not added its endpoint yet) is retried.
        """
        limit = timeouts.check_timeout(drain, "drain") if drain else 0.0
        ended = threading.Event()
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("RemoteService is already running")
            self._begin(target=lambda: self._run_then(ended))
        with _SigtermAsInterrupt() as interrupts:
            try:
                try:
                    # Ctrl-C (or SIGTERM) raises KeyboardInterrupt here. Not one unbounded wait: the
                    # kernel may deliver the signal to another thread, and then Python runs its handler
                    # only once this thread wakes up. Each bounded wait wakes it.
                    while not ended.wait(_SIGNAL_CHECK):
                        pass
                except KeyboardInterrupt:
                    logger.info("interrupted: letting the calls in flight finish for up to %s s (interrupt again to stop at once)", limit)
                    self.stop(drain=limit)
            except KeyboardInterrupt:
                logger.info("interrupted again: stopping at once")
            finally:
                interrupts.armed = False  # a signal now would only break into the stop below
                self.stop()
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise failure

    def stop(self, drain: Optional[float] = None) -> None:
        """Close the connection with 1000 and a closing handshake, and stop. Safe from any thread.

        ``drain``: seconds to let the commands being answered finish and send
        their replies, and this service's own requests get theirs, before
        the close; meanwhile the server's new requests are answered 503
        ("service stopping"). None or 0 closes at once, failing them all,
        and ends a drain that another thread's stop is waiting out.
        NaN or a negative value raises ValueError before anything stops.

        Returns within about ``drain`` + ``close_timeout`` + 1 s even when
        the server does not answer the close (then the connection is
        dropped); at once on a healthy, idle connection.
        """
        limit = timeouts.check_timeout(drain, "drain") if drain else 0.0
        self._stop.set()
        if limit != 0.0:
            self._draining.set()
            self._wait_drained(limit, self._cut)
        else:
            self._cut.set()  # a drain under way on another thread (a first Ctrl-C's) ends now
        with self._lock:
            connection, thread = self._connection, self._thread
            self._thread = None
        if connection is not None:
            connection.close(1000, "service stopped")
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _begin(self, target: Callable[[], object]) -> None:
        """Start the ``syncws-remote`` thread running ``target``, from a fresh state. This method requires holding _lock."""
        assert self._lock.locked()
        self._stop.clear()
        self._draining.clear()
        self._cut.clear()
        self._failure = None
        self._thread = threading.Thread(target=target, name="syncws-remote", daemon=True)
        self._thread.start()

    def _run_then(self, ended: threading.Event) -> None:
        """:meth:`_run`, then set ``ended`` however it ends (the ``syncws-remote`` thread of run_forever)."""
        try:
            self._run()
        finally:
            ended.set()

    def __enter__(self: _Self) -> _Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> Optional[HandshakeError]:
        """Connect, serve and reconnect until stopped (the ``syncws-remote`` thread).

        Returns the HandshakeError of a permanent refusal before the first
        connection, after which it gives up; None once stopped.
        """
        attempt = 0
        connected_once = False
        lost_at: Optional[float] = None  # when the last connection dropped, until the next one is made
        while not self._stop.is_set():
            try:
                connection = self._connect()
            except HandshakeError as exc:  # a permanent refusal
                if not connected_once:
                    logger.warning("server refused the connection to %s: %s; not trying again", self.url, exc)
                    with self._changed:
                        self._failure = exc
                        self._changed.notify_all()
                    return exc
                # It served us before: a restarting server may not have added its endpoint yet.
                logger.warning("server refused the connection to %s: %s", self.url, exc)
                connection = None
            if connection is not None:
                if lost_at is not None:
                    # The outage's end, at the level its start was said: an operator sees both or neither.
                    logger.warning("reconnected to %s after %.1f s (%d attempts)", self.url, time.monotonic() - lost_at, attempt)
                    lost_at = None
                connected_once = True
                attempt = 0
                try:
                    self._serve(connection)
                finally:
                    self._connected.clear()
                    with self._lock:
                        self._connection = None
                    self._release(connection)
                if self._stop.is_set():
                    break
                lost_at = time.monotonic()
                logger.warning(
                    "lost the connection to %s (code %s%s); reconnecting",
                    self.url,
                    connection.close_code,
                    f", {connection.close_reason!r}" if connection.close_reason else "",
                )
            attempt += 1
            delay = _backoff(attempt, self.backoff_min, self.backoff_max)
            logger.info("reconnecting to %s in %.2f s (attempt %d)", self.url, delay, attempt)
            self._stop.wait(delay)
        return None

    def _connect(self) -> Optional[ClientConnection]:
        """One connection attempt: the connection, or None to try again later.

        Raises HandshakeError for a permanent refusal (HTTP 4xx other than 408 and 429).
        """
        try:
            connection = self._attempt()
        except HandshakeError as exc:
            if exc.permanent:
                raise
            logger.warning("server refused the connection to %s: %s", self.url, exc)
            return None
        except NotConnected as exc:
            logger.info("%s", exc)
            return None
        with self._changed:
            stopped = self._stop.is_set()
            if not stopped:
                self._connection = connection
                self.connections_made += 1
                self._connected.set()
                self._changed.notify_all()
        if stopped:
            connection.close(1000, "service stopped")
            return None
        logger.info("connected to %s", self.url)
        return connection


class _SigtermAsInterrupt:
    """While armed, SIGTERM raises KeyboardInterrupt on the main thread, as Ctrl-C does (run_forever's caller).

    Installed on entry only on the main thread (the only one Python runs
    signal handlers on) and only over the default handler, so that a
    program's own SIGTERM handler stays; the default is put back on exit.
    """

    def __init__(self) -> None:
        self.armed = True  # read by the handler, on the main thread: no lock needed
        self._installed = False

    def __enter__(self) -> _SigtermAsInterrupt:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.armed:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def __exit__(self, *exc_info: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _backoff(attempt: int, low: float, high: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (from 1): doubling from ``low`` up to ``high``, with jitter."""
    delay: float = min(high, low * 2.0 ** min(attempt - 1, 30))
    return delay * random.uniform(0.5, 1.0)  # jitter: peers that lost one server do not come back in step

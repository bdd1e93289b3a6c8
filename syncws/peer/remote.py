"""The peer side: :class:`RemoteService` answers a server's requests with registered functions, and asks its own.

Threads:

* ``syncws-remote``: connects (through websocket-client), starts the
  connection's workers, and reconnects with capped exponential backoff and
  jitter when the connection drops.
* ``syncws-remote-worker-N``: ``workers + 1`` threads per connection
  (:mod:`syncws.remote_worker`) that take turns reading (leader and
  followers): the thread that reads a request runs it itself, so a request
  costs no hand-off between threads; if it has not returned within 2 ms,
  another worker takes over the reading, so one slow request holds up
  neither the others nor the pings for longer than that. At most
  ``workers`` functions run at once.
* ``syncws-remote-watchdog``: one per connection; it times the command the
  reading worker runs and gives the reading to another when it runs long.
* ``request`` (the service calls a command of the server's RequestHandler
  and blocks until its reply, as ``doRequest`` does the other way) is safe
  from any number of threads, a command function answering the server
  included: the reply is read by the worker that leads, never by the caller.
* ``register``, ``command``, ``start``, ``stop``, ``wait_connected`` and the
  properties are safe from any thread; ``run_forever`` serves on the thread
  that calls it.

A message the service cannot take as a request (binary, not JSON, not a JSON
object, no ``cmd`` or one that is not a string) is answered at once with
status 400, with its ``callId`` when one can be read, so that the caller is
released instead of waiting for its timeout. Such junk is logged at most once
per ``log_interval`` per connection.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Optional, Union

from .. import lograte, timeouts
from ..calls import callformat
from ..calls.calls import CallTable, PendingCall
from ..calls.commands import CommandDecorator, CommandFunction, Commands, current_call, send_reply
from ..calls.reassembly import Progress
from ..client.client import ClientConnection, connect
from ..client.proxy import Proxy, proxy_options
from ..engine.connection import Connection
from ..exceptions import ConnectionClosed, HandshakeError, NotConnected, RequestTimeout, SendTimeout
from ..protocol.deflate import DeflateOptions
from .remote_worker import Session

__all__ = ["RemoteService", "CommandFunction"]

logger = logging.getLogger(__name__)


DEFAULT_PART_SIZE = 8 * 1024 * 1024


class RemoteService(CommandDecorator):
    """Connects to a syncws endpoint and answers its requests.

    Args:
        url: the endpoint, e.g. ``ws://host:8888/wsData`` (``wss://`` for TLS).
        workers: how many functions may run at once (one thread more reads).
        part_size: bytes per binary message of a large bytes result.
        header, cookie, sslopt, origin: passed to websocket-client's handshake.
        token: sent as ``Authorization: Bearer <token>``.
        connect_timeout: seconds for one connection attempt (None or
            ``math.inf``: no bound).
        backoff_min, backoff_max: the reconnect delay starts at ``backoff_min``,
            doubles on each failed attempt up to ``backoff_max``, with jitter.
        ping_interval, ping_timeout: keepalive of the connection.
        max_message_size: largest message accepted (a request, or one part of a reply).
        max_reply_size: a binary reply to :meth:`request` announcing more
            bytes is refused (RequestError 502).
        close_timeout: how long :meth:`stop` waits for the server's answer to
            its close frame before it drops the connection.
        log_interval: junk from the server is logged at most once per this
            many seconds per connection; the next line says how many were
            suppressed.
        subprotocols, require_subprotocol, proxy, unix_socket: passed to
            :func:`syncws.connect` on every connection attempt; see
            :attr:`subprotocol`. A server that picks a subprotocol not
            offered (or none, when one is required) is a permanent refusal.
        compression: ``"deflate"`` or a :class:`syncws.deflate.DeflateOptions`
            offers permessage-deflate, as :func:`syncws.connect` does; None
            (the default) does not.
    """

    def __init__(
        self,
        url: str,
        *,
        workers: int = 8,
        part_size: int = DEFAULT_PART_SIZE,
        header: Union[list[str], dict[str, str], None] = None,
        cookie: Optional[str] = None,
        token: Optional[str] = None,
        sslopt: Optional[dict[str, Any]] = None,
        origin: Optional[str] = None,
        connect_timeout: Optional[float] = 10.0,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        ping_interval: Optional[float] = 10.0,
        ping_timeout: Optional[float] = 10.0,
        max_message_size: Optional[int] = 64 * 1024 * 1024,
        max_reply_size: int = 4 << 30,
        close_timeout: float = 1.0,
        log_interval: float = lograte.DEFAULT_INTERVAL,
        subprotocols: Optional[list[str]] = None,
        require_subprotocol: bool = False,
        proxy: Proxy = None,
        unix_socket: Optional[str] = None,
        compression: Union[str, DeflateOptions, None] = None,
    ) -> None:
        if part_size <= 0:
            raise ValueError("part_size must be positive")
        connect_limit = timeouts.check_timeout(connect_timeout, "connect_timeout")
        proxy_options(proxy, connect_limit)  # a bad proxy URL raises here, not later on the service's thread
        self.url = url
        self.workers = workers
        self.part_size = part_size
        self._connect_options: dict[str, Any] = {
            "header": _handshake_headers(header, token),
            "cookie": cookie,
            "sslopt": sslopt,
            "origin": origin,
            "timeout": connect_limit,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "max_message_size": max_message_size,
            "close_timeout": close_timeout,
            "subprotocols": subprotocols,
            "require_subprotocol": require_subprotocol,
            "proxy": proxy,
            "unix_socket": unix_socket,
            "compression": compression,
        }
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        # Synchronize access to _connection, _thread and _failure; _changed
        # (on this lock) is notified when _connected is set or _failure is.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._failure: Optional[HandshakeError] = None  # a permanent refusal before the first connection
        self._junk_log = lograte.RateLimitedLog(logger, log_interval)
        #: The commands the server may call, and the calls being answered now.
        self.commands = Commands()
        # The service's own requests to the server, waiting for their replies.
        self._calls = CallTable(url, max_reply_size, self._junk_log)
        self._connection: Optional[ClientConnection] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        # Set by stop(drain=...): the server's new requests are answered 503 (the session checks it).
        self._draining = threading.Event()
        #: How many times a connection was opened (1 after the first).
        self.connections_made = 0

    # ------------------------------------------------------------------ commands

    def register(self, cmd: str, fn: CommandFunction, *, inline: bool = False) -> None:
        """Answer requests whose ``cmd`` is ``cmd`` with ``fn(request)``. Safe from any thread.

        By default ``fn`` runs on the worker thread that read the request; if
        it has not returned within 2 ms
        (:data:`syncws.remote_worker.HAND_OVER_AFTER`), another worker takes
        over the reading (at once when ``fn`` calls :meth:`request` or waits in
        ``wait_cancelled``), so a quick command costs no thread switch and a
        slow one holds up nothing else. With ``inline=True`` the reading is never
        handed over: while ``fn`` runs, pings go unanswered and every other
        request waits behind it, however long it takes, and it may not call
        :meth:`request` (RuntimeError: its thread is the one that would read
        the reply). It is kept for functions that must see the requests
        strictly one at a time; it is no faster than the default.

        Inside ``fn``, :func:`syncws.current_call` is the call it answers;
        its ``cancelled`` turns True when the server gave up on it.
        """
        self.commands.register(cmd, fn, inline)

    # ------------------------------------------------------------------ asking the server

    def request(self, msg: dict[str, Any], timeout: Optional[float] = None, progress: Optional[Progress] = None) -> dict[str, Any]:
        """Call a command of the server's RequestHandler and block until its whole reply is in. Safe from any number of threads.

        The same call as ``RequestHandler.doRequest``, the other way:

        Args:
            msg: a JSON-able dict with a str ``cmd``; a ``callId`` is added to a copy.
            timeout: seconds to wait for the reply (None or ``math.inf``:
                forever); for a reply in binary parts, for each next part.
                When it passes, the server is told (a cancel) and its late
                reply is dropped.
            progress: ``progress(received, total)`` for binary replies,
                called on the reading worker after each part.

        Returns the reply dict: ``cmd``, ``callId``, ``status`` and, when the
        command returned something, ``data`` (bytes for bytes, a numpy array
        for an array).

        Raises, before anything is sent, TypeError or ValueError for a bad
        ``msg`` or ``timeout``, NotConnected when no connection is open, and
        RuntimeError from a command registered ``inline=True``; then
        RequestTimeout, ConnectionClosed (the connection dropped or the
        service stopped: at once) and RequestError (a status other than 200:
        404 unknown command, 500 the command raised, 503 the server is busy,
        502 a binary reply not taken).
        """
        callformat.check_request(msg)
        limit = timeouts.check_timeout(timeout)
        answering = current_call()
        if answering is not None and answering.inline:
            raise RuntimeError(
                f"command {answering.cmd!r} runs inline on the thread that reads the connection, so it cannot wait for a reply; "
                "register it without inline=True"
            )
        with self._lock:
            connection = self._connection
        if connection is None or connection.closed:
            raise NotConnected(f"not connected to {self.url}")
        if answering is not None and answering.before_wait is not None and answering.conn is connection:
            answering.before_wait()  # this thread may be the one that reads the connection: another reads the reply
        call = self._calls.add(lambda call_id: PendingCall(call_id, msg.get("cmd"), connection, progress, waiting=True))
        try:
            try:
                connection.send(callformat.encode_request(msg, call.call_id))
            except (ConnectionClosed, SendTimeout) as exc:
                raise ConnectionClosed(getattr(exc, "code", 1006), getattr(exc, "reason", ""), f"request {msg.get('cmd')!r} could not be sent: {exc}") from exc
            if connection.closed:
                # It closed between the check and the registration: the session failed only the calls it saw.
                call.fail(ConnectionClosed(connection.close_code or 1006, connection.close_reason, f"connection to {self.url} closed"))
            try:
                return callformat.check_reply_status(call.outcome(limit))
            except RequestTimeout:
                try:
                    connection.send(callformat.encode_cancel(call.call_id))
                except (ConnectionClosed, SendTimeout) as exc:
                    logger.debug("cancel of callId %d not sent: %s", call.call_id, exc)
                raise
        finally:
            self._calls.forget(call.call_id)

    # ------------------------------------------------------------------ running

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

    def start(self, timeout: Optional[float] = 10.0) -> RemoteService:
        """Run in the background (thread ``syncws-remote``); return once connected. Safe from any thread.

        Raises HandshakeError at once, and stops, when the server refuses the
        connection for good (HTTP 4xx other than 408 and 429: a wrong path, a
        missing or wrong token); it carries the status and the server's error
        text. Transient failures (connection refused, HTTP 5xx such as 503 at
        the connection limit) are retried with backoff; NotConnected, and the
        service stops trying, if no connection opened within ``timeout``
        (None or ``math.inf``: no bound; NaN or a negative value raises
        ValueError before anything starts).
        """
        limit = timeouts.check_timeout(timeout)
        with self._lock:
            if self._thread is None:
                self._stop.clear()
                self._draining.clear()
                self._failure = None
                self._thread = threading.Thread(target=self._run, name="syncws-remote", daemon=True)
                self._thread.start()
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

    def run_forever(self) -> None:
        """Serve on the calling thread, reconnecting as needed, until :meth:`stop` (or Ctrl-C).

        Raises HandshakeError, as :meth:`start` does, when the server refuses
        the first connection for good (HTTP 4xx other than 408 and 429): a
        program that can never connect ends with the server's reason instead
        of retrying forever. Once connected, a refusal while reconnecting (a
        server that restarts and has not added its endpoint yet) is retried.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("RemoteService is already running")
            self._thread = threading.current_thread()
            self._stop.clear()
            self._draining.clear()
            self._failure = None
        try:
            failure = self._run()
        except KeyboardInterrupt:
            logger.info("interrupted")
        else:
            if failure is not None:
                raise failure
        finally:
            self.stop()

    def stop(self, drain: Optional[float] = None) -> None:
        """Close the connection with 1000 and a closing handshake, and stop. Safe from any thread.

        ``drain``: seconds to let the commands being answered finish and send
        their replies, and this service's own requests get theirs, before
        the close; meanwhile the server's new requests are answered 503
        ("service stopping"). None or 0 closes at once, failing them all.
        NaN or a negative value raises ValueError before anything stops.

        Returns within about ``drain`` + ``close_timeout`` + 1 s even when
        the server does not answer the close (then the connection is
        dropped); at once on a healthy, idle connection.
        """
        limit = timeouts.check_timeout(drain, "drain") if drain else 0.0
        self._stop.set()
        if limit != 0.0:
            self._drain(limit)
        with self._lock:
            connection, thread = self._connection, self._thread
            self._thread = None
        if connection is not None:
            connection.close(1000, "service stopped")
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

    def _drain(self, limit: Optional[float]) -> None:
        """Refuse new requests and wait up to ``limit`` seconds (None: no bound) for the calls in flight to end."""
        self._draining.set()
        answering = current_call()
        own = 1 if answering is not None and not answering.cancelled else 0  # stop() from inside a command: not itself
        deadline = None if limit is None else time.monotonic() + limit
        pause = threading.Event()
        while self.commands.active > own or self._calls.pending:  # bounded by the deadline, or by the calls ending
            if deadline is not None and time.monotonic() >= deadline:
                logger.info("drain of %s ended with %d commands and %d requests in flight", self.url, self.commands.active - own, self._calls.pending)
                return
            pause.wait(0.01)

    def _run(self) -> Optional[HandshakeError]:
        """Connect, serve and reconnect until stopped (the ``syncws-remote`` thread, or run_forever's caller).

        Returns the HandshakeError of a permanent refusal before the first
        connection, after which it gives up; None once stopped.
        """
        attempt = 0
        connected_once = False
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
                connected_once = True
                attempt = 0
                self._serve(connection)
                if self._stop.is_set():
                    break
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
            connection = connect(self.url, **self._connect_options)
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

    def _serve(self, connection: ClientConnection) -> None:
        """Run the connection's worker threads until it closes (syncws-remote thread)."""
        session = Session(connection, self.url, self._junk_log, self.commands, self._calls, self.send_result, self._draining)
        try:
            session.run(self.workers)
        finally:
            self._connected.clear()
            with self._lock:
                self._connection = None
            connection.release()
            self._junk_log.forget(connection, what=self.url)
            logger.info("disconnected from %s (code %s)", self.url, connection.close_code)

    # ------------------------------------------------------------------ answering

    def send_result(self, connection: Connection, cmd: Any, call_id: Any, result: Any) -> None:
        """Send a successful reply: JSON, or binary parts of ``part_size`` for bytes-like data and arrays (worker thread).

        Raises TypeError for a value that cannot be sent (an object array).
        """
        send_reply(connection, cmd, call_id, result, self.part_size)

    def __enter__(self) -> RemoteService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _handshake_headers(header: Union[list[str], dict[str, str], None], token: Optional[str]) -> list[str]:
    """The extra handshake header lines: ``header`` as given, and the bearer ``token``."""
    headers = dict(header) if isinstance(header, dict) else {}
    extra = list(header) if isinstance(header, list) else []
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return extra + [f"{k}: {v}" for k, v in headers.items()]


def _backoff(attempt: int, low: float, high: float) -> float:
    """Seconds to wait before reconnect ``attempt`` (from 1): doubling from ``low`` up to ``high``, with jitter."""
    delay: float = min(high, low * 2.0 ** min(attempt - 1, 30))
    return delay * random.uniform(0.5, 1.0)  # jitter: peers that lost one server do not come back in step

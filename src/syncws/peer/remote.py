"""The peer side: :class:`RemoteService` answers a server's requests with registered functions, and asks its own.

Threads:

* ``syncws-remote``: connects (through websocket-client), starts the
  connection's workers, and reconnects with capped exponential backoff and
  jitter when the connection drops (:mod:`syncws.peer.supervisor`).
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
  included: the reply is read by the worker that leads, never by the caller
  (:mod:`syncws.peer.asking`).
* ``register``, ``command``, ``start``, ``stop``, ``wait_connected`` and the
  properties are safe from any thread; ``run_forever`` blocks the thread
  that calls it while ``syncws-remote`` serves, and on Ctrl-C (or SIGTERM,
  on the main thread) lets the calls in flight finish before it returns.

A message the service cannot take as a request (binary, not JSON, not a JSON
object, no ``cmd`` or one that is not a string) is answered at once with
status 400, with its ``callId`` when one can be read, so that the caller is
released instead of waiting for its timeout. Such junk is logged at most once
per ``log_interval`` per connection.

With ``wire="rtcloud"`` the service answers an rt-cloud web server in its
format instead (:mod:`syncws.peer.rtcloud_peer`), and with ``login`` it logs
in to the server before every connection attempt, as rt-cloud's peers do
(:mod:`syncws.client.login`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional, Union

from .. import lograte, timeouts
from ..calls.calls import CallTable
from ..calls.commands import CommandDecorator, CommandFunction, Commands, current_call, send_reply
from ..calls.reassembly import Progress
from ..client.client import ClientConnection, connect
from ..client.login import check_login_options
from ..client.login import login as log_in
from ..client.proxy import Proxy, proxy_options
from ..client.urls import check_url
from ..engine.connection import Connection
from ..protocol.deflate import DeflateOptions
from .asking import ask
from .remote_worker import Session
from .rtcloud_peer import RtCloudAnswering, object_commands
from .supervisor import Supervisor

__all__ = ["RemoteService", "CommandFunction"]

logger = logging.getLogger(__name__)


DEFAULT_PART_SIZE = 8 * 1024 * 1024

#: The wire formats a RemoteService speaks: syncws's own, or an rt-cloud web server's.
WIRES = ("syncws", "rtcloud")


class RemoteService(Supervisor, CommandDecorator):
    """Connects to a syncws endpoint (or an rt-cloud web server) and answers its requests.

    Args:
        url: the endpoint, e.g. ``ws://host:8888/wsData`` (``wss://`` for
            TLS); anything but a ``ws://`` or ``wss://`` URL with a host
            (``http://...`` included) raises ValueError at once, saying so.
        workers: how many functions may run at once (one thread more reads).
        part_size: bytes per binary message of a large bytes result.
        header, cookie, sslopt, origin: passed to websocket-client's handshake.
        token: sent as ``Authorization: Bearer <token>``.
        connect_timeout: seconds for one connection attempt (None or
            ``math.inf``: no bound), and for each login.
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
        wire: ``"syncws"`` (the default), or ``"rtcloud"`` to answer an
            rt-cloud web server's rpc requests in its format: a request for
            class ``C``, attribute ``A`` runs the command registered as
            ``"C.A"`` (see :meth:`register` and :meth:`register_object`);
            :meth:`request` is not available. Any other value: ValueError.
        login: ``(name, password)`` to log in to an rt-cloud web server
            (``/login`` on the websocket's host and port, over HTTP for
            ``ws://``, HTTPS for ``wss://`` with ``sslopt``) before every
            connection attempt, sending its ``login`` cookie in the
            handshake. Refused credentials are a permanent refusal
            (HandshakeError 401).
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
        wire: str = "syncws",
        login: Optional[tuple[str, str]] = None,
    ) -> None:
        check_url(url)  # http://... or a forgotten scheme: ValueError now, not retries on the service's thread
        if part_size <= 0:
            raise ValueError("part_size must be positive")
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(map(repr, WIRES))}, not {wire!r}")
        connect_limit = timeouts.check_timeout(connect_timeout, "connect_timeout")
        proxy_options(proxy, connect_limit)  # a bad proxy URL raises here, not later on the service's thread
        if login is not None:
            check_login_options(url, proxy, unix_socket)
        super().__init__(url, backoff_min, backoff_max)
        self.workers = workers
        self.part_size = part_size
        self.wire = wire
        self._login = login
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
        self._junk_log = lograte.RateLimitedLog(logger, log_interval)
        #: The commands the server may call, and the calls being answered now.
        self.commands = Commands()
        # The service's own requests to the server, waiting for their replies.
        self._calls = CallTable(url, max_reply_size, self._junk_log)
        # In rt-cloud mode: how requests are read and replies written.
        self._rtcloud = RtCloudAnswering(url, self._junk_log) if wire == "rtcloud" else None

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

        With ``wire="rtcloud"``, ``cmd`` is ``"Class.attribute"`` (ValueError
        otherwise): ``service.register("ExampleInterface.echo", fn)`` answers
        rt-cloud's call of ``ExampleInterface.echo``, and ``fn`` gets the
        request with its ``args`` (a list, bytes arguments restored) and
        ``kwargs``.
        """
        if self._rtcloud is not None:
            self._rtcloud.add_command(cmd)
        self.commands.register(cmd, fn, inline)

    def register_object(self, name: str, obj: object) -> None:
        """Answer ``"name.method"`` with ``obj.method(*args, **kwargs)`` for every public method of ``obj``. Safe from any thread.

        This is how rt-cloud's peers expose an object (``addHandlerClass``):
        with ``wire="rtcloud"``, rt-cloud's call of class ``name``, attribute
        ``method`` runs it with the request's ``args`` and ``kwargs``. Public:
        no leading underscore; the methods are those ``obj`` has now
        (properties are left out). With ``wire="syncws"`` a request
        ``{"cmd": "name.method", "args": [...], "kwargs": {...}}`` does the same.
        """
        for cmd, fn in object_commands(name, obj).items():
            self.register(cmd, fn)

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
        ``msg`` or ``timeout``, NotConnected when no connection is open,
        RuntimeError from a command registered ``inline=True``, and
        RuntimeError with ``wire="rtcloud"`` (rt-cloud's web server answers
        no requests from its peers); then RequestTimeout, ConnectionClosed
        (the connection dropped or the service stopped: at once) and
        RequestError (a status other than 200: 404 unknown command, 500 the
        command raised, 503 the server is busy, 502 a binary reply not taken).
        """
        if self._rtcloud is not None:
            raise RuntimeError("RemoteService(wire='rtcloud') cannot request(): rt-cloud's web server answers no requests from its peers")
        return ask(self._calls, self._current(), self.url, msg, timeout, progress)

    # ------------------------------------------------------------------ connecting and serving (Supervisor's hooks)

    def _attempt(self) -> ClientConnection:
        """Log in when asked to, then open the websocket (syncws-remote thread)."""
        options = self._connect_options
        if self._login is not None:
            name, password = self._login
            value = log_in(self.url, name, password, sslopt=options["sslopt"], timeout=options["timeout"], proxy=options["proxy"])
            cookie = f"login={value}" if not options["cookie"] else f"{options['cookie']}; login={value}"
            options = dict(options, cookie=cookie)
        return connect(self.url, **options)

    def _serve(self, connection: ClientConnection) -> None:
        """Run the connection's worker threads until it closes (syncws-remote thread)."""
        rtcloud = self._rtcloud
        take, replier = (rtcloud.take, rtcloud) if rtcloud is not None else (None, None)
        session = Session(connection, self.url, self._junk_log, self.commands, self._calls, self.send_result, self._draining, take, replier)
        session.run(self.workers)

    def _release(self, connection: ClientConnection) -> None:
        """Free what the closed connection held and log its end (syncws-remote thread)."""
        connection.release()
        self._junk_log.forget(connection, what=self.url)
        logger.info("disconnected from %s (code %s)", self.url, connection.close_code)

    def _in_flight(self) -> int:
        """The commands being answered (not counting the caller's own) and the requests made, now (any thread)."""
        answering = current_call()
        own = 1 if answering is not None and not answering.cancelled else 0  # stop() from inside a command: not itself
        return self.commands.active - own + self._calls.pending

    def _wait_drained(self, limit: Optional[float], cut: threading.Event) -> None:
        """Wait up to ``limit`` seconds (None: no bound) for the commands being answered and the requests made to end, or for ``cut``."""
        deadline = None if limit is None else time.monotonic() + limit
        while self._in_flight() > 0:  # bounded by the deadline, the calls ending, or a stop without drain (cut)
            if deadline is not None and time.monotonic() >= deadline:
                logger.info("drain of %s ended with %d calls in flight", self.url, self._in_flight())
                return
            if cut.wait(0.01):
                logger.info("drain of %s cut short with %d calls in flight", self.url, self._in_flight())
                return

    # ------------------------------------------------------------------ answering

    def send_result(self, connection: Connection, cmd: Any, call_id: Any, result: Any) -> None:
        """Send a successful reply: JSON, or binary parts of ``part_size`` for bytes-like data and arrays (worker thread).

        Raises TypeError for a value that cannot be sent (an object array).
        """
        send_reply(connection, cmd, call_id, result, self.part_size)


def _handshake_headers(header: Union[list[str], dict[str, str], None], token: Optional[str]) -> list[str]:
    """The extra handshake header lines: ``header`` as given, and the bearer ``token``."""
    headers = dict(header) if isinstance(header, dict) else {}
    extra = list(header) if isinstance(header, list) else []
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return extra + [f"{k}: {v}" for k, v in headers.items()]

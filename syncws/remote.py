"""The peer side: :class:`RemoteService` answers a server's requests with registered functions.

Threads:

* ``syncws-remote``: connects (through websocket-client), starts the
  connection's workers, and reconnects with capped exponential backoff and
  jitter when the connection drops.
* ``syncws-remote-worker-N``: ``workers + 1`` threads per connection that
  take turns reading (leader and followers): the thread that reads a request
  runs it itself once another worker has taken over reading, so a request
  costs no hand-off between threads, one slow request holds up neither the
  others nor the pings, and at most ``workers`` functions run at once.
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

import json
import logging
import random
import re
import threading
from collections import deque
from typing import Any, Callable, Optional, Union

from . import callformat, lograte, timeouts
from .client import ClientConnection, connect
from .exceptions import ConnectionClosed, HandshakeError, NotConnected, SendTimeout

__all__ = ["RemoteService", "CommandFunction"]

logger = logging.getLogger(__name__)

#: ``fn(request)`` returns JSON-able data, bytes-like data, a numpy array, or None.
CommandFunction = Callable[[dict[str, Any]], Any]
_Task = tuple[dict[str, Any], Optional[CommandFunction]]  # a request and its function (None: unknown command)

DEFAULT_PART_SIZE = 8 * 1024 * 1024

# The callId at the very end of a request that did not parse: where the
# server's json.dumps puts it (RequestHandler adds it last), so that a caller
# whose request nests too deep for json.loads still hears back at once.
_CALL_ID_AT_END = re.compile(r'"callId"\s*:\s*(\d{1,19})\s*\}\s*$')


class RemoteService:
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
        max_message_size: largest request accepted.
        close_timeout: how long :meth:`stop` waits for the server's answer to
            its close frame before it drops the connection.
        log_interval: junk from the server is logged at most once per this
            many seconds per connection; the next line says how many were
            suppressed.
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
        close_timeout: float = 1.0,
        log_interval: float = lograte.DEFAULT_INTERVAL,
    ) -> None:
        if part_size <= 0:
            raise ValueError("part_size must be positive")
        connect_limit = timeouts.check_timeout(connect_timeout, "connect_timeout")
        self.url = url
        self.workers = workers
        self.part_size = part_size
        headers = dict(header) if isinstance(header, dict) else {}
        extra = list(header) if isinstance(header, list) else []
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._connect_options: dict[str, Any] = {
            "header": extra + [f"{k}: {v}" for k, v in headers.items()],
            "cookie": cookie,
            "sslopt": sslopt,
            "origin": origin,
            "timeout": connect_limit,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "max_message_size": max_message_size,
            "close_timeout": close_timeout,
        }
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        # Synchronize access to _commands, _inline, _connection, _thread and
        # _failure; _changed (on this lock) is notified when _connected is set
        # or _failure is.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._failure: Optional[HandshakeError] = None  # a permanent refusal before the first connection
        self._junk_log = lograte.RateLimitedLog(logger, log_interval)
        self._commands: dict[str, CommandFunction] = {}
        self._inline: set[str] = set()  # commands run by the reader itself (see register)
        self._connection: Optional[ClientConnection] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        #: How many times a connection was opened (1 after the first).
        self.connections_made = 0

    # ------------------------------------------------------------------ commands

    def register(self, cmd: str, fn: CommandFunction, *, inline: bool = False) -> None:
        """Answer requests whose ``cmd`` is ``cmd`` with ``fn(request)``. Safe from any thread.

        By default ``fn`` runs on a worker thread while another reads on. With
        ``inline=True`` it runs on the thread that read the request, before
        anything else is read: no thread is woken to take over the reading,
        which takes about a quarter off the round trip of a quick request
        (docs/benchmarks.md). Only for functions that return in well under a
        millisecond and never block: while one runs, pings go unanswered and
        every other request waits behind it.
        """
        with self._lock:
            self._commands[cmd] = fn
            if inline:
                self._inline.add(cmd)
            else:
                self._inline.discard(cmd)

    def command(self, cmd: str, *, inline: bool = False) -> Callable[[CommandFunction], CommandFunction]:
        """Decorator form of :meth:`register`."""

        def decorate(fn: CommandFunction) -> CommandFunction:
            self.register(cmd, fn, inline=inline)
            return fn

        return decorate

    # ------------------------------------------------------------------ running

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._connected.is_set()

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

    def stop(self) -> None:
        """Close the connection with 1000 and a closing handshake, and stop. Safe from any thread.

        Returns within about ``close_timeout`` + 1 s even when the server does
        not answer the close (then the connection is dropped); at once on a
        healthy connection.
        """
        self._stop.set()
        with self._lock:
            connection, thread = self._connection, self._thread
            self._thread = None
        if connection is not None:
            connection.close(1000, "service stopped")
        if thread is not None and thread is not threading.current_thread():
            thread.join(1.0)

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
            delay = min(self.backoff_max, self.backoff_min * 2 ** min(attempt - 1, 30))
            delay *= random.uniform(0.5, 1.0)  # jitter: peers that lost one server do not come back in step
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
        session = _Session(self, connection)
        try:
            session.run(self.workers)
        finally:
            self._connected.clear()
            with self._lock:
                self._connection = None
            connection.release()
            self._junk_log.forget(connection, what=self.url)
            logger.info("disconnected from %s (code %s)", self.url, connection.close_code)

    def _take_request(self, connection: ClientConnection, message: Union[str, bytes]) -> Optional[dict[str, Any]]:
        """The request in a message; None for anything else, which is answered 400 and logged (reader thread).

        A message with a ``status`` and no ``cmd`` is a reply, not a request:
        it is logged and never answered, so that two peers cannot keep
        answering each other's answers.
        """
        if not isinstance(message, str):
            self._refuse(connection, None, None, f"a binary message ({len(message)} bytes) is not a request")
            return None
        try:
            request = json.loads(message)
        except RecursionError:
            self._refuse(connection, None, _call_id_at_end(message), f"request nested too deep to parse ({len(message)} characters)")
            return None
        except ValueError as exc:
            self._refuse(connection, None, _call_id_at_end(message), f"request that is not JSON ({len(message)} characters): {str(exc)[:200]}")
            return None
        if not isinstance(request, dict):
            self._refuse(connection, None, None, f"a request must be a JSON object, not {type(request).__name__}")
            return None
        cmd = request.get("cmd")
        if not isinstance(cmd, str):
            if "status" in request:
                self._junk_log.log(connection, logging.WARNING, "%s: a reply-like message without a cmd ignored", self.url)
                return None
            problem = "has no cmd" if "cmd" not in request else f"has a cmd that is not a string ({type(cmd).__name__})"
            self._refuse(connection, cmd, request.get("callId"), f"request {problem}")
            return None
        return request

    def _refuse(self, connection: ClientConnection, cmd: Any, call_id: Any, reason: str) -> None:
        """Answer a message that is not a request with status 400, and log it at most once per interval (reader thread)."""
        self._junk_log.log(connection, logging.WARNING, "%s: %s; answered with status 400", self.url, reason)
        try:
            self._send_json(connection, {"cmd": cmd, "callId": call_id, "status": 400, "error": reason})
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("400 reply (callId %r) not sent: %s", call_id, exc)

    # ------------------------------------------------------------------ answering

    def _command_for(self, request: dict[str, Any]) -> tuple[Optional[CommandFunction], bool]:
        """The function for ``request`` (None: unknown) and whether the reader answers it itself:
        an inline command, or an unknown one (a quick 404)."""
        cmd = request.get("cmd")
        with self._lock:
            fn = self._commands.get(cmd) if isinstance(cmd, str) else None
            return fn, fn is None or cmd in self._inline

    def _answer(self, connection: ClientConnection, request: dict[str, Any], fn: Optional[CommandFunction]) -> None:
        """Run ``fn`` for one request, or answer 404 when None, and send the reply (worker thread)."""
        cmd, call_id = request.get("cmd"), request.get("callId")
        try:
            if fn is None:
                self._send_json(connection, {"cmd": cmd, "callId": call_id, "status": 404, "error": f"unknown command {cmd!r}"})
                return
            try:
                result = fn(request)
            except Exception as exc:
                logger.info("command %r failed: %s: %s", cmd, type(exc).__name__, exc)
                self._send_json(connection, {"cmd": cmd, "callId": call_id, "status": 500, "error": f"{type(exc).__name__}: {exc}"})
                return
            try:
                self.send_result(connection, cmd, call_id, result)
            except (ConnectionClosed, SendTimeout):
                raise
            except Exception as exc:
                # The result could not be encoded: the caller must still hear of it.
                logger.info("result of %r could not be sent: %s: %s", cmd, type(exc).__name__, exc)
                self._send_json(connection, {"cmd": cmd, "callId": call_id, "status": 500, "error": f"{type(exc).__name__}: {exc}"})
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("reply to %r (callId %r) not sent: %s", cmd, call_id, exc)

    def send_result(self, connection: ClientConnection, cmd: Any, call_id: Any, result: Any) -> None:
        """Send a successful reply: JSON, or binary parts for bytes-like data and arrays."""
        binary = callformat.as_binary(result)
        if binary is None:
            reply: dict[str, Any] = {"cmd": cmd, "callId": call_id, "status": 200}
            if result is not None:
                reply["data"] = result
            try:
                text = json.dumps(reply)
            except (TypeError, ValueError) as exc:
                text = json.dumps({"cmd": cmd, "callId": call_id, "status": 500, "error": f"TypeError: result is not JSON-serializable: {exc}"})
            connection.send(text)
            return
        view, fields = binary
        size = len(view)
        count = -(-size // self.part_size)
        connection.send(json.dumps(callformat.binary_reply_header(cmd, call_id, size, count, fields)))
        for index, checksum in enumerate(callformat.part_checksums(view, self.part_size)):
            offset = index * self.part_size
            chunk = view[offset : offset + self.part_size]
            connection.send_parts(callformat.pack_part_header(call_id, index, count, offset, checksum), chunk)

    @staticmethod
    def _send_json(connection: ClientConnection, reply: dict[str, Any]) -> None:
        connection.send(json.dumps(reply))

    def __enter__(self) -> RemoteService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Session:
    """The worker threads of one connection, taking turns as its reader (leader/followers).

    One worker at a time, the leader, reads. When a request comes in and
    another worker is idle, the leader wakes it to lead and runs the request
    itself; when all others are busy, it queues the request and goes on
    reading, so pings are always answered. A worker that finishes takes
    queued requests first. Requests for inline commands (and for unknown
    ones, a quick 404) the leader answers itself before it reads on, waking
    no one. ``condition`` guards every field.
    """

    def __init__(self, service: RemoteService, connection: ClientConnection) -> None:
        self.service = service
        self.connection = connection
        self.condition = threading.Condition(threading.Lock())
        self.queued: deque[_Task] = deque()
        self.leading = False
        self.idle = 0
        self.ended = False
        # Set with ended; the supervisor waits on it, not on the condition, so
        # that a notify() meant for an idle worker never wakes it instead.
        self.finished = threading.Event()

    def run(self, workers: int) -> None:
        """Start the workers and wait until the connection closed (supervisor thread)."""
        # One thread more than may run functions: whoever leads never runs one
        # while all the others are busy, so there is always a reader.
        count = max(1, workers) + 1
        threads = [threading.Thread(target=self._work, name=f"syncws-remote-worker-{i + 1}", daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        self.finished.wait()
        # Workers still running a request finish it on their own; their replies
        # fail to send and are logged at debug level.

    def _work(self) -> None:
        try:
            self._work_loop()
        except Exception:  # a bug here must not leave the session without a reader
            logger.exception("worker of %s failed; dropping the connection", self.service.url)
            self.connection.abort()
            with self.condition:
                self.ended, self.leading = True, False
                self.condition.notify_all()
            self.finished.set()

    def _work_loop(self) -> None:
        while True:
            with self.condition:
                task = self._next_task()
            if task is None:
                if self.ended:
                    return
                task = self._lead()
                if task is None:
                    return
            self.service._answer(self.connection, *task)

    def _next_task(self) -> Optional[_Task]:
        """A queued request, or None when this worker is to lead or the session ended (condition held)."""
        while True:
            if self.queued:
                return self.queued.popleft()
            if self.ended:
                return None
            if not self.leading:
                self.leading = True
                return None
            self.idle += 1
            self.condition.wait()
            self.idle -= 1

    def _lead(self) -> Optional[_Task]:
        """Read until a request can be handed to this worker; None when the connection closed."""
        while True:
            message = self.connection.recv()
            if message is None:
                with self.condition:
                    self.ended, self.leading = True, False
                    self.condition.notify_all()
                self.finished.set()
                return None
            request = self.service._take_request(self.connection, message)
            if request is None:
                continue
            fn, inline = self.service._command_for(request)
            if inline:
                self.service._answer(self.connection, request, fn)
                continue
            with self.condition:
                if self.idle:
                    # Hand the reading on and run this request here: no hand-off of the request itself.
                    self.leading = False
                    self.condition.notify()
                    return request, fn
                self.queued.append((request, fn))


def _call_id_at_end(message: str) -> Optional[int]:
    """The callId at the end of a request that did not parse, or None."""
    match = _CALL_ID_AT_END.search(message[-64:])
    return int(match.group(1)) if match else None

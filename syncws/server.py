"""The websocket server: websocket-server's threaded socketserver, completed to RFC 6455.

:class:`WebSocketServer` subclasses ``websocket_server.WebsocketServer`` for its
accept loop and its one thread per connection, and replaces the parts of it
that do not hold up (handshake, framing, close, TLS, the client list) with
syncws's own: :mod:`syncws.handshake`, :mod:`syncws.connection` and the
handlers and registry.

Threads:

* ``syncws-server`` runs the accept loop (``start()``), or the caller's thread
  does (``serve_forever()``).
* ``syncws-conn-N``, one per connection: TLS, the handshake, then the read loop,
  which runs the handler's ``on_message`` and so the user's callback.
* ``start``, ``stop``, ``add_handler`` and the properties are safe from any thread.
"""

from __future__ import annotations

import itertools
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any, Callable, Optional, Union

from .connection import DEFAULT_MAX_MESSAGE_SIZE, Connection
from .exceptions import HandshakeError, SyncWSError
from .handlers import BaseWebSocketHandler, websocketState
from .handshake import Request, accept_response, check_upgrade, content_response, error_response, is_upgrade, parse_http_request
from .registry import ConnectionRegistry


def _import_websocket_server() -> Any:
    # websocket-server calls logging.basicConfig() when imported, which would
    # configure the host program's root logger. Undo exactly what it added.
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    import websocket_server

    for handler in root.handlers[:]:
        if handler not in handlers_before:
            root.removeHandler(handler)
    return websocket_server


websocket_server = _import_websocket_server()

__all__ = ["WebSocketServer", "AuthCheck"]

logger = logging.getLogger(__name__)

#: ``auth(request)`` returns True to accept, False to refuse with 401, or an HTTP status to refuse with.
AuthCheck = Callable[[Request], Union[bool, int]]


class _Endpoint:
    """What ``add_handler`` registered for one path."""

    def __init__(self, handler_class: type[BaseWebSocketHandler], kwargs: dict[str, Any], auth: Optional[AuthCheck], origins: Optional[list[str]]) -> None:
        self.handler_class = handler_class
        self.kwargs = kwargs
        self.auth = auth
        self.origins = origins


class _ConnectionThread(websocket_server.WebSocketHandler):  # type: ignore[misc,name-defined]
    """socketserver's per-connection handler; it hands the socket to the server.

    It replaces every method of websocket-server's handler: that one wraps TLS
    with ``ssl.wrap_socket`` (gone in Python 3.12) and reads frames itself.
    """

    def __init__(self, request: socket.socket, client_address: tuple[str, int], server: WebSocketServer) -> None:
        socketserver.BaseRequestHandler.__init__(self, request, client_address, server)

    def setup(self) -> None:
        """Nothing to set up: the connection reads the socket itself."""

    def handle(self) -> None:
        """Serve the connection until it closes (connection thread)."""
        self.server._serve_connection(self.request, self.client_address)

    def finish(self) -> None:
        """Nothing to finish: the server already forgot the connection."""


class WebSocketServer(websocket_server.WebsocketServer):  # type: ignore[misc,name-defined]
    """A websocket server on its own thread, with named endpoints.

    Args:
        host: the address to listen on (default: loopback only).
        port: the port; 0 picks a free one (see :attr:`port`).
        registry: where handlers register (default: the shared ``websocketState``).
        max_message_size: larger messages are refused with close 1009.
        max_connections: beyond this many open connections, handshakes get HTTP 503.
        max_handshakes: how many accepted sockets may be in their handshake at
            once (each has a thread, for at most ``handshake_timeout``); beyond
            this many, a new socket is closed at once, unanswered, so that idle
            or slow sockets cannot pile up threads.
        ssl_context: serve TLS (``wss://``) with this server-side context.
        auth: ``auth(request)`` decides, before the upgrade, who may connect to
            any endpoint; see :meth:`add_handler`.
        origins: allowed Origin header values (None: any). A request without
            Origin (not a browser) is not refused by this check.
        handshake_timeout: seconds a client has for TLS and the handshake.
        max_handshake_size, max_headers: limits on the handshake request.
        ping_interval, ping_timeout: keepalive; a peer silent for
            ``ping_interval`` is pinged and dropped if it does not answer in
            ``ping_timeout``. None turns it off.
        send_timeout: a send that makes no progress this long aborts the connection.
        close_timeout: how long to wait for a peer's close frame.
    """

    daemon_threads = True
    # The listen backlog: socketserver's default of 5 drops connections when
    # a burst of clients connects at once (they retry only after a second).
    request_queue_size = 128

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        registry: Optional[ConnectionRegistry[BaseWebSocketHandler]] = None,
        max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
        max_connections: int = 1024,
        max_handshakes: int = 128,
        ssl_context: Optional[ssl.SSLContext] = None,
        auth: Optional[AuthCheck] = None,
        origins: Optional[list[str]] = None,
        handshake_timeout: float = 10.0,
        max_handshake_size: int = 16 * 1024,
        max_headers: int = 100,
        ping_interval: Optional[float] = 20.0,
        ping_timeout: Optional[float] = 20.0,
        send_timeout: Optional[float] = 30.0,
        close_timeout: float = 5.0,
    ) -> None:
        # websocket-server's own __init__ would set its logger's level and keep
        # an unlocked client list; bind the socket through socketserver instead.
        socketserver.TCPServer.__init__(self, (host, port), _ConnectionThread)
        self.host = host
        self.port: int = self.socket.getsockname()[1]
        self.registry: ConnectionRegistry[BaseWebSocketHandler] = registry if registry is not None else websocketState
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        self.ssl_context = ssl_context
        self.auth = auth
        self.origins = origins
        self.handshake_timeout = handshake_timeout
        self.max_handshake_size = max_handshake_size
        self.max_headers = max_headers
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.thread: Optional[threading.Thread] = None

        # Synchronize access to _endpoints, _handlers, _conn_threads, _handshakes, _handshakes_refused and the flags below.
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}
        self._handlers: dict[Connection, BaseWebSocketHandler] = {}
        self._conn_threads: set[threading.Thread] = set()
        # The socket of each connection thread still in its handshake, so that
        # stop() can cut those short instead of waiting out handshake_timeout.
        self._handshakes: dict[threading.Thread, socket.socket] = {}
        self._handshakes_refused = 0
        self._serving = False
        self._stopped = False
        self._ids = itertools.count(1)
        self._stop_callbacks: list[Callable[[], None]] = []
        self._static: dict[str, tuple[bytes, str]] = {}

    # ------------------------------------------------------------------ configuration

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS)."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}"

    def add_handler(
        self,
        path: str,
        handler_class: type[BaseWebSocketHandler],
        *,
        auth: Optional[AuthCheck] = None,
        origins: Optional[list[str]] = None,
        **kwargs: Any,
    ) -> None:
        """Serve ``path`` with one ``handler_class`` object per connection, given ``initialize(**kwargs)``.

        ``auth`` and ``origins`` apply to this path and take the place of the
        server's. Safe from any thread, also while serving. Raises TypeError
        when ``handler_class`` is not a BaseWebSocketHandler subclass and
        ValueError when ``path`` is malformed or already served.
        """
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a str that starts with '/': {path!r}")
        if not (isinstance(handler_class, type) and issubclass(handler_class, BaseWebSocketHandler)):
            raise TypeError(f"handler_class must be a subclass of syncws.BaseWebSocketHandler, not {handler_class!r}")
        with self._lock:
            if path in self._endpoints:
                raise ValueError(f"{path!r} is already served by {self._endpoints[path].handler_class.__name__}")
            self._endpoints[path] = _Endpoint(handler_class, kwargs, auth, origins)

    def add_static(self, path: str, body: bytes, content_type: str = "text/html; charset=utf-8") -> None:
        """Answer a plain HTTP GET of ``path`` with ``body`` (a page, or the JavaScript client).

        Meant for small resources that go with the websocket endpoints, not as a
        web server. The handshake limits and ``handshake_timeout`` apply. Safe from any thread.
        """
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        with self._lock:
            self._static[path] = (bytes(body), content_type)

    def add_stop_callback(self, callback: Callable[[], None]) -> None:
        """Have ``callback()`` called once ``stop()`` has begun to close the connections, on stop()'s thread.

        A RequestHandler bound to this server registers its
        ``close_pending_requests`` here, so that every call waiting on this
        server fails at once. Safe from any thread.
        """
        with self._lock:
            self._stop_callbacks.append(callback)

    # ------------------------------------------------------------------ running

    def start(self) -> WebSocketServer:
        """Serve on the background thread ``syncws-server``; return once listening. Safe from any thread."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("a stopped server cannot be started again")
            if self._serving:
                return self
            self._serving = True
        self.thread = threading.Thread(target=self._serve, name="syncws-server", daemon=True)
        self.thread.start()
        logger.info("serving on %s", self.url)
        return self

    def _serve(self) -> None:
        try:
            socketserver.TCPServer.serve_forever(self, poll_interval=0.2)
        except Exception:  # pragma: no cover - the accept loop handles its own errors
            logger.exception("accept loop failed")

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Serve on the calling thread until stop() or Ctrl-C (which stops cleanly)."""
        with self._lock:
            if self._serving or self._stopped:
                raise RuntimeError("server already started or stopped")
            self._serving = True
        self.thread = threading.current_thread()
        logger.info("serving on %s", self.url)
        try:
            socketserver.TCPServer.serve_forever(self, poll_interval)
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            self._finish_stop(1001, "server shutting down")

    def run_forever(self, threaded: bool = False) -> None:
        """websocket-server's entry point: ``start()`` when threaded, else ``serve_forever()``."""
        if threaded:
            self.start()
        else:
            self.serve_forever()

    def stop(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Close every connection with ``code``, stop serving, wait for the threads.

        Safe from any thread, and more than once; returns within about
        ``close_timeout`` plus a second even when clients never answer.
        """
        with self._lock:
            serving, self._serving = self._serving, False
        self._finish_stop(code, reason, end_accept_loop=serving and self.thread is not threading.current_thread())

    def _finish_stop(self, code: int, reason: str, end_accept_loop: bool = False) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True  # from now on, handshakes are refused with 503
            connections = list(self._handlers)
            stop_callbacks = list(self._stop_callbacks)
        # First what callers see: every connection starts its closing handshake
        # and every call waiting on this server fails now, not after the
        # accept loop's next poll or the peers' answers.
        for connection in connections:
            connection.close(code, reason)
        self._run_stop_callbacks(stop_callbacks)
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
        deadline = time.monotonic() + self.close_timeout
        self._join_threads(deadline)
        with self._lock:
            leftovers = list(self._handlers)
        for connection in leftovers:
            connection.abort()
        self._join_threads(time.monotonic() + 1.0)
        self._run_stop_callbacks(stop_callbacks)
        logger.info("stopped %s", self.url)

    @staticmethod
    def _run_stop_callbacks(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("stop callback %r failed", callback)

    def _join_threads(self, deadline: float) -> None:
        with self._lock:
            threads = list(self._conn_threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> WebSocketServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections

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
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._conn_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log an unexpected error of a connection thread once, without socketserver's traceback print."""
        logger.exception("unexpected error on the connection from %s", client_address)

    def _serve_connection(self, sock: socket.socket, address: tuple[str, int]) -> None:
        """The life of one connection (connection thread)."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        try:
            opened = self._open(sock, address)
        finally:
            with self._lock:
                self._handshakes.pop(threading.current_thread(), None)
                if len(self._handshakes) < self.max_handshakes:
                    self._handshakes_refused = 0
        if opened is None:
            return
        sock, connection, handler = opened
        try:
            self._run(connection, handler)
        finally:
            with self._lock:
                self._handlers.pop(connection, None)
            connection.release()

    def _open(self, raw: socket.socket, address: tuple[str, int]) -> Optional[tuple[socket.socket, Connection, BaseWebSocketHandler]]:
        """TLS and the handshake; the socket, connection and handler, or None when refused (HTTP error sent)."""
        deadline = time.monotonic() + self.handshake_timeout
        sock = raw
        try:
            sock.settimeout(self.handshake_timeout)
            if self.ssl_context is not None:
                # Wrapping moves the socket into a new object: track that one
                # before the TLS handshake, so that stop() can cut it short.
                sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                self._track_handshake(sock)
                sock.do_handshake()
            head, rest = self._read_head(sock, deadline)
            request = parse_http_request(head, address, self.max_headers)
            if not is_upgrade(request) and self._serve_static(sock, request):
                return self._ended(sock, raw)
            check_upgrade(request.headers)
            # The 101 goes out with the first frame or after open(), whichever
            # comes first: see Connection.flush_preamble.
            connection = self._make_connection(sock, rest, address, accept_response(request))
            handler = self._accept(request, connection)
        except HandshakeError as exc:
            logger.info("refused handshake from %s: %s", address, exc)
            try:
                sock.sendall(error_response(exc.status, exc.reason))
            except OSError:
                pass
            return self._ended(sock, raw)
        except (OSError, ssl.SSLError) as exc:
            logger.info("handshake with %s failed: %s", address, exc)
            return self._ended(sock, raw)
        return sock, connection, handler

    @staticmethod
    def _ended(sock: socket.socket, raw: socket.socket) -> None:
        """Close the TLS socket of a handshake that ended without a connection; socketserver closes ``raw``."""
        if sock is not raw:
            try:
                socket.socket.shutdown(sock, socket.SHUT_WR)
            except OSError:
                pass
            sock.close()

    def _track_handshake(self, sock: socket.socket) -> None:
        """Make ``sock`` the socket that stop() cuts short for this thread; raise if stopping (connection thread)."""
        with self._lock:
            if self._stopped:
                raise ConnectionAbortedError("server is stopping")
            self._handshakes[threading.current_thread()] = sock

    def _serve_static(self, sock: socket.socket, request: Request) -> bool:
        """Answer a plain GET for a static resource; False when there is none at that path."""
        with self._lock:
            resource = self._static.get(request.path)
        if resource is None:
            return False
        sock.sendall(content_response(*resource))
        return True

    def _read_head(self, sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
        data = bytearray()
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0 and end <= self.max_handshake_size:
                return bytes(data[:end]), bytes(data[end + 4 :])
            if len(data) > self.max_handshake_size:
                raise HandshakeError(431, f"handshake larger than {self.max_handshake_size} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("handshake took too long")
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("peer closed during the handshake")
            data += chunk

    def _make_connection(self, sock: socket.socket, rest: bytes, address: tuple[str, int], preamble: bytes) -> Connection:
        return Connection(
            sock,
            is_client=False,
            max_message_size=self.max_message_size,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            send_timeout=self.send_timeout,
            close_timeout=self.close_timeout,
            initial_data=rest,
            preamble=preamble,
            name=f"{threading.current_thread().name} {address[0]}:{address[1]}",
        )

    def _accept(self, request: Request, connection: Connection) -> BaseWebSocketHandler:
        """Route and check a request; build and initialize its handler, or raise HandshakeError."""
        with self._lock:
            endpoint = self._endpoints.get(request.path)
        if endpoint is None:
            raise HandshakeError(404, f"no endpoint at {request.path!r}")
        self._check_capacity()
        origins = endpoint.origins if endpoint.origins is not None else self.origins
        origin = request.headers.get("Origin")
        if origins is not None and origin is not None and origin not in origins:
            raise HandshakeError(403, f"origin {origin!r} is not allowed")
        self._check_auth(endpoint.auth or self.auth, request)
        handler = endpoint.handler_class(self, connection, request)
        try:
            handler.initialize(**endpoint.kwargs)
        except Exception:
            logger.exception("initialize() of %s failed", endpoint.handler_class.__name__)
            raise HandshakeError(500, "handler failed to initialize") from None
        # Checked again and taken in one step: two handshakes at once cannot both take the last place.
        self._check_capacity(admit=(connection, handler))
        return handler

    def _check_capacity(self, admit: Optional[tuple[Connection, BaseWebSocketHandler]] = None) -> None:
        """Raise HTTP 503 when stopping or full; else, with ``admit``, register that connection (connection thread)."""
        with self._lock:
            too_many = len(self._handlers) >= self.max_connections
            if not (self._stopped or too_many) and admit is not None:
                # Admitted: from now on stop() closes it as a connection, not as a handshake.
                self._handlers[admit[0]] = admit[1]
                self._handshakes.pop(threading.current_thread(), None)
                return
            stopping = self._stopped
        if stopping or too_many:
            raise HandshakeError(503, "server is at its connection limit" if too_many else "server is stopping")

    @staticmethod
    def _check_auth(auth: Optional[AuthCheck], request: Request) -> None:
        if auth is None:
            return
        try:
            verdict = auth(request)
        except Exception:
            logger.exception("auth check failed on %r", request)
            raise HandshakeError(500, "authentication check failed") from None
        if verdict is True:
            return
        status = verdict if isinstance(verdict, int) and verdict in (401, 403) else 401
        raise HandshakeError(status, "not authorized")

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
            for message in connection:
                try:
                    handler.on_message(message)
                except Exception:
                    logger.exception("on_message of %r failed", handler)
        finally:
            try:
                handler.on_close()
            except Exception:
                logger.exception("on_close of %r failed", handler)

    # ------------------------------------------------------------------ websocket-server's API

    @property
    def clients(self) -> list[dict[str, Any]]:
        """websocket-server's view: a snapshot list of ``{"id", "handler", "address"}``."""
        with self._lock:
            handlers = list(self._handlers.values())
        return [{"id": id(h), "handler": h, "address": h.request.remote_address} for h in handlers]

    def send_message(self, client: dict[str, Any], msg: Any) -> None:
        """Send ``msg`` to one client of :attr:`clients`."""
        client["handler"].write_message(msg)

    def send_message_to_all(self, msg: Any) -> None:
        """Send ``msg`` to every client; one that fails does not stop the others."""
        for client in self.clients:
            try:
                client["handler"].write_message(msg)
            except Exception as exc:
                logger.info("send to %r failed: %s", client["handler"], exc)

    def disconnect_clients_gracefully(self, status: int = 1000, reason: Union[str, bytes] = "") -> None:
        """Start the closing handshake with every client."""
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason
        for client in self.clients:
            client["handler"].close(status, text)

    def disconnect_clients_abruptly(self) -> None:
        """Drop every client without a closing handshake."""
        for client in self.clients:
            client["handler"].connection.abort()

    def shutdown_gracefully(self, status: int = 1001, reason: Union[str, bytes] = "") -> None:
        """websocket-server's name for :meth:`stop`."""
        self.stop(status, reason.decode("utf-8", "replace") if isinstance(reason, bytes) else (reason or "server shutting down"))

    def shutdown_abruptly(self) -> None:
        """Stop without waiting for closing handshakes."""
        self.disconnect_clients_abruptly()
        self.stop()

"""The websocket server: a socketserver accept loop, one named thread per connection, RFC 6455 throughout.

:class:`WebSocketServer` is a :class:`socketserver.TCPServer`: the standard
library's accept loop (``serve_forever``, ``shutdown``, ``server_close``,
``socket``, ``server_address``). Each accepted socket gets its own named
thread, started by :meth:`WebSocketServer.process_request` once the socket
has a handshake place (``max_handshakes``). That thread runs
:mod:`syncws.admission` (TLS, the upgrade request, routing, Origin and auth
checks, admission under ``max_connections``), then the connection's read loop
(:mod:`syncws.connection`), which calls the handler's ``open``,
``on_message`` and ``on_close`` (:mod:`syncws.handlers`).

It uses nothing of websocket-server 0.6.4, whose accept loop is this same
standard-library one; :mod:`syncws.compat` builds websocket-server's API on
top of this server (docs/architecture.md says what each takes from it).
Where it listens is :mod:`syncws.listening`'s; its graceful stop,
:mod:`syncws.drain`'s.

Threads:

* ``syncws-server`` runs the accept loop (``start()``), or the caller's thread
  does (``serve_forever()``).
* ``syncws-conn-N``, one per connection: TLS, the handshake, then the read loop,
  which runs the handler's ``on_message`` and so the user's callback.
* ``start``, ``stop``, ``add_handler`` and the properties are safe from any thread.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import ssl
import threading
from typing import Any, Callable, Optional, Union

from ..cluster.cluster import RedisCluster
from ..cluster.node import ClusterNode
from ..engine.connection import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_SEND_QUEUE, Connection, Outgoing, encode_message
from ..exceptions import HandshakeError, SyncWSError
from ..handlers.handlers import BaseWebSocketHandler, websocketState
from ..handlers.registry import ConnectionRegistry
from ..observe.observing import Observing
from ..protocol import frames
from ..protocol.deflate import DeflateOptions, resolve
from .admission import AuthCheck, Routes, SubprotocolSelector
from .conn_threads import ConnectionHandler, ConnectionThreads
from .drain import Drain, Stopping
from .listening import ListenAddress, check_open_file_limit, url_host
from .routes import RouteConfig

__all__ = ["WebSocketServer", "AuthCheck", "SubprotocolSelector"]

logger = logging.getLogger(__name__)


class WebSocketServer(RouteConfig, Stopping, Observing, ConnectionThreads, socketserver.TCPServer):
    """A websocket server on its own thread, with named endpoints.

    Args:
        host: the address to listen on (default: loopback only). An IPv6
            literal (``::1``) listens on IPv6; ``::`` takes IPv4 connections
            too where the system allows (dual-stack).
        port: the port; 0 picks a free one (see :attr:`port`).
        unix_socket: listen on this Unix domain socket path instead of
            ``host`` and ``port`` (:attr:`port` is then 0). A stale socket
            file left by a crashed server is replaced; an existing file that
            is not a socket, or a socket another server listens on, raises
            OSError. The file is removed on stop.
        registry: where handlers register (default: the shared ``websocketState``).
        max_message_size: larger messages are refused with close 1009.
        max_connections: beyond this many open connections, handshakes get HTTP
            503. Each is an open file: :meth:`start` warns when the process's
            open-file limit (``ulimit -n``) is below it.
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
        max_send_queue: bytes of broadcast messages (``sendWebSocketMessage``
            to every connection of a name, a cluster's sends,
            ``send_message_to_all``) that may wait for one slow client's
            socket, so that it delays no other; past it that client is
            closed (1008, "send queue full").
        close_timeout: how long to wait for a peer's close frame.
        cluster: a :class:`~syncws.RedisCluster`, or its Redis URL, to make
            this server a node of that cluster (docs/cluster.md): its
            connections are published, the registry's sends and
            ``closeAllConnections`` reach every node, and a RequestHandler
            reaches peers on any node. None (the default): one process, no Redis.
        compression: ``"deflate"`` (the default) accepts a client's
            permessage-deflate offer (RFC 7692), as every browser makes one;
            a :class:`syncws.deflate.DeflateOptions` does so with those
            settings (window, memory level, the size below which messages go
            uncompressed); None refuses every offer. docs/tuning.md says
            what it costs and saves.
        engine: ``"reactor"`` (the default), the selector engine
            (docs/architecture.md): every connection on one I/O loop, handlers
            on an elastic pool of worker threads, a thread only while a handler
            runs; or ``"threads"``, a thread per connection, which holds a few
            thousand connections at most (lower ``max_connections`` to fit).
            None takes the ``SYNCWS_ENGINE`` environment variable, else
            ``"reactor"``.
    """

    # Rebind a port at once after stop(), while its closed connections are in TIME_WAIT.
    allow_reuse_address = True
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
        max_connections: int = 10_000,
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
        max_send_queue: int = DEFAULT_MAX_SEND_QUEUE,
        close_timeout: float = 5.0,
        cluster: Union[RedisCluster, str, None] = None,
        unix_socket: Union[str, os.PathLike[str], None] = None,
        compression: Union[str, DeflateOptions, None] = "deflate",
        engine: Optional[str] = None,
    ) -> None:
        #: The permessage-deflate settings offers are accepted with, or None: no compression.
        self.compression: Optional[DeflateOptions] = resolve(compression)
        self.engine = engine if engine is not None else os.environ.get("SYNCWS_ENGINE", "reactor")
        if self.engine not in ("threads", "reactor"):
            raise ValueError(f"engine must be 'threads' or 'reactor', not {self.engine!r}")
        self._listen = ListenAddress(host, port, unix_socket)
        self.address_family = self._listen.family  # read by TCPServer.__init__ to make the socket
        # A str for a Unix socket, as socketserver.UnixStreamServer (a TCPServer too) passes it.
        super().__init__(self._listen.bind_address, ConnectionHandler)  # type: ignore[arg-type]
        self.host = host
        #: The Unix socket path served on, or None for TCP.
        self.unix_socket: Optional[str] = self._listen.unix_socket
        self.port: int = self.socket.getsockname()[1] if unix_socket is None else 0
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
        self.max_send_queue = max_send_queue
        self.close_timeout = close_timeout
        self.thread: Optional[threading.Thread] = None
        #: The cluster this server is a node of, or None.
        self.cluster: Optional[RedisCluster] = RedisCluster(cluster) if isinstance(cluster, str) else cluster
        self.node: Optional[ClusterNode] = ClusterNode(self, self.cluster) if self.cluster is not None else None

        #: The endpoints and static resources (with a lock of their own).
        self.routes = Routes()
        self._init_observing()  # the counters, read by stats()
        # Synchronize access to _handlers, _conn_threads, _handshakes, _handshakes_refused,
        # _serving, _stopped and _stop_callbacks.
        self._lock = threading.Lock()
        self._handlers: dict[Connection, BaseWebSocketHandler] = {}
        self._ended = threading.Condition(self._lock)  # notified when a connection leaves _handlers
        self._serving = False
        self._stopped = False
        self._init_threads()
        self._stop_callbacks: list[Callable[[], None]] = []
        self._drain = Drain()

    def server_bind(self) -> None:
        """Bind the listening socket (in __init__): dual-stack on ``::``, a stale Unix socket file replaced."""
        self._listen.before_bind(self.socket)
        super().server_bind()
        self._listen.after_bind()

    def server_close(self) -> None:
        """Close the listening socket, and remove the Unix socket file this server made. More than once is fine."""
        super().server_close()
        self._listen.remove()

    # ------------------------------------------------------------------ configuration

    @property
    def url(self) -> str:
        """``ws://host:port`` (``wss://`` with TLS; ``ws://[::1]:port`` for IPv6).

        On a Unix socket, ``ws://localhost``: the URL a client gives
        ``syncws.connect(url, unix_socket=server.unix_socket)``.
        """
        scheme = "wss" if self.ssl_context is not None else "ws"
        if self.unix_socket is not None:
            return f"{scheme}://localhost"
        return f"{scheme}://{url_host(self.host)}:{self.port}"

    # ------------------------------------------------------------------ running

    def start(self) -> WebSocketServer:
        """Serve on the background thread ``syncws-server``; return once listening. Safe from any thread."""
        with self._lock:
            if self._stopped:
                raise RuntimeError("a stopped server cannot be started again")
            if self._serving:
                return self
            self._serving = True
        check_open_file_limit(self.max_connections)
        self._start_node()
        self.thread = threading.Thread(target=self._serve, name="syncws-server", daemon=True)
        self.thread.start()
        logger.info("serving on %s", self.url)
        return self

    def _start_node(self) -> None:
        """Join the cluster, if any; ClusterError (and not serving) when Redis cannot be reached."""
        if self.node is None:
            return
        try:
            self.node.start()
        except Exception:
            with self._lock:
                self._serving = False
            raise

    def _serve(self) -> None:
        try:
            super().serve_forever(poll_interval=0.2)
        except Exception:  # pragma: no cover - the accept loop handles its own errors
            logger.exception("accept loop failed")

    def serve_forever(self, poll_interval: float = 0.2) -> None:
        """Serve on the calling thread until stop() or Ctrl-C (which stops cleanly)."""
        with self._lock:
            if self._serving or self._stopped:
                raise RuntimeError("server already started or stopped")
            self._serving = True
        check_open_file_limit(self.max_connections)
        self._start_node()
        self.thread = threading.current_thread()
        logger.info("serving on %s", self.url)
        try:
            super().serve_forever(poll_interval)
        except KeyboardInterrupt:
            logger.info("interrupted")
        finally:
            self._finish_stop(1001, "server shutting down")

    def __enter__(self) -> WebSocketServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections

    def _workers_handling(self) -> int:
        """How many threads are handling a message now (for stats())."""
        return self._drain.handling()

    def _connection_ended(self, connection: Connection) -> None:
        """Forget an admitted connection once its handler's on_close has run (connection thread)."""
        with self._lock:
            self._handlers.pop(connection, None)
            self._ended.notify_all()

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
            if too_many:
                raise HandshakeError(503, "server is at its connection limit", refusal="limit")
            raise HandshakeError(503, "server is stopping", refusal="stopping")

    # ------------------------------------------------------------------ all connections

    @property
    def clients(self) -> list[dict[str, Any]]:
        """The open connections of every endpoint, a snapshot list of ``{"id", "handler", "address"}``. Safe from any thread."""
        with self._lock:
            handlers = list(self._handlers.values())
        return [{"id": id(h), "handler": h, "address": h.request.remote_address} for h in handlers]

    def send_message_to_all(self, msg: Outgoing) -> None:
        """Send ``msg`` to every open connection of this server, whatever its endpoint. Safe from any thread.

        One that fails is logged and does not stop the others; none waits on
        another's socket (see ``max_send_queue``).
        """
        message: Outgoing = json.dumps(msg) if isinstance(msg, (dict, list)) else msg
        opcode, payload = encode_message(message)
        frame = frames.encode_header(opcode, len(payload)) + payload  # one frame for every connection
        for client in self.clients:
            try:
                client["handler"].connection.send_encoded_nowait(opcode, payload, frame)
            except (SyncWSError, OSError) as exc:
                logger.info("send to %r failed: %s", client["handler"], exc)

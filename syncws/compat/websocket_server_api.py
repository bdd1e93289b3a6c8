"""websocket-server's API on syncws's server: a websocket-server program changes its import line, nothing else.

``from websocket_server import WebsocketServer`` becomes
``from syncws.compat import WebsocketServer``. The class offers what
websocket-server 0.6.4 documents, with its names, signatures and defaults:
``WebsocketServer(host, port, loglevel, key, cert)``, ``run_forever``,
``set_fn_new_client``, ``set_fn_client_left``, ``set_fn_message_received``,
``send_message``, ``send_message_to_all``, ``deny_new_connections``,
``allow_new_connections``, ``shutdown_gracefully``, ``shutdown_abruptly``,
``disconnect_clients_gracefully``, ``disconnect_clients_abruptly``,
``clients``, ``port``, ``host``, and what programs use of the socketserver
underneath (``server_close()``, ``shutdown()``, ``socket``, ``server_address``,
``thread``). The public methods are websocket-server's own ``API`` class; this
module supplies the hooks they call. ``client["handler"]`` is a
:class:`WebSocketHandler` with ``send_message``, ``send_pong``,
``send_close``, ``connection`` and ``keep_alive``.

What the program gains: binary frames, fragmentation, the closing
handshake, keepalive pings, size limits, TLS on every supported Python, and
the Autobahn record of :class:`syncws.WebSocketServer`, which this class is.

Where it differs from websocket-server, on purpose:

* A client is in ``clients`` before its 101 response can be seen (and
  nothing is sent to it before the 101), so a client that connects and at
  once expects ``send_message_to_all`` to reach it is never missed.
  websocket-server sends the 101 first and sometimes misses it.
* ``clients`` is a new list on each access (a snapshot, safe to iterate
  while clients come and go); its entries are the same dicts the callbacks get.
* A binary message reaches ``message_received`` as ``bytes`` (websocket-server
  drops it). Text arrives as ``str``, as before.
* ``send_message`` sends text, as websocket-server does (bytes must be
  UTF-8); ``client["handler"].write_message(data)`` sends bytes as binary.
* An exception in a callback is logged and the connection lives on
  (websocket-server ends the connection).
* ``disconnect_clients_*`` start closing and return at once; each client
  leaves ``clients`` (after ``client_left``) when its connection has ended.
  ``shutdown_gracefully`` waits for that, up to ``close_timeout``.
* ``key`` and ``cert`` are both needed for TLS, and a file that cannot be
  loaded raises at construction (websocket-server serves plain text instead).
* ``loglevel`` sets the level of this module's logger only; the root logger
  is never configured (websocket-server calls ``logging.basicConfig()`` on import).

Threads: the callbacks run on the client's own connection thread
(``syncws-conn-N``): ``new_client`` after the 101 is out, then
``message_received`` for each message, then ``client_left``. One that
blocks holds up only its own client. ``send_message``,
``send_message_to_all``, ``clients`` and every other method are safe from any thread.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any, Callable, Optional, Union

from ..engine.connection import Message, Outgoing
from ..exceptions import SyncWSError
from ..handlers.handlers import BaseWebSocketHandler
from ..handlers.registry import ConnectionRegistry
from ..server.server import WebSocketServer


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

__all__ = ["WebsocketServer", "WebSocketHandler", "Client"]

logger = logging.getLogger(__name__)

#: A client as websocket-server has it: ``{"id": int, "handler": WebSocketHandler, "address": (host, port)}``.
Client = dict[str, Any]

OPCODE_TEXT = websocket_server.OPCODE_TEXT
OPCODE_PONG = websocket_server.OPCODE_PONG
CLOSE_STATUS_NORMAL: int = websocket_server.CLOSE_STATUS_NORMAL
DEFAULT_CLOSE_REASON: bytes = websocket_server.DEFAULT_CLOSE_REASON
#: websocket-server's public methods (names, signatures, defaults), each calling a hook that WebsocketServer supplies.
API: Any = websocket_server.API


def _text(reason: Union[str, bytes]) -> str:
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason


class WebSocketHandler:
    """What websocket-server's callbacks get as ``client["handler"]``: one per client.

    ``connection`` and ``request`` are the client's socket (a TLS socket with
    ``key`` and ``cert``), ``client_address`` its address, ``server`` the
    server. ``path`` and ``headers`` are the handshake request's (syncws
    adds them). Every method is safe from any thread.
    """

    def __init__(self, server: WebsocketServer, endpoint: BaseWebSocketHandler) -> None:
        self.server = server
        self._endpoint = endpoint
        self.request = self.connection = endpoint.connection.sock
        self.client_address: tuple[str, int] = endpoint.request.remote_address
        self.path: str = endpoint.request.path
        self.headers = endpoint.request.headers
        self.handshake_done = True
        self.valid_client = True

    @property
    def keep_alive(self) -> bool:
        """True while the connection is open; setting it False starts the closing handshake."""
        return not self._endpoint.connection.closed

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        if not value:
            self._endpoint.close(CLOSE_STATUS_NORMAL, "")

    def send_message(self, message: Union[str, bytes]) -> Optional[bool]:
        """Send a text message (websocket-server's rule: str, or bytes that are UTF-8); False if it is neither.

        Raises syncws.ConnectionClosed once the client has left.
        """
        return self.send_text(message)

    def send_pong(self, message: Union[str, bytes]) -> Optional[bool]:
        """Send an unsolicited pong carrying ``message`` (pings are answered without it)."""
        return self.send_text(message, OPCODE_PONG)

    def send_text(self, message: Union[str, bytes], opcode: int = OPCODE_TEXT) -> Optional[bool]:
        """Send ``message`` as a text frame (or a pong, with ``opcode``); False, with a warning, when it is not text."""
        if isinstance(message, bytes):
            try:
                message = message.decode("utf-8")
            except UnicodeDecodeError:
                logger.warning("Can't send message, message is not valid UTF-8")
                return False
        elif not isinstance(message, str):
            logger.warning("Can't send message, message has to be a string or bytes. Got %s", type(message))
            return False
        if opcode == OPCODE_PONG:
            self._endpoint.connection.pong(message.encode("utf-8"))
        else:
            self._endpoint.write_message(message)
        return None

    def send_close(self, status: int = CLOSE_STATUS_NORMAL, reason: Union[str, bytes] = DEFAULT_CLOSE_REASON) -> None:
        """Start the closing handshake with ``status`` and ``reason``; ValueError for a status outside 1000 to 4999."""
        if not 1000 <= status <= 4999:
            raise ValueError(f"CLOSE status must be between 1000 and 4999, got {status}")
        self._endpoint.close(status, _text(reason))

    def write_message(self, message: Outgoing, binary: bool = False) -> None:
        """syncws's send: str as text, bytes-like as binary, dict or list as JSON text."""
        self._endpoint.write_message(message, binary)

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        self._endpoint.connection.abort()

    def __repr__(self) -> str:
        return f"<WebSocketHandler {self.client_address[0]}:{self.client_address[1]} {self.path!r}>"


class _ClientEndpoint(BaseWebSocketHandler):
    """The syncws handler behind each client: it hands every event to the compat server (connection thread)."""

    def initialize(self, compat: Optional[WebsocketServer] = None) -> None:  # type: ignore[override]
        """Take the server (connection thread, before the upgrade is answered)."""
        assert compat is not None
        self.compat = compat
        self.client: Optional[Client] = None

    def open(self) -> None:
        """Join ``clients`` (or close, when new connections are denied), send the 101, call new_client."""
        self.client = self.compat._client_opened(self)

    def on_message(self, message: Message) -> None:
        """Call message_received (nothing for a denied client)."""
        if self.client is not None:
            self.compat._call(self.compat.message_received, self.client, self.compat, message)

    def on_close(self) -> None:
        """Call client_left and leave ``clients`` (nothing for a denied client)."""
        if self.client is not None:
            self.compat._client_closed(self.client)


class WebsocketServer(API, WebSocketServer):  # type: ignore[misc]
    """websocket-server's ``WebsocketServer``, on :class:`syncws.WebSocketServer`.

    Args:
        host: the address to listen on (default: loopback only).
        port: the port; 0 picks a free one (see ``port``).
        loglevel: the level of this module's logger (``syncws.compat``).
        key, cert: paths of the TLS private key and certificate (both, or neither).
        options: any keyword option of :class:`syncws.WebSocketServer`
            (``max_message_size``, ``ping_interval``, ``close_timeout``, ...).

    Every path is served. The methods are websocket-server's ``API``; see the
    module docstring for threads and differences.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        loglevel: int = logging.WARNING,
        key: Optional[str] = None,
        cert: Optional[str] = None,
        **options: Any,
    ) -> None:
        logger.setLevel(loglevel)
        options.setdefault("registry", ConnectionRegistry())
        super().__init__(host, port, ssl_context=_tls_context(key, cert), **options)
        self.key = key
        self.cert = cert
        # Synchronize access to _clients, id_counter and _deny_clients.
        self._clients_lock = threading.Lock()
        self._clients: list[Client] = []
        self.id_counter = 0
        self._deny_clients: Optional[tuple[int, Union[str, bytes]]] = None
        self.add_fallback_handler(_ClientEndpoint, compat=self)

    @property
    def clients(self) -> list[Client]:
        """The connected clients, oldest first: a new list of the dicts the callbacks get. Safe from any thread."""
        with self._clients_lock:
            return list(self._clients)

    def handler_to_client(self, handler: WebSocketHandler) -> Optional[Client]:
        """The client whose handler is ``handler``, or None once it has left."""
        return next((client for client in self.clients if client["handler"] is handler), None)

    # ------------------------------------------------------------------ the clients' events (connection thread)

    def _client_opened(self, endpoint: _ClientEndpoint) -> Optional[Client]:
        """Register a new client before its 101 can be seen, then send the 101 and call new_client."""
        with self._clients_lock:
            denied = self._deny_clients
            if denied is None:
                self.id_counter += 1
                client: Client = {"id": self.id_counter, "handler": WebSocketHandler(self, endpoint), "address": endpoint.request.remote_address}
                self._clients.append(client)
        if denied is not None:
            # As websocket-server does: the handshake succeeds, then a close frame says why.
            endpoint.close(denied[0], _text(denied[1]))
            return None
        try:
            endpoint.connection.flush_preamble()
        except SyncWSError:
            pass  # the client is gone already; its read loop ends at once and client_left follows
        self._call(self.new_client, client, self)
        return client

    def _client_closed(self, client: Client) -> None:
        self._call(self.client_left, client, self)
        with self._clients_lock:
            self._clients.remove(client)

    @staticmethod
    def _call(callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("callback %r failed", getattr(callback, "__name__", callback))

    # ------------------------------------------------------------------ the hooks of websocket-server's API

    def _run_forever(self, threaded: bool) -> None:
        if threaded:
            self.start()
        else:
            self.serve_forever()

    def _unicast(self, receiver_client: Client, msg: Union[str, bytes]) -> None:
        receiver_client["handler"].send_message(msg)

    def _multicast(self, msg: Union[str, bytes]) -> None:
        for client in self.clients:
            try:
                self._unicast(client, msg)
            except (SyncWSError, OSError) as exc:
                logger.info("send to client %d failed: %s", client["id"], exc)

    def _deny_new_connections(self, status: int, reason: Union[str, bytes]) -> None:
        with self._clients_lock:
            self._deny_clients = (status, reason)

    def _allow_new_connections(self) -> None:
        with self._clients_lock:
            self._deny_clients = None

    def _shutdown_gracefully(self, status: int = CLOSE_STATUS_NORMAL, reason: Union[str, bytes] = DEFAULT_CLOSE_REASON) -> None:
        self.stop(status, _text(reason))

    def _shutdown_abruptly(self) -> None:
        self._disconnect_clients_abruptly()
        self.stop()

    def _disconnect_clients_gracefully(self, status: int = CLOSE_STATUS_NORMAL, reason: Union[str, bytes] = DEFAULT_CLOSE_REASON) -> None:
        for client in self.clients:
            client["handler"].send_close(status, reason)

    def _disconnect_clients_abruptly(self) -> None:
        for client in self.clients:
            client["handler"].abort()


def _tls_context(key: Optional[str], cert: Optional[str]) -> Optional[ssl.SSLContext]:
    """A server TLS context from websocket-server's ``key`` and ``cert`` paths; None for neither."""
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        raise ValueError("TLS needs both key and cert")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile=cert, keyfile=key)
    return context

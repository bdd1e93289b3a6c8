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
:class:`~syncws.compat.client_handler.WebSocketHandler` with
``send_message``, ``send_pong``, ``send_close``, ``connection``,
``keep_alive`` and the classmethods ``calculate_response_key`` and
``make_handshake_response``.

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
* A client leaves ``clients`` the moment its connection starts to end (our
  close frame goes out, the client's comes in, or the socket is lost),
  before the client can see anything of that end: once a client's
  ``close()`` has returned, it is not in ``clients``. ``client_left``
  follows on the client's thread once the connection has ended
  (websocket-server calls it while the client is still listed).
* ``disconnect_clients_gracefully`` sends each client a close frame and
  returns once every one has left and its ``client_left`` has run: the
  closing handshake done, or the connection dropped after ``close_timeout``
  (websocket-server returns at once). ``shutdown_gracefully`` waits the same.
* ``disconnect_clients_abruptly`` and ``shutdown_abruptly`` do what
  websocket-server documents ("clients won't be aware until they try to
  send some data"): every client leaves ``clients``, and its
  ``client_left`` runs on the calling thread, before they return; nothing
  reaches the client. The next message it sends still reaches
  ``message_received`` (websocket-server passes None for the client; this
  passes the departed client), then its connection drops with no close
  frame. One that sends nothing is dropped after ``close_timeout``.
* Once a client has left, ``client["handler"].connection`` is a socket of
  the handler's own onto the ended connection, shut down both ways and open
  until the handler is garbage-collected, as websocket-server's stays open:
  a send on it raises BrokenPipeError (not EBADF).
* ``key`` and ``cert`` are both needed for TLS, and a file that cannot be
  loaded raises at construction (websocket-server serves plain text instead).
* ``loglevel`` sets the level of this module's logger only; the root logger
  is never configured (websocket-server calls ``logging.basicConfig()`` on import).

Threads: the callbacks run on the client's own connection thread
(``syncws-conn-N``): ``new_client`` after the 101 is out, then
``message_received`` for each message, then ``client_left`` (which
``disconnect_clients_abruptly`` and ``shutdown_abruptly`` call on their
caller's thread instead). One that blocks holds up only its own client.
``send_message``, ``send_message_to_all``, ``clients`` and every other
method are safe from any thread; the ``disconnect_*`` and ``shutdown_*``
methods, called from a callback, do not wait for the caller's own client.
A ``syncws-compat-linger`` thread drops, after ``close_timeout``, the
clients an abrupt disconnect let go of that have sent nothing since.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any, Callable, Optional, Union

from ..engine.connection import Message
from ..engine.tls import server_context
from ..exceptions import SyncWSError
from ..handlers.handlers import BaseWebSocketHandler
from ..handlers.registry import ConnectionRegistry
from ..server.server import WebSocketServer
from .client_handler import API, CLOSE_STATUS_NORMAL, DEFAULT_CLOSE_REASON, Client, WebSocketHandler, check_status, text, websocket_server

__all__ = ["WebsocketServer", "WebSocketHandler", "Client", "websocket_server"]

logger = logging.getLogger(__name__)


class _ClientEndpoint(BaseWebSocketHandler):
    """The syncws handler behind each client: it hands every event to the compat server.

    ``client``, ``closing``, ``terminated`` and ``left_claimed`` are under the
    compat server's ``_clients_lock``; ``left`` is an event, safe from any thread.
    """

    def initialize(self, compat: Optional[WebsocketServer] = None) -> None:  # type: ignore[override]
        """Take the server (connection thread, before the upgrade is answered)."""
        assert compat is not None
        self.compat = compat
        #: The client's dict once it has joined; None for a denied client (and before open).
        self.client: Optional[Client] = None
        #: The connection's thread (set by open): the one that runs the callbacks.
        self.thread: Optional[threading.Thread] = None
        #: The connection started to end: the client has left ``clients``, or never joins.
        self.closing = False
        #: Let go of by an abrupt disconnect: dropped once it has sent one more message.
        self.terminated = False
        #: Some thread has taken the call of client_left (the connection's, or an abrupt disconnect's).
        self.left_claimed = False
        #: Set once client_left has run for this client (at once for a denied one): what disconnects wait for.
        self.left = threading.Event()

    def open(self) -> None:
        """Join ``clients`` (or close, when new connections are denied), send the 101, call new_client (connection thread)."""
        self.thread = threading.current_thread()
        self.compat._client_opened(self)

    def on_closing(self, code: int, reason: str) -> None:
        """The connection starts to end: leave ``clients`` now (the thread that decided it; returns at once, sends nothing)."""
        self.compat._client_closing(self)

    def on_message(self, message: Message) -> None:
        """Call message_received (nothing for a denied client); drop a client let go of after it (connection thread)."""
        if self.client is not None:
            self.compat._call(self.compat.message_received, self.client, self.compat, message)
        if self.terminated:
            # websocket-server's handler, once terminated, ends after reading one more message.
            self.connection.abort()

    def on_close(self) -> None:
        """Call client_left unless an abrupt disconnect did (nothing for a denied client) (connection thread)."""
        self.compat._client_closed(self)


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
        # websocket-server's API hands out each client's socket (client["handler"].request), corks it
        # and reads its close state: it stays on the thread engine, whatever SYNCWS_ENGINE says.
        options.setdefault("engine", "threads")
        super().__init__(host, port, ssl_context=_tls_context(key, cert), **options)
        self.key = key
        self.cert = cert
        # Synchronize access to _clients, id_counter, _deny_clients, and each client
        # endpoint's client, closing, terminated and left_claimed.
        self._clients_lock = threading.Lock()
        self._clients: list[Client] = []
        self.id_counter = 0
        self._deny_clients: Optional[tuple[int, Union[str, bytes]]] = None
        #: The thread that run_forever(threaded=True) (or start()) serves on; joined by shutdown().
        self._accept_thread: Optional[threading.Thread] = None
        self.add_fallback_handler(_ClientEndpoint, compat=self)

    @property
    def clients(self) -> list[Client]:
        """The connected clients, oldest first: a new list of the dicts the callbacks get. Safe from any thread."""
        with self._clients_lock:
            return list(self._clients)

    def handler_to_client(self, handler: WebSocketHandler) -> Optional[Client]:
        """The client whose handler is ``handler``, or None once it has left."""
        return next((client for client in self.clients if client["handler"] is handler), None)

    # ------------------------------------------------------------------ running (any thread)

    def start(self) -> WebsocketServer:
        """Serve on the background thread ``syncws-server`` (run_forever(threaded=True)); return once listening."""
        super().start()
        self._accept_thread = self.thread
        return self

    def shutdown(self) -> None:
        """End the accept loop and wait for it (socketserver's ``shutdown``), and for the thread that ran it.

        websocket-server's programs (and tests) check ``server.thread.is_alive()``
        right after; the thread ends just after its loop, so the wait is short
        (bounded all the same). Call it from any thread but the accept loop's own.
        """
        super().shutdown()
        thread = self._accept_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_THREAD_END_TIMEOUT)

    # ------------------------------------------------------------------ the clients' events

    def _client_opened(self, endpoint: _ClientEndpoint) -> None:
        """Register a new client before its 101 can be seen, then send the 101 and call new_client (connection thread)."""
        with self._clients_lock:
            denied = self._deny_clients
            if denied is None:
                self.id_counter += 1
                client: Client = {"id": self.id_counter, "handler": WebSocketHandler(self, endpoint), "address": endpoint.request.remote_address}
                endpoint.client = client
                if not endpoint.closing:  # else it ended already: it never shows in clients
                    self._clients.append(client)
        if denied is not None:
            endpoint.left.set()  # it never joins: nothing to wait for
            # As websocket-server does: the handshake succeeds, then a close frame says why.
            endpoint.close(denied[0], text(denied[1]))
            return
        try:
            endpoint.connection.flush_preamble()
        except SyncWSError:
            pass  # the client is gone already; its read loop ends at once and client_left follows
        self._call(self.new_client, client, self)

    def _client_closing(self, endpoint: _ClientEndpoint) -> None:
        """The connection starts to end: the client leaves ``clients``, its handler holds the socket (any thread, at once)."""
        with self._clients_lock:
            endpoint.closing = True
            client = endpoint.client
            self._unlist(client)
        if endpoint.connection.protocol.close_received:
            # The client closes: syncws answers with a close frame, then shuts the connection
            # down. Corked, the answer leaves with the shutdown (websocket-server just shuts
            # down): a client whose close() returned finds the connection shut down here.
            _cork(endpoint.connection.sock)
        if client is not None:
            client["handler"].hold_socket()

    def _client_closed(self, endpoint: _ClientEndpoint) -> None:
        """The connection has ended: call client_left unless an abrupt disconnect did (connection thread)."""
        with self._clients_lock:
            client = endpoint.client
            self._unlist(client)
            ours = client is not None and not endpoint.left_claimed
            endpoint.left_claimed = True
        if client is None:
            return  # denied: it never joined
        client["handler"].hold_socket()  # (done when the end began, unless it began before the client joined)
        if ours:
            self._call(self.client_left, client, self)
            endpoint.left.set()

    def _unlist(self, client: Optional[Client]) -> None:
        """Take ``client`` out of ``clients`` if it is there. Requires _clients_lock."""
        if client is not None:
            self._clients[:] = [listed for listed in self._clients if listed is not client]

    @staticmethod
    def _call(callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("callback %r failed", getattr(callback, "__name__", callback))

    # ------------------------------------------------------------------ the hooks of websocket-server's API (any thread)

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
        self.stop(status, text(reason))

    def _shutdown_abruptly(self) -> None:
        self._disconnect_clients_abruptly()
        self.stop()  # closes nothing of the clients let go of, and does not wait for them

    def _disconnect_clients_gracefully(self, status: int = CLOSE_STATUS_NORMAL, reason: Union[str, bytes] = DEFAULT_CLOSE_REASON) -> None:
        check_status(status)
        endpoints = [client["handler"]._endpoint for client in self.clients]
        for endpoint in endpoints:
            endpoint.close(status, text(reason))  # each leaves clients now (on_closing)
        # The connections end their closing handshakes, or drop the client after close_timeout;
        # as stop() does, what is left after that is dropped here.
        late = _wait_left(endpoints, self.close_timeout)
        for endpoint in late:
            endpoint.connection.abort()
        _wait_left(late, _THREAD_END_TIMEOUT)

    def _disconnect_clients_abruptly(self) -> None:
        with self._clients_lock:
            leaving = [(client, client["handler"]._endpoint) for client in self._clients]
            self._clients.clear()
            ours = []
            for client, endpoint in leaving:
                endpoint.terminated = True
                if not endpoint.left_claimed:
                    endpoint.left_claimed = True
                    ours.append((client, endpoint))
        endpoints = [endpoint for _, endpoint in leaving]
        for endpoint in endpoints:
            self._let_go(endpoint)
        for client, endpoint in ours:
            self._call(self.client_left, client, self)
            endpoint.left.set()
        if endpoints:
            linger = threading.Timer(self.close_timeout, _drop_silent, args=(endpoints,))
            linger.name, linger.daemon = "syncws-compat-linger", True
            linger.start()
        # A connection that was ending anyway may be running client_left on its own thread now.
        _wait_left(endpoints, self.close_timeout)

    def _let_go(self, endpoint: _ClientEndpoint) -> None:
        """The server stops counting the client's connection as its own: stop() neither closes it nor waits for its thread.

        What websocket-server's shutdown_abruptly does to its clients: they
        are left to end by themselves (here: at their next message, or after
        ``close_timeout``).
        """
        self._connection_ended(endpoint.connection)
        if endpoint.thread is not None:
            with self._lock:
                self._conn_threads.discard(endpoint.thread)


#: How long shutdown() waits for the accept thread, and a disconnect for connections it aborted, to end.
_THREAD_END_TIMEOUT = 5.0


def _wait_left(endpoints: list[_ClientEndpoint], seconds: float) -> list[_ClientEndpoint]:
    """Wait, ``seconds`` in all, until client_left has run for each client; return those it has not run for.

    The calling thread's own client (a disconnect called from a callback)
    cannot leave while its thread is here: it is not waited for.
    """
    deadline = time.monotonic() + seconds
    me = threading.current_thread()
    return [endpoint for endpoint in endpoints if endpoint.thread is not me and not endpoint.left.wait(max(0.0, deadline - time.monotonic()))]


def _cork(sock: socket.socket) -> None:
    """Hold back what is written on a TCP socket until it is shut down (Linux's TCP_CORK: 200 ms at most); elsewhere nothing."""
    cork = getattr(socket, "TCP_CORK", None)
    if cork is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    except OSError:
        pass  # closed already: nothing more is written


def _drop_silent(endpoints: list[_ClientEndpoint]) -> None:
    """Drop, without a close frame, the clients let go of that have not sent anything since (``syncws-compat-linger``)."""
    for endpoint in endpoints:
        if not endpoint.connection.closed:
            endpoint.connection.abort()


def _tls_context(key: Optional[str], cert: Optional[str]) -> Optional[ssl.SSLContext]:
    """A server TLS context from websocket-server's ``key`` and ``cert`` paths; None for neither."""
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        raise ValueError("TLS needs both key and cert")
    return server_context(cert, key)

"""From an accepted socket to an open connection: TLS, the upgrade request, routing and the checks.

:func:`start_tls` and :func:`handshake` are the opening of one connection,
run on that connection's own thread (``syncws-conn-N``): the TLS handshake,
reading the HTTP request within the limits, a static resource or the upgrade,
the route (:class:`Routes`), the Origin and ``auth`` checks, the handler's
``initialize``, and admission by the server (its connection limit). They ask
the server for what only the server knows through :class:`AdmissionHost`, so
this module never imports the server; the server logs the outcome.

:class:`Routes` is the table of endpoints and static resources, safe from any thread.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from typing import Optional, Protocol

from ..engine.connection import Connection
from ..exceptions import HandshakeError
from ..handlers.handlers import BaseWebSocketHandler, HandlerHost
from ..observe.counters import ServerCounters, refusal_of
from ..protocol.deflate import DeflateOptions, PerMessageDeflate
from ..protocol.handshake import (
    Request,
    accept_response,
    check_upgrade,
    error_response,
    is_token,
    is_upgrade,
    negotiate_deflate,
    offered_subprotocols,
    parse_http_request,
)
from .listening import describe_address
from .plain_http import serve_plain
from .routes import HTTP_METHODS, AuthCheck, Endpoint, Routes, SubprotocolSelector, check_auth

__all__ = [
    "AuthCheck",
    "SubprotocolSelector",
    "Endpoint",
    "Routes",
    "AdmissionHost",
    "start_tls",
    "handshake",
    "refuse",
    "end_tls",
    "read_head",
    "check_auth",
    "check_origin",
    "select_subprotocol",
]

logger = logging.getLogger(__name__)

#: The first byte of a TLS ClientHello (a handshake record); no HTTP request starts with it.
_TLS_HANDSHAKE_RECORD = b"\x16"
#: How a plain HTTP request starts: a method (a token of letters) and a space, as far as 8 bytes show.
_PLAIN_REQUEST = re.compile(rb"[A-Z]{1,7}( |$)")


class AdmissionHost(HandlerHost, Protocol):
    """What :func:`start_tls` and :func:`handshake` need of the server: its settings, routes and two bookkeeping calls."""

    routes: Routes
    ssl_context: Optional[ssl.SSLContext]
    auth: Optional[AuthCheck]
    origins: Optional[list[str]]
    handshake_timeout: float
    max_handshake_size: int
    max_headers: int
    max_message_size: Optional[int]
    ping_interval: Optional[float]
    ping_timeout: Optional[float]
    send_timeout: Optional[float]
    max_send_queue: int
    close_timeout: float
    compression: Optional[DeflateOptions]
    counters: ServerCounters

    def _track_handshake(self, sock: socket.socket) -> None:
        """Make ``sock`` the socket that stop() cuts short for this thread; raise if stopping."""

    def _check_capacity(self, admit: Optional[tuple[Connection, BaseWebSocketHandler]] = None) -> None:
        """Raise HandshakeError 503 when stopping or full; else, with ``admit``, register that connection."""

    def _new_connection(self, sock: socket.socket, *, initial_data: bytes, preamble: bytes, deflate: Optional[PerMessageDeflate], name: str) -> Connection:
        """The connection of an accepted upgrade, on the server's engine."""


def start_tls(host: AdmissionHost, raw: socket.socket) -> socket.socket:
    """The socket to speak HTTP on (connection thread): ``raw`` itself, or with TLS, ``raw`` wrapped
    and its TLS handshake done within the socket's timeout. Raises OSError or ssl.SSLError on failure."""
    if host.ssl_context is None:
        return raw
    # A plain HTTP request where a TLS handshake belongs (a ws:// or http:// URL
    # for this wss:// server) gets a plain answer that says so, where the TLS
    # layer would drop the connection without a word.
    if _PLAIN_REQUEST.match(raw.recv(8, socket.MSG_PEEK)):
        raise HandshakeError(400, "this server speaks TLS: use a wss:// (or https://) URL, not ws://")
    # Wrapping moves the socket into a new object: track that one before the
    # TLS handshake, so that stop() can cut it short.
    sock = host.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
    try:
        host._track_handshake(sock)
        sock.do_handshake()
    except BaseException:
        end_tls(sock, raw)
        raise
    return sock


def handshake(host: AdmissionHost, sock: socket.socket, address: tuple[str, int], deadline: float) -> Optional[tuple[Connection, BaseWebSocketHandler]]:
    """Read and answer the HTTP request on ``sock`` by ``deadline`` (connection thread): the admitted
    connection and its handler, or None when a static resource was served.

    Raises HandshakeError (to be answered with its HTTP status), OSError or
    ssl.SSLError. The 101 response is not written yet: it goes out with the
    connection's first frame or at ``flush_preamble()``, so the server can
    register the connection (and ``open()`` run) before the client can see
    it accepted.
    """
    try:
        head, rest = read_head(sock, deadline, host.max_handshake_size)
        request = parse_http_request(head, address, host.max_headers, methods=HTTP_METHODS)
    except HandshakeError as exc:
        host.counters.refused(refusal_of(exc))
        raise
    if not is_upgrade(request):
        if serve_plain(host.routes, sock, request, rest, deadline):
            return None
        return _upgrade(host, sock, request, rest, address)  # refused (426, 405, ...), but no handshake was tried: not counted
    try:
        return _upgrade(host, sock, request, rest, address)
    except HandshakeError as exc:
        host.counters.refused(refusal_of(exc))
        raise


def _upgrade(host: AdmissionHost, sock: socket.socket, request: Request, rest: bytes, address: tuple[str, int]) -> tuple[Connection, BaseWebSocketHandler]:
    """Check a websocket upgrade request and admit its connection, or raise HandshakeError."""
    if request.method != "GET":
        raise HandshakeError(405, f"method {request.method!r} is not GET")
    check_upgrade(request.headers)
    endpoint = _check(host, request)
    subprotocol = select_subprotocol(endpoint, request)
    agreed = negotiate_deflate(request, host.compression)
    connection = host._new_connection(
        sock,
        initial_data=rest,
        preamble=accept_response(request, subprotocol, agreed[0] if agreed else None),
        deflate=PerMessageDeflate(agreed[1], False, host.compression) if agreed and host.compression else None,
        name=f"{threading.current_thread().name} {describe_address(address)}",
    )
    connection.meter = host.counters.endpoint(endpoint.label)
    return connection, _admit(host, request, connection, endpoint, subprotocol)


def refuse(sock: socket.socket, error: HandshakeError) -> None:
    """Answer a refused handshake with its HTTP status; a peer already gone is no error."""
    try:
        sock.sendall(error_response(error.status, error.reason))
    except OSError:
        pass


def _check(host: AdmissionHost, request: Request) -> Endpoint:
    """Route and check a request: its endpoint, or HandshakeError (404, 503, 403, 401)."""
    endpoint = host.routes.route(request.path)
    if endpoint is None:
        raise HandshakeError(404, f"no endpoint at {request.path!r}", refusal="not_found")
    host._check_capacity()
    check_origin(endpoint.origins if endpoint.origins is not None else host.origins, request)
    check_auth(endpoint.auth or host.auth, request)
    return endpoint


def select_subprotocol(endpoint: Endpoint, request: Request) -> Optional[str]:
    """The subprotocol to answer ``request`` with on ``endpoint``, or None for no header.

    With the endpoint's ``select_subprotocol`` hook, what it returns (it
    must be one the client offered: else 500); otherwise the first of the
    endpoint's ``subprotocols`` that the client offers. None when nothing
    matches, as RFC 6455 4.2.2 says, unless the endpoint requires one: then
    HandshakeError 400, naming what it speaks.
    """
    offered = offered_subprotocols(request.headers)
    if endpoint.select_subprotocol is not None:
        try:
            chosen = endpoint.select_subprotocol(request, list(offered))
        except HandshakeError:
            raise
        except Exception:
            logger.exception("select_subprotocol failed on %r", request)
            raise HandshakeError(500, "subprotocol selection failed") from None
        if chosen is not None and (chosen not in offered or not is_token(chosen)):
            logger.error("select_subprotocol returned %r, which the client did not offer (%r)", chosen, offered)
            raise HandshakeError(500, "subprotocol selection failed")
    else:
        chosen = next((name for name in endpoint.subprotocols if name in offered), None)
    if chosen is None and endpoint.require_subprotocol:
        speaks = ", ".join(endpoint.subprotocols) or "a subprotocol the client did not offer"
        raise HandshakeError(400, f"this endpoint requires a subprotocol ({speaks}); offered: {', '.join(offered) or 'none'}")
    return chosen


def _admit(host: AdmissionHost, request: Request, connection: Connection, endpoint: Endpoint, subprotocol: Optional[str]) -> BaseWebSocketHandler:
    """Build and initialize the handler of a checked request and have the server admit it, or raise HandshakeError."""
    handler = endpoint.handler_class(host, connection, request)
    handler.selected_subprotocol = subprotocol
    try:
        handler.initialize(**endpoint.kwargs)
    except Exception:
        logger.exception("initialize() of %s failed", endpoint.handler_class.__name__)
        raise HandshakeError(500, "handler failed to initialize") from None
    # Checked again and taken in one step: two handshakes at once cannot both take the last place.
    host._check_capacity(admit=(connection, handler))
    return handler


def end_tls(sock: socket.socket, raw: socket.socket) -> None:
    """Close the TLS socket of a handshake that ended without a connection; socketserver closes ``raw``."""
    if sock is not raw:
        try:
            socket.socket.shutdown(sock, socket.SHUT_WR)
        except OSError:
            pass
        sock.close()


def read_head(sock: socket.socket, deadline: float, max_size: int) -> tuple[bytes, bytes]:
    """Read an HTTP request head by ``deadline``: the head, and the bytes read past it.

    Raises HandshakeError 431 past ``max_size`` bytes, socket.timeout at the
    deadline and ConnectionResetError when the peer closes first.
    """
    data = bytearray()
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0 and end <= max_size:
            return bytes(data[:end]), bytes(data[end + 4 :])
        if len(data) > max_size:
            raise HandshakeError(431, f"handshake larger than {max_size} bytes")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("handshake took too long")
        sock.settimeout(remaining)
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("peer closed during the handshake")
        if not data and chunk[:1] == _TLS_HANDSHAKE_RECORD:
            # A wss:// URL for this ws:// server: say so at once, not at the handshake timeout.
            raise HandshakeError(400, "a TLS handshake on a plain server: use a ws:// URL, not wss://")
        data += chunk


def check_origin(origins: Optional[list[str]], request: Request) -> None:
    """Raise HandshakeError 403 when ``origins`` is given and the request's Origin is not in it.

    A request without Origin (not a browser) passes.
    """
    origin = request.headers.get("Origin")
    if origins is not None and origin is not None and origin not in origins:
        raise HandshakeError(403, f"origin {origin!r} is not allowed", refusal="origin")

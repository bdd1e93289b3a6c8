"""Plain HTTP requests beside the websocket endpoints: static resources and HTTP routes.

A request that asks for no websocket upgrade and names a path added with
``add_static`` or ``WebSocketServer.add_http`` is answered here, on the
connection's thread, within the handshake's deadline and limits, and the
connection closes after the answer. Everything else goes on to the
websocket handshake (:mod:`syncws.server.admission`), which answers a plain
request for any other path with 426 as before.

A route's function runs on the connection's thread with the request (its
body read in full, at most the route's ``max_body`` bytes); what it raises
is logged and answered 500, so a faulty page takes nothing else down.
"""

from __future__ import annotations

import logging
import socket
import time

from ..exceptions import HandshakeError
from ..protocol.handshake import Request
from ..protocol.http import HttpResponse
from .routes import HttpRoute, Routes, check_auth

__all__ = ["serve_plain"]

logger = logging.getLogger(__name__)


def serve_plain(routes: Routes, sock: socket.socket, request: Request, rest: bytes, deadline: float) -> bool:
    """Answer ``request`` when a static resource or an HTTP route is at its path; False when neither is.

    ``rest`` holds the bytes read past the request's head (the start of a
    POST body). Raises HandshakeError (405, 411, 413, 400, or the route's
    ``auth`` refusal) for the caller to answer, socket.timeout at
    ``deadline`` and OSError when the client goes away.
    """
    resource = routes.static(request.path)
    if resource is not None:
        if request.method not in ("GET", "HEAD"):
            raise HandshakeError(405, f"{request.path!r} answers GET and HEAD, not {request.method}")
        body, content_type = resource
        sock.sendall(HttpResponse(200, body, content_type).encode(head_only=request.method == "HEAD"))
        return True
    route = routes.http(request.path)
    if route is None:
        return False
    if request.method not in route.methods:
        raise HandshakeError(405, f"{request.path!r} answers {', '.join(sorted(route.methods))}, not {request.method}")
    check_auth(route.auth, request)
    if request.method == "POST":
        request.body = _read_body(sock, request, rest, route.max_body, deadline)
    sock.sendall(_answer(route, request).encode(head_only=request.method == "HEAD"))
    return True


def _answer(route: HttpRoute, request: Request) -> HttpResponse:
    """What the route's function answers; 500 (logged) when it raises or returns no HttpResponse."""
    try:
        response = route.function(request)
    except HandshakeError:
        raise
    except Exception:
        logger.exception("HTTP route %s %s failed", request.method, request.path)
        return HttpResponse(500, b"internal server error\n", "text/plain; charset=utf-8")
    if not isinstance(response, HttpResponse):
        logger.error("HTTP route %s %s returned %r, not an HttpResponse", request.method, request.path, type(response).__name__)
        return HttpResponse(500, b"internal server error\n", "text/plain; charset=utf-8")
    return response


def _read_body(sock: socket.socket, request: Request, rest: bytes, max_body: int, deadline: float) -> bytes:
    """A POST's body by its Content-Length: 411 without one (chunked bodies included), 413 past ``max_body``."""
    if "Transfer-Encoding" in request.headers:
        raise HandshakeError(411, "a request body needs a Content-Length (no chunked encoding)")
    length_text = request.headers.get("Content-Length")
    if length_text is None:
        raise HandshakeError(411, "a POST needs a Content-Length")
    if not length_text.isascii() or not length_text.isdigit():
        raise HandshakeError(400, f"invalid Content-Length {length_text[:40]!r}")
    length = int(length_text)
    if length > max_body:
        raise HandshakeError(413, f"a request body of {length} bytes is over this path's limit of {max_body}")
    body = bytearray(rest[:length])
    while len(body) < length:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("request body took too long")
        sock.settimeout(remaining)
        chunk = sock.recv(min(65536, length - len(body)))
        if not chunk:
            raise ConnectionResetError("peer closed before the end of the request body")
        body += chunk
    return bytes(body)

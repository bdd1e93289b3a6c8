"""The server's side of the opening handshake (RFC 6455 section 4.2), with no socket I/O.

:func:`parse_request` turns the bytes of an HTTP upgrade request into a
:class:`Request` or raises :class:`HandshakeError` with the HTTP status to answer;
:func:`accept_response` and :func:`error_response` build the replies.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Collection, Iterator, Mapping
from typing import Optional
from urllib.parse import parse_qs

from ..exceptions import HandshakeError
from .deflate import Agreement, DeflateOptions, accept_offers

__all__ = [
    "Headers",
    "Request",
    "parse_request",
    "parse_http_request",
    "check_upgrade",
    "is_upgrade",
    "accept_key",
    "offered_subprotocols",
    "is_token",
    "accept_response",
    "negotiate_deflate",
    "error_response",
    "content_response",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# An HTTP token (RFC 7230 3.2.6): what a subprotocol name must be (RFC 6455 4.1).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PCHARS = r"A-Za-z0-9\-._~!$&'()*+,;=:@%"
_ORIGIN_FORM = re.compile(rf"/[{_PCHARS}/]*(?:\?[{_PCHARS}/?]*)?")
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Headers(Mapping[str, str]):
    """HTTP headers with case-insensitive names; a repeated header's values are joined by ", "."""

    def __init__(self, items: Optional[list[tuple[str, str]]] = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in items or ():
            key = name.lower()
            if key in self._items:
                value = self._items[key][1] + ", " + value
            self._items[key] = (name, value)

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({[v for v in self._items.values()]!r})"


class Request:
    """What a client asked for in its handshake.

    Attributes:
        path: the path, without the query string.
        query: the query as ``urllib.parse.parse_qs`` gives it (name to list of values).
        headers: case-insensitive :class:`Headers`.
        remote_address: the peer's ``(host, port)``; ``("", 0)`` (or the peer
            socket's name) on a Unix socket.
        method: the HTTP method (``GET`` for every websocket upgrade).
        body: the request's body: empty but for a POST to an HTTP route
            (``WebSocketServer.add_http``).
    """

    def __init__(
        self, path: str, query: dict[str, list[str]], headers: Headers, remote_address: tuple[str, int], method: str = "GET", body: bytes = b""
    ) -> None:
        self.path = path
        self.query = query
        self.headers = headers
        self.remote_address = remote_address
        self.method = method
        self.body = body

    def __repr__(self) -> str:
        return f"Request(path={self.path!r}, remote_address={self.remote_address!r})"


def parse_request(head: bytes, remote_address: tuple[str, int], max_headers: int = 100) -> Request:
    """Parse and check an upgrade request head (up to and without the blank line)."""
    request = parse_http_request(head, remote_address, max_headers)
    check_upgrade(request.headers)
    return request


def is_upgrade(request: Request) -> bool:
    """True if the request asks for a websocket upgrade at all (valid or not)."""
    return "websocket" in _tokens(request.headers.get("Upgrade", ""))


def parse_http_request(head: bytes, remote_address: tuple[str, int], max_headers: int = 100, methods: Collection[str] = ("GET",)) -> Request:
    """Parse a request head (up to and without the blank line), without the websocket checks.

    A method not in ``methods`` is refused with 405.
    """
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise HandshakeError(400, "request is not HTTP") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HandshakeError(400, "malformed request line")
    method, target, version = parts
    if version != "HTTP/1.1":
        raise HandshakeError(400, f"unsupported HTTP version {version!r}")
    if method not in methods:
        raise HandshakeError(405, f"method {method!r} is not {' or '.join(methods)}")
    if len(lines) - 1 > max_headers:
        raise HandshakeError(431, f"more than {max_headers} header fields")
    items = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise HandshakeError(400, "malformed header line")
        items.append((name, value.strip(" \t")))
    headers = Headers(items)
    # The target of a GET is an absolute path and a query (RFC 7230 5.3.1), in
    # the characters RFC 3986 allows there. It is split by hand: urlsplit would
    # read "//host/x" as a host and a path.
    if not _ORIGIN_FORM.fullmatch(target):
        raise HandshakeError(400, "request target is not an absolute path and query")
    path, _, query = target.partition("?")
    return Request(path, parse_qs(query), headers, remote_address, method)


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def check_upgrade(headers: Headers) -> None:
    """Raise HandshakeError unless the headers make a valid websocket upgrade (RFC 6455 4.2.1)."""
    if "websocket" not in _tokens(headers.get("Upgrade", "")):
        raise HandshakeError(426, "not a websocket upgrade request (no 'Upgrade: websocket')")
    if "upgrade" not in _tokens(headers.get("Connection", "")):
        raise HandshakeError(400, "missing 'Connection: Upgrade'")
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version (13 is required)")
    key = headers.get("Sec-WebSocket-Key", "")
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "missing or invalid Sec-WebSocket-Key")


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def offered_subprotocols(headers: Mapping[str, str]) -> list[str]:
    """The subprotocols a client offers in ``Sec-WebSocket-Protocol``, in its order of preference.

    The header is a comma-separated list of tokens, possibly repeated
    (RFC 6455 4.1, 11.3.4); empty items are skipped. Names are compared
    exactly, as the RFC's registry does.
    """
    return [token for token in (item.strip(" \t") for item in headers.get("Sec-WebSocket-Protocol", "").split(",")) if token]


def is_token(name: object) -> bool:
    """True when ``name`` is a str that is an HTTP token: a valid subprotocol name."""
    return isinstance(name, str) and _TOKEN.fullmatch(name) is not None


def accept_response(request: Request, subprotocol: Optional[str] = None, extensions: Optional[str] = None) -> bytes:
    """The 101 response that completes the handshake, naming the ``subprotocol`` chosen and the agreed
    ``Sec-WebSocket-Extensions``, if any."""
    chosen = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol is not None else ""
    extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.headers['Sec-WebSocket-Key'])}\r\n"
        f"{chosen}"
        f"{extra}"
        "\r\n"
    ).encode("ascii")


def negotiate_deflate(request: Request, options: Optional[DeflateOptions]) -> Optional[tuple[str, Agreement]]:
    """The server's answer to the request's permessage-deflate offers: ``(Sec-WebSocket-Extensions value,
    agreement)``, or None (compression off, nothing offered, or no offer acceptable: see
    :func:`syncws.deflate.accept_offers`)."""
    offers = request.headers.get("Sec-WebSocket-Extensions")
    if options is None or not offers:
        return None
    return accept_offers(offers, options)


def error_response(status: int, reason: str) -> bytes:
    """A complete HTTP error response with a small JSON body, closing the connection."""
    body = json.dumps({"status": status, "error": reason}).encode("utf-8")
    extra = "Sec-WebSocket-Version: 13\r\n" if status == 426 else ""
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii") + body


def content_response(body: bytes, content_type: str) -> bytes:
    """A complete 200 response carrying ``body``, closing the connection."""
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n").encode(
        "ascii"
    ) + body

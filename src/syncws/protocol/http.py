"""Plain HTTP beside the websocket endpoints, with no I/O: a route's response, a request's form and cookies.

A server answers a path added with ``WebSocketServer.add_http`` by calling the
route's function with the :class:`~syncws.protocol.handshake.Request` (its
``method``, ``headers``, ``query`` and, for a POST, its ``body``); the function
returns an :class:`HttpResponse`. This module builds the bytes of that response
and reads what a small form page needs: an urlencoded body and cookies.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Optional
from urllib.parse import parse_qs

from .handshake import Request

__all__ = ["HttpResponse", "form_fields", "request_cookies", "set_cookie"]

_REASONS = {
    200: "OK",
    204: "No Content",
    302: "Found",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


class HttpResponse:
    """What an HTTP route answers: a status, a body and its type, and extra header lines.

    The connection closes after it (``Connection: close``): a server's HTTP
    routes serve a page or a form post now and then, not a stream of requests.
    """

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int = 200, body: bytes = b"", content_type: str = "text/html; charset=utf-8", headers: Optional[list[tuple[str, str]]] = None
    ) -> None:
        if not 100 <= status <= 599:
            raise ValueError(f"HTTP status {status} is out of range")
        self.status = status
        self.body = bytes(body)
        self.content_type = content_type
        self.headers = list(headers or [])

    @classmethod
    def redirect(cls, location: str, status: int = 302, headers: Optional[list[tuple[str, str]]] = None) -> HttpResponse:
        """A redirect to ``location`` (a path on this server, or a URL)."""
        return cls(status, b"", headers=[("Location", location), *(headers or [])])

    def encode(self, head_only: bool = False) -> bytes:
        """The response's bytes (without the body for a HEAD request)."""
        for name, value in self.headers:
            if any(c in name + value for c in "\r\n\0"):
                raise ValueError(f"header {name!r} holds a line break")
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Status')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            *(f"{name}: {value}" for name, value in self.headers),
            "Connection: close",
            "",
            "",
        ]
        head = "\r\n".join(lines).encode("latin-1")
        return head if head_only else head + self.body

    def __repr__(self) -> str:
        return f"HttpResponse(status={self.status}, {len(self.body)} bytes of {self.content_type})"


def form_fields(request: Request) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` POST body; a field given twice keeps its first value.

    Raises ValueError when the body is not UTF-8.
    """
    text = request.body.decode("utf-8")
    return {name: values[0] for name, values in parse_qs(text, keep_blank_values=True).items()}


def request_cookies(request: Request) -> dict[str, str]:
    """The request's cookies by name; a malformed ``Cookie`` header gives none."""
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(request.headers.get("Cookie", ""))
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in cookies.items()}


def set_cookie(
    name: str,
    value: str,
    *,
    max_age: Optional[float] = None,
    path: str = "/",
    http_only: bool = True,
    secure: bool = False,
    same_site: str = "Lax",
) -> tuple[str, str]:
    """A ``Set-Cookie`` header line (name and value) for a cookie, quoted as the standard library quotes it."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[name] = value
    morsel = cookie[name]
    morsel["path"] = path
    morsel["samesite"] = same_site
    if max_age is not None:
        morsel["max-age"] = str(int(max_age))
    if http_only:
        morsel["httponly"] = True
    if secure:
        morsel["secure"] = True
    return "Set-Cookie", morsel.OutputString()

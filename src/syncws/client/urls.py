"""Websocket URLs: checked before anything connects, and what a failed attempt's URL suggests.

:func:`check_url` turns the first mistakes of a new user (``http://`` for
``ws://``, a forgotten scheme, no host, a port out of range) into a
ValueError that says what is wanted, where websocket-client would raise
"scheme http is invalid" from deep inside a connection attempt (and a
RemoteService would retry it until its timeout). :func:`scheme_hint` adds a
hint to a failure that looks like TLS on one side only (``ws://`` to a TLS
server, ``wss://`` to a plain one). :func:`tls_over` wraps a Unix socket in
TLS for ``wss://``.

Threads: none of its own; runs on the thread that connects (or constructs).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any, Optional
from urllib.parse import SplitResult, urlsplit

import websocket

__all__ = ["check_url", "scheme_hint", "tls_over", "WEBSOCKET_SCHEMES"]

#: The schemes of a websocket URL.
WEBSOCKET_SCHEMES = ("ws", "wss")

# A scheme a user may give for a websocket's: the one to give instead.
_INSTEAD = {"http": "ws", "https": "wss"}


def check_url(url: str) -> SplitResult:
    """``url`` split into its parts; ValueError saying what is wanted when it is no ``ws://`` or ``wss://`` URL with a host.

    The port, when given, must be a number from 0 to 65535.
    """
    if not isinstance(url, str):
        raise TypeError(f"a websocket URL is a str, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"{url!r} is not a websocket URL ({exc}): give ws://host:port/path, or wss://... for TLS") from None
    scheme = parts.scheme.lower()
    if scheme not in WEBSOCKET_SCHEMES:
        if scheme in _INSTEAD:
            better = _INSTEAD[scheme] + url[len(scheme) :]
            raise ValueError(f"{url!r} is an {scheme}:// URL; a websocket URL starts with ws:// or wss:// (here {better})")
        raise ValueError(f"{url!r} is not a websocket URL: give ws://host:port/path, or wss://host:port/path for TLS")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host: give {scheme}://host:port/path")
    try:
        parts.port  # noqa: B018  # urlsplit checks the port only when asked for it
    except ValueError as exc:
        raise ValueError(f"{url!r} has a bad port ({exc}): give a number from 0 to 65535") from None
    return parts


def scheme_hint(url: str, exc: BaseException) -> str:
    """A hint to add to a failed connection attempt's message when the URL's scheme looks wrong for the server; "" when none.

    ``ws://`` to a TLS server: the server drops the connection when it reads
    plain HTTP where it expects a TLS handshake. ``wss://`` to a plain
    server: the TLS handshake fails (not a certificate's verification), or
    times out while the server waits for an HTTP request that never comes.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "ws" and isinstance(exc, websocket.WebSocketConnectionClosedException):
        return " (the server closed the connection during the opening handshake: if it serves TLS, use wss://)"
    if scheme == "wss":
        tls_failed = isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLCertVerificationError)
        tls_timed_out = isinstance(exc, TimeoutError) and "handshake" in str(exc)  # ssl's "The handshake operation timed out"
        if tls_failed or tls_timed_out:
            return " (the TLS handshake failed: if the server serves plain ws://, use ws://)"
    return ""


def tls_over(sock: socket.socket, sslopt: Optional[dict[str, Any]], url: str) -> ssl.SSLSocket:
    """``sock`` (a connected Unix socket) wrapped in TLS for a ``wss://`` URL, with websocket-client's ``sslopt``.

    The certificate is checked against the URL's host (``sslopt``'s
    ``server_hostname`` overrides it). websocket-client wraps only sockets it
    opens itself, so this does it the same way (its ``_ssl_socket``: the same
    ``sslopt`` keys, defaults and environment variables as over TCP). The
    TLS handshake is bounded by the socket's timeout.
    """
    wrap = getattr(getattr(websocket, "_http", None), "_ssl_socket", None)
    if wrap is None:  # pragma: no cover  # a websocket-client without it
        raise ValueError("wss:// on a Unix socket needs websocket-client 1.x")
    hostname = urlsplit(url).hostname or "localhost"
    wrapped: ssl.SSLSocket = wrap(sock, dict(sslopt or {}), hostname)
    return wrapped

"""The client side: websocket-client opens the connection, syncws carries the frames.

websocket-client does what it does well (URL parsing, proxies, TLS, headers,
cookies and the opening handshake); the socket it hands over then runs
syncws's :class:`~syncws.connection.Connection`, whose masking and reading are
many times faster than websocket-client's own on large messages. syncws
checks the subprotocol itself (websocket-client would fail a handshake in
which the server picked none, and folds names to lower case), translates
the ``proxy`` URL (:mod:`syncws.proxy`), and connects a Unix domain socket
for websocket-client to shake hands on.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional, Union
from urllib.parse import urlsplit

import websocket

from .. import timeouts
from ..engine.connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Message
from ..exceptions import HandshakeError, NotConnected
from ..protocol.deflate import DeflateOptions, NegotiationError, PerMessageDeflate, check_response, client_offer, resolve
from ..protocol.handshake import is_token, offered_subprotocols
from .proxy import Proxy, proxy_failure, proxy_options
from .urls import check_url, scheme_hint, tls_over

__all__ = ["ClientConnection", "connect"]

logger = logging.getLogger(__name__)


class ClientConnection(Connection):
    """A client's websocket connection.

    ``recv`` belongs to one reader thread at a time; ``send``, ``ping`` and
    ``close`` are safe from any thread.
    """

    def __init__(self, ws: websocket.WebSocket, **options: Any) -> None:
        if ws.sock is None:
            raise NotConnected("websocket-client returned no socket")
        super().__init__(ws.sock, is_client=True, **options)
        # Keep websocket-client's object: it owns the socket's lifetime.
        self._ws = ws
        # Held by the thread inside recv(), so that close() knows whether to read the reply itself.
        self._reading = threading.Lock()
        #: The subprotocol the server chose among those offered (``connect(subprotocols=...)``), or None.
        self.subprotocol: Optional[str] = None

    def recv(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message (str or bytes), or None once the connection is closed.

        ``timeout`` (seconds; None or inf waits forever) bounds the whole
        call, whatever pings or other control frames arrive meanwhile: when it
        passes, TimeoutError is raised and the connection stays usable (what
        arrived of a message is kept for the next call). One reader thread at a time.
        """
        with self._reading:
            return super().recv(timeout)

    def close(self, code: int = 1000, reason: str = "", timeout: Optional[float] = None) -> None:
        """Run the closing handshake and release the socket; waits at most ``close_timeout``.

        Safe from any thread. If another thread is reading, it receives the
        peer's close frame; otherwise this call reads it. ``timeout``
        (seconds), when given, waits that long for the server's close frame
        instead, then drops the connection: for a program that must end
        now (Ctrl-C), whatever the server is busy with.
        """
        limit = timeouts.check_timeout(timeout) if timeout is not None else None
        super().close(code, reason)
        if self._reading.acquire(blocking=False):
            try:
                self._read_to_the_end(limit)
            finally:
                self._reading.release()
        elif not self.wait_closed(self.close_timeout + 1 if limit is None else limit):
            self.abort()  # the reader blocked in recv() returns None
        self.release()

    def _read_to_the_end(self, limit: Optional[float]) -> None:
        """Read up to the server's close frame, discarding data; within ``limit`` seconds (None: ``close_timeout``), else drop the connection."""
        if limit is None:
            while super().recv() is not None:
                pass  # the closing handshake's own deadline (close_timeout) ends this
            return
        deadline = time.monotonic() + limit
        try:
            while super().recv(timeout=max(0.0, deadline - time.monotonic())) is not None:
                pass
        except TimeoutError:
            self.abort()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(
    url: str,
    *,
    timeout: Optional[float] = 10.0,
    header: Union[list[str], dict[str, str], None] = None,
    cookie: Optional[str] = None,
    sslopt: Optional[dict[str, Any]] = None,
    origin: Optional[str] = None,
    max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
    ping_interval: Optional[float] = 20.0,
    ping_timeout: Optional[float] = 20.0,
    send_timeout: Optional[float] = 30.0,
    close_timeout: float = 5.0,
    subprotocols: Optional[Sequence[str]] = None,
    require_subprotocol: bool = False,
    proxy: Proxy = None,
    unix_socket: Union[str, os.PathLike[str], None] = None,
    compression: Union[str, DeflateOptions, None] = None,
) -> ClientConnection:
    """Open a websocket connection to ``url`` (``ws://`` or ``wss://``) and return it.

    ``header``, ``cookie``, ``sslopt`` and ``origin`` are passed to
    websocket-client as it takes them. ``timeout`` bounds each step of
    opening (None or ``math.inf``: no bound); NaN or a negative value raises
    ValueError. Runs on the calling thread.

    ``subprotocols`` are offered in ``Sec-WebSocket-Protocol``, in order of
    preference; the server's choice is the connection's ``subprotocol``
    (None when it chose none, which is accepted unless
    ``require_subprotocol`` is true). ``proxy``: a proxy URL,
    ``http://user:password@host:port`` (HTTP CONNECT) or ``socks5://...``
    (also socks5h, socks4, socks4a; needs ``syncws[socks]``); None (the
    default) uses the http_proxy, https_proxy and no_proxy environment
    variables as websocket-client reads them; False uses no proxy at all.
    ``unix_socket``: reach the server on this Unix domain socket path (the
    URL then gives only the Host header and the path; with ``wss://``, TLS
    runs over the Unix socket and the certificate is checked against the
    URL's host, with ``sslopt`` as over TCP); no proxy then.

    ``compression="deflate"`` (or a :class:`syncws.deflate.DeflateOptions`)
    offers permessage-deflate (RFC 7692); the connection's ``extensions``
    says whether the server took it. None, the default, offers nothing: on
    a LAN, compression costs more time than it saves (docs/tuning.md).

    Raises ValueError, before anything connects, when ``url`` is not a
    ``ws://`` or ``wss://`` URL with a host (``http://...`` included: the
    message says which scheme to give instead). HandshakeError when the
    server answers the handshake with an HTTP
    error: its ``status`` is the HTTP status and its ``reason`` the server's
    error text (the ``error`` of a JSON body, else the body, else the status
    line's words); also when a proxy refuses the tunnel (its HTTP status,
    e.g. 407), and, with status 101, when the server chose a subprotocol
    that was not offered or none where one was required, or answered with
    extensions that break permessage-deflate's rules. NotConnected when the
    server (or the proxy) cannot be reached within ``timeout``; its message
    hints at ``wss://`` when a ``ws://`` handshake was cut off as a TLS
    server does, and at ``ws://`` when a ``wss://`` TLS handshake failed.
    """
    check_url(url)
    limit = timeouts.check_timeout(timeout)  # None: websocket-client blocks
    offered = _check_subprotocols(subprotocols, require_subprotocol)
    deflate_options = resolve(compression)
    options: dict[str, Any] = _handshake_options(limit, header, cookie, origin, offered, deflate_options)
    if unix_socket is not None:
        if proxy:
            raise ValueError("a Unix socket takes no proxy")
        options["socket"] = _unix_connection(os.fspath(unix_socket), limit, url, sslopt)
    else:
        options.update(proxy_options(proxy, limit))
    ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True)
    try:
        ws.connect(url, **options)
    except websocket.WebSocketBadStatusException as exc:
        ws.close()
        # Not str(exc): websocket-client's message carries a dump of every response header.
        body = (exc.resp_body or b"").decode("utf-8", "replace").strip()
        try:
            error = json.loads(body).get("error") if body.startswith("{") else None
        except (ValueError, RecursionError):
            error = None
        reason = error if isinstance(error, str) and error else body or exc.status_message or "refused"
        raise HandshakeError(exc.status_code, str(reason)[:500]) from None
    except Exception as exc:
        ws.close()
        if "socket" in options:
            options["socket"].close()
        failure = proxy_failure(exc, url, proxy)
        if failure is not None:
            raise failure from exc
        if isinstance(exc, (OSError, websocket.WebSocketException)):
            raise NotConnected(f"cannot connect to {url}: {exc}{scheme_hint(url, exc)}") from exc
        raise
    try:
        chosen = _chosen_subprotocol(ws.getheaders() or {}, offered, require_subprotocol)
    except HandshakeError:
        ws.close()
        raise
    deflate = _agreed_deflate(ws, deflate_options)
    connection = ClientConnection(
        ws,
        max_message_size=max_message_size,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        send_timeout=send_timeout,
        close_timeout=close_timeout,
        deflate=deflate,
        name=f"client {url}",
    )
    connection.subprotocol = chosen
    return connection


def _handshake_options(
    limit: Optional[float],
    header: Union[list[str], dict[str, str], None],
    cookie: Optional[str],
    origin: Optional[str],
    offered: list[str],
    deflate_options: Optional[DeflateOptions],
) -> dict[str, Any]:
    """websocket-client's handshake options: the timeout, headers (with the subprotocols and extensions offered), cookie and Origin."""
    # websocket-client sends an Origin header of its own unless told not to;
    # a program is not a browser, so it sends one only when asked to.
    options: dict[str, Any] = {"timeout": limit, "suppress_origin": origin is None}
    extra = [f"Sec-WebSocket-Protocol: {', '.join(offered)}"] if offered else []
    if deflate_options is not None:
        extra.append(f"Sec-WebSocket-Extensions: {client_offer(deflate_options)}")
    if extra:
        lines = [f"{k}: {v}" for k, v in header.items() if v is not None] if isinstance(header, dict) else list(header or [])
        header = [*lines, *extra]
    if header is not None:
        options["header"] = header
    if cookie is not None:
        options["cookie"] = cookie
    if origin is not None:
        options["origin"] = origin
    return options


def _check_subprotocols(subprotocols: Optional[Sequence[str]], required: bool) -> list[str]:
    """The subprotocols to offer, checked; ValueError for a name that cannot go in the header."""
    if isinstance(subprotocols, str):
        raise TypeError("subprotocols must be a list of names, not a str")
    offered = list(subprotocols or ())
    if not all(is_token(name) for name in offered) or len(set(offered)) != len(offered):
        raise ValueError(f"subprotocol names are distinct HTTP tokens (no commas or spaces): {offered!r}")
    if required and not offered:
        raise ValueError("require_subprotocol needs subprotocols to offer")
    return offered


def _chosen_subprotocol(headers: dict[str, str], offered: list[str], required: bool) -> Optional[str]:
    """The subprotocol the server's 101 names (websocket-client's lower-case header names), checked against the offer."""
    value = headers.get("sec-websocket-protocol")
    if value is None:
        if required:
            raise HandshakeError(101, f"the server chose no subprotocol, and one of {', '.join(offered)} is required")
        return None
    chosen = offered_subprotocols({"Sec-WebSocket-Protocol": value})
    if len(chosen) != 1 or chosen[0] not in offered:
        # RFC 6455 4.1: the client fails the connection when the server answers with a protocol it did not offer.
        what = f"offered {', '.join(offered)}" if offered else "offered none"
        raise HandshakeError(101, f"the server chose the subprotocol {value!r}, which the client did not offer ({what})")
    return chosen[0]


def _unix_connection(path: str, limit: Optional[float], url: str, sslopt: Optional[dict[str, Any]]) -> socket.socket:
    """A stream socket connected to the Unix socket at ``path`` (in TLS for ``wss://``), for websocket-client to shake hands on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(limit)
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise NotConnected(f"cannot connect to {url} on the Unix socket {path}: {exc.strerror or exc}") from exc
    if urlsplit(url).scheme.lower() != "wss":
        return sock
    try:
        return tls_over(sock, sslopt, url)
    except (OSError, websocket.WebSocketException) as exc:  # ssl.SSLError is an OSError
        sock.close()
        raise NotConnected(f"cannot connect to {url} on the Unix socket {path}: {exc}{scheme_hint(url, exc)}") from exc


def _agreed_deflate(ws: websocket.WebSocket, options: Optional[DeflateOptions]) -> Optional[PerMessageDeflate]:
    """The codec for what the server's 101 agreed to, or None; HandshakeError (socket closed) when it breaks the rules."""
    response = (ws.getheaders() or {}).get("sec-websocket-extensions")
    try:
        if options is None:
            if response:
                raise NegotiationError(f"the server accepted extensions that were not offered: {response!r}")
            return None
        agreement = check_response(response, options)
    except NegotiationError as exc:
        ws.shutdown()  # failing the connection (RFC 6455 4.1): no closing handshake on a stream we cannot read
        raise HandshakeError(101, f"invalid Sec-WebSocket-Extensions in the server's response: {exc}") from None
    return PerMessageDeflate(agreement, True, options) if agreement is not None else None

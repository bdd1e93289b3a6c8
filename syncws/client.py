"""The client side: websocket-client opens the connection, syncws carries the frames.

websocket-client does what it does well (URL parsing, proxies, TLS, headers,
cookies and the opening handshake); the socket it hands over then runs
syncws's :class:`~syncws.connection.Connection`, whose masking and reading are
many times faster than websocket-client's own on large messages.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Optional, Union

import websocket

from . import timeouts
from .connection import DEFAULT_MAX_MESSAGE_SIZE, Connection, Message
from .deflate import DeflateOptions, NegotiationError, PerMessageDeflate, check_response, client_offer, resolve
from .exceptions import HandshakeError, NotConnected

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

    def recv(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message (str or bytes), or None once the connection is closed.

        ``timeout`` (seconds; None or inf waits forever) bounds the whole
        call, whatever pings or other control frames arrive meanwhile: when it
        passes, TimeoutError is raised and the connection stays usable (what
        arrived of a message is kept for the next call). One reader thread at a time.
        """
        with self._reading:
            return super().recv(timeout)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Run the closing handshake and release the socket; waits at most ``close_timeout``.

        Safe from any thread. If another thread is reading, it receives the
        peer's close frame; otherwise this call reads it.
        """
        super().close(code, reason)
        if self._reading.acquire(blocking=False):
            try:
                while super().recv() is not None:
                    pass  # data after our close frame is discarded
            finally:
                self._reading.release()
        elif not self.wait_closed(self.close_timeout + 1):
            self.abort()
        self.release()

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
    compression: Union[str, DeflateOptions, None] = None,
) -> ClientConnection:
    """Open a websocket connection to ``url`` (``ws://`` or ``wss://``) and return it.

    ``header``, ``cookie``, ``sslopt`` and ``origin`` are passed to
    websocket-client as it takes them. ``timeout`` bounds each step of
    opening (None or ``math.inf``: no bound); NaN or a negative value raises
    ValueError. Runs on the calling thread.

    Raises HandshakeError when the server answers the handshake with an HTTP
    error: its ``status`` is the HTTP status and its ``reason`` the server's
    error text (the ``error`` of a JSON body, else the body, else the status
    line's words). NotConnected when the server cannot be reached within
    ``timeout``.

    ``compression="deflate"`` (or a :class:`syncws.deflate.DeflateOptions`)
    offers permessage-deflate (RFC 7692); the connection's ``extensions``
    says whether the server took it. A server's answer that breaks the
    extension's rules fails the handshake with HandshakeError (status 101).
    None, the default, offers nothing: on a LAN, compression costs more time
    than it saves (docs/tuning.md).
    """
    limit = timeouts.check_timeout(timeout)  # None: websocket-client blocks
    deflate_options = resolve(compression)
    ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True)
    # websocket-client sends an Origin header of its own unless told not to;
    # a program is not a browser, so it sends one only when asked to.
    options: dict[str, Any] = {"timeout": limit, "suppress_origin": origin is None}
    if header is not None or deflate_options is not None:
        options["header"] = _with_offer(header, deflate_options)
    if cookie is not None:
        options["cookie"] = cookie
    if origin is not None:
        options["origin"] = origin
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
    except (OSError, websocket.WebSocketException) as exc:
        ws.close()
        raise NotConnected(f"cannot connect to {url}: {exc}") from exc
    deflate = _agreed_deflate(ws, deflate_options)
    return ClientConnection(
        ws,
        max_message_size=max_message_size,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        send_timeout=send_timeout,
        close_timeout=close_timeout,
        deflate=deflate,
        name=f"client {url}",
    )


def _with_offer(header: Union[list[str], dict[str, str], None], options: Optional[DeflateOptions]) -> Union[list[str], dict[str, str]]:
    """The handshake's extra headers: the caller's, and the permessage-deflate offer if compression is asked for."""
    if options is None:
        return header if header is not None else []
    offer = f"Sec-WebSocket-Extensions: {client_offer(options)}"
    if isinstance(header, dict):
        return [*(f"{name}: {value}" for name, value in header.items() if value is not None), offer]
    return [*(header or []), offer]


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

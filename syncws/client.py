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
    """
    limit = timeouts.check_timeout(timeout)  # None: websocket-client blocks
    ws = websocket.WebSocket(sslopt=sslopt, skip_utf8_validation=True)
    # websocket-client sends an Origin header of its own unless told not to;
    # a program is not a browser, so it sends one only when asked to.
    options: dict[str, Any] = {"timeout": limit, "suppress_origin": origin is None}
    if header is not None:
        options["header"] = header
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
    return ClientConnection(
        ws,
        max_message_size=max_message_size,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        send_timeout=send_timeout,
        close_timeout=close_timeout,
        name=f"client {url}",
    )

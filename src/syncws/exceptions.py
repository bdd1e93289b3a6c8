"""The exceptions of syncws.

Every exception that syncws raises on purpose derives from :class:`SyncWSError`,
and most also derive from the built-in exception a caller would catch anyway::

    SyncWSError
    ├── ProtocolError            a peer broke RFC 6455 (carries the close code)
    │   └── PayloadTooBig        a message over the size limit (close 1009)
    ├── HandshakeError           the opening handshake failed (carries the HTTP status)
    ├── NotConnected             also a ConnectionError: nobody to send to
    ├── ConnectionClosed         also a ConnectionError: the connection went away
    ├── SendTimeout              also a TimeoutError: the peer stopped reading
    ├── RequestTimeout           also a TimeoutError: no reply in time
    ├── RequestCancelled         the caller gave the request up (CancelToken.cancel())
    ├── RequestError             the peer answered with an error status
    ├── ClusterError             the cluster's Redis cannot be reached, or a node is gone
    └── SendUnconfirmed          Redis took a cluster send without confirming it (it may arrive, late)
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = [
    "SyncWSError",
    "ProtocolError",
    "PayloadTooBig",
    "HandshakeError",
    "NotConnected",
    "ConnectionClosed",
    "SendTimeout",
    "RequestTimeout",
    "RequestCancelled",
    "RequestError",
    "ClusterError",
    "SendUnconfirmed",
]


class SyncWSError(Exception):
    """The root of every exception that syncws raises on purpose."""


class ProtocolError(SyncWSError):
    """A peer broke the websocket protocol; ``code`` is the close code to answer with."""

    def __init__(self, reason: str, code: int = 1002) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return f"{self.reason} (close code {self.code})"


class PayloadTooBig(ProtocolError):
    """A message is larger than the connection's ``max_message_size`` (close 1009)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes", 1009)
        self.size = size
        self.limit = limit


class HandshakeError(SyncWSError):
    """The opening handshake failed; ``status`` is the HTTP status that was (or would be) sent.

    On the client side ``reason`` is the server's error text. On the server
    side ``refusal`` names the check that refused it, where one did (``"auth"``,
    ``"origin"``, ``"limit"``, ``"stopping"``, ``"not_found"``), for its counters.
    """

    def __init__(self, status: int, reason: str, refusal: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.refusal = refusal

    @property
    def permanent(self) -> bool:
        """True for a refusal that trying again will not change: a 4xx status other than 408 and 429,
        and a 101 the client could not accept (a subprotocol it did not offer, or none where it required one).

        5xx (503 at a server's connection limit, or while it stops), 408
        (Request Timeout) and 429 (Too Many Requests) are worth retrying.
        """
        return (400 <= self.status < 500 and self.status not in (408, 429)) or self.status == 101

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.reason}"


class NotConnected(SyncWSError, ConnectionError):
    """There is no open connection to send to (no peer on an endpoint, or not registered)."""


class ConnectionClosed(SyncWSError, ConnectionError):
    """The connection closed; ``code`` and ``reason`` are from the close handshake (1006 if none)."""

    def __init__(self, code: int = 1006, reason: str = "", message: Optional[str] = None) -> None:
        super().__init__(message or f"connection closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class SendTimeout(SyncWSError, TimeoutError):
    """A send made no progress within the connection's ``send_timeout``: the peer stopped reading."""


class RequestTimeout(SyncWSError, TimeoutError):
    """No (next part of a) reply arrived within the request's timeout."""

    def __init__(self, call_id: int, cmd: Any, timeout: Optional[float]) -> None:
        super().__init__(f"request {cmd!r} (callId {call_id}) got no reply within {timeout} s")
        self.call_id = call_id
        self.cmd = cmd
        self.timeout = timeout


class RequestCancelled(SyncWSError):
    """The request was given up through its :class:`~syncws.CancelToken` before the whole reply came."""

    def __init__(self, call_id: Optional[int], cmd: Any) -> None:
        where = f" (callId {call_id})" if call_id is not None else ""
        super().__init__(f"request {cmd!r}{where} was cancelled")
        self.call_id = call_id
        self.cmd = cmd


class RequestError(SyncWSError):
    """The peer answered a request with a status other than 200."""

    def __init__(self, status: int, error: str, response: dict[str, Any]) -> None:
        super().__init__(f"request {response.get('cmd')!r} failed with status {status}: {error}")
        self.status = status
        self.error = error
        self.response = response


class ClusterError(SyncWSError):
    """The cluster could not do what was asked: its Redis cannot be reached, or a node is gone."""


class SendUnconfirmed(SyncWSError):
    """A cluster send was written to Redis, but Redis did not confirm it in time (it stalled, or the connection broke).

    Redis may still deliver it, late, to every node that is subscribed when
    it does, each of their connections at most once; or to none. It is not a
    ClusterError, whose sends went nowhere: do not deliver it some other way,
    and sending it again may deliver it twice.
    """

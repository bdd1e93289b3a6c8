"""Ready-made endpoint handlers: echo, broadcast, relay, and a gateway for requests.

They serve ``syncws serve`` and are meant to be used as they are or read as
examples of handler classes. Every ``on_message`` runs on the connection's
own thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from typing import Any, Optional

from ..calls.calls import CancelToken
from ..calls.gateway import DEFAULT_GATEWAY_TIMEOUT, gateway_error, gateway_progress, gateway_reply_messages, gateway_timeout, parse_gateway_request
from ..engine.connection import Message
from ..exceptions import ConnectionClosed, NotConnected, RequestCancelled, RequestError, RequestTimeout, SendTimeout
from ..handlers.handlers import BaseWebSocketHandler, sendWebSocketMessage
from .request_handler import RequestHandler

__all__ = ["EchoHandler", "BroadcastHandler", "RelayHandler", "CallGatewayHandler", "gateway_timeout", "DEFAULT_GATEWAY_TIMEOUT", "MAX_GATEWAY_CALLS"]

logger = logging.getLogger(__name__)


class EchoHandler(BaseWebSocketHandler):
    """Sends every message back as it came: text as text, binary as binary."""

    def on_message(self, message: Message) -> None:
        """Echo (connection thread)."""
        self.write_message(message)


class BroadcastHandler(BaseWebSocketHandler):
    """Sends every message to every connection on the endpoint, the sender included."""

    def on_message(self, message: Message) -> None:
        """Broadcast (connection thread)."""
        sendWebSocketMessage(self.name, message, registry=self.registry)


class RelayHandler(BaseWebSocketHandler):
    """Sends every message to every other connection on the endpoint."""

    def on_message(self, message: Message) -> None:
        """Relay (connection thread)."""
        for handler in self.registry.connections(self.name):
            if handler is not self:
                try:
                    handler.write_message(message)
                except (ConnectionClosed, SendTimeout) as exc:
                    logger.info("relay to %r failed: %s", handler, exc)


#: How many requests one gateway client may have in flight at once; more are answered 429.
MAX_GATEWAY_CALLS = 8

_gateway_threads = itertools.count(1)


class CallGatewayHandler(BaseWebSocketHandler):
    """Lets a client outside the server make requests of the server's peers (``syncws call``).

    The client sends a request as JSON (``{"cmd": ..., ...}``, optionally with
    ``"timeout"`` in seconds: any non-negative number, ``null`` or a huge
    number to wait forever, 60 by default); the gateway runs ``doRequest`` on its
    RequestHandler and sends back the reply as JSON. Bytes data come as a JSON
    header with ``"dataType": "bytes"`` and ``"size"``, then one binary
    message. While a reply in parts arrives, ``{"progress": [received, total]}``
    messages report on it. Errors come back as ``{"status", "error"}``: 400 for
    a bad request (not JSON, no string ``cmd``, a NaN or negative timeout), the
    peer's own status, 502 when the peer's connection closed, 503 when no peer
    is connected, 504 on timeout, 429 past :data:`MAX_GATEWAY_CALLS` requests
    in flight on one connection, and 500 for anything unexpected. The
    format is :mod:`syncws.callformat`'s (its gateway section).

    Threads: each request is forwarded on a thread of its own
    (``syncws-gateway-N``), so the connection's thread reads on while it
    waits: when the client leaves, its calls are cancelled at once (the
    peer's command sees ``current_call().cancelled``), and ``stop(drain=...)``
    waits for the replies still being forwarded.
    """

    def initialize(self, name: Optional[str] = None, request_handler: Optional[RequestHandler] = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Take the RequestHandler to forward requests to (connection thread)."""
        super().initialize(name=name, **kwargs)
        if request_handler is None:
            raise ValueError("CallGatewayHandler needs request_handler=")
        self.request_handler = request_handler
        # Synchronize access to _tokens: one per request being forwarded, cancelled when the client leaves.
        self._gateway_lock = threading.Lock()
        self._tokens: set[CancelToken] = set()

    def on_message(self, message: Message) -> None:
        """Start forwarding one request on its own thread and read on (connection thread)."""
        token = CancelToken()
        with self._gateway_lock:
            full = len(self._tokens) >= MAX_GATEWAY_CALLS
            if not full:
                self._tokens.add(token)
        if full:
            self._send_quietly(gateway_error(429, f"too many requests: at most {MAX_GATEWAY_CALLS} at once on one connection"))
            return
        thread = threading.Thread(target=self._forward_on_thread, args=(message, token), name=f"syncws-gateway-{next(_gateway_threads)}", daemon=True)
        thread.start()

    def on_close(self) -> None:
        """The client left (or the server stops): cancel its calls still in flight (connection thread)."""
        with self._gateway_lock:
            tokens = list(self._tokens)
        for token in tokens:
            token.cancel()
        super().on_close()

    def _forward_on_thread(self, message: Message, token: CancelToken) -> None:
        """Forward one request and send back its reply (a ``syncws-gateway-N`` thread).

        Every request gets an answer while the client is there: an unexpected
        failure here is logged and answered with status 500 rather than left
        unanswered.
        """
        in_flight = getattr(self.server, "in_flight", None)
        try:
            with in_flight() if in_flight is not None else contextlib.nullcontext():
                self._forward(message, token)
        except (ConnectionClosed, SendTimeout) as exc:
            # The client went away (or the server is stopping): nobody to answer.
            logger.info("%s: the reply could not be sent: %s", self.name, exc)
        except RequestCancelled:
            logger.info("%s: the client left; its call was cancelled", self.name)
        except Exception as exc:
            logger.exception("%s: request failed unexpectedly", self.name)
            self._send_quietly(gateway_error(500, f"internal error: {type(exc).__name__}: {exc}"))
        finally:
            with self._gateway_lock:
                self._tokens.discard(token)

    def _forward(self, message: Message, token: CancelToken) -> None:
        try:
            request, timeout = parse_gateway_request(message)
        except (ValueError, TypeError, RecursionError) as exc:
            self.write_message(gateway_error(400, f"bad request: {exc}"))
            return
        cmd = request["cmd"]
        try:
            reply = self.request_handler.doRequest(request, timeout=timeout, progress=self._progress, cancel=token)
        except RequestError as exc:
            self.write_message(gateway_error(exc.status, exc.error, cmd))
            return
        except (NotConnected, RequestTimeout, ConnectionClosed) as exc:
            status = {NotConnected: 503, RequestTimeout: 504}.get(type(exc), 502)
            self.write_message(gateway_error(status, str(exc), cmd))
            return
        except (ValueError, TypeError) as exc:  # doRequest refused the request itself
            self.write_message(gateway_error(400, f"bad request: {exc}", cmd))
            return
        for part in gateway_reply_messages(reply):
            self.write_message(part)

    def _send_quietly(self, message: dict[str, Any]) -> None:
        try:
            self.write_message(message)
        except (ConnectionClosed, SendTimeout) as exc:
            logger.info("%s: the error reply could not be sent: %s", self.name, exc)

    def _progress(self, received: int, total: int) -> None:
        try:
            self.write_message(gateway_progress(received, total))
        except (ConnectionClosed, SendTimeout):
            pass

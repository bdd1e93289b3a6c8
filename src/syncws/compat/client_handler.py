"""What websocket-server's callbacks get as ``client["handler"]``, and the names its API takes from websocket-server.

websocket-server itself is imported here, once, for its ``API`` class and
its constants (:mod:`syncws.compat.websocket_server_api` builds the server on
them); nothing else of it runs.

Layer 6, an edge, as the rest of :mod:`syncws.compat`.

Threads: every method of :class:`WebSocketHandler` is safe from any thread.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any, Optional, Union

from ..engine.connection import Outgoing
from ..protocol.handshake import accept_key

if TYPE_CHECKING:
    from .websocket_server_api import WebsocketServer, _ClientEndpoint


def _import_websocket_server() -> Any:
    # websocket-server calls logging.basicConfig() when imported, which would
    # configure the host program's root logger. Undo exactly what it added.
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    import websocket_server

    for handler in root.handlers[:]:
        if handler not in handlers_before:
            root.removeHandler(handler)
    return websocket_server


websocket_server = _import_websocket_server()

__all__ = ["WebSocketHandler", "Client", "websocket_server", "check_status", "text"]

logger = logging.getLogger("syncws.compat.websocket_server_api")  # one logger for syncws.compat's records: what loglevel sets

#: A client as websocket-server has it: ``{"id": int, "handler": WebSocketHandler, "address": (host, port)}``.
Client = dict[str, Any]

OPCODE_TEXT = websocket_server.OPCODE_TEXT
OPCODE_PONG = websocket_server.OPCODE_PONG
CLOSE_STATUS_NORMAL: int = websocket_server.CLOSE_STATUS_NORMAL
DEFAULT_CLOSE_REASON: bytes = websocket_server.DEFAULT_CLOSE_REASON
#: websocket-server's public methods (names, signatures, defaults), each calling a hook that WebsocketServer supplies.
API: Any = websocket_server.API


def text(reason: Union[str, bytes]) -> str:
    """A close reason as syncws takes it: str (bytes decoded as UTF-8)."""
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason


class WebSocketHandler:
    """What websocket-server's callbacks get as ``client["handler"]``: one per client.

    ``connection`` and ``request`` are the client's socket (a TLS socket with
    ``key`` and ``cert``), ``client_address`` its address, ``server`` the
    server. ``path`` and ``headers`` are the handshake request's (syncws
    adds them). Once the client has left, ``connection`` and ``request`` are
    a plain socket of the handler's own onto the ended connection (see
    :meth:`hold_socket`). Every method is safe from any thread.
    """

    def __init__(self, server: WebsocketServer, endpoint: _ClientEndpoint) -> None:
        self.server = server
        self._endpoint = endpoint
        self.request = self.connection = endpoint.connection.sock
        self.client_address: tuple[str, int] = endpoint.request.remote_address
        self.path: str = endpoint.request.path
        self.headers = endpoint.request.headers
        self.handshake_done = True
        self.valid_client = True
        # Guards _holding: the thread that starts the connection's end and the connection thread may both call hold_socket.
        self._socket_lock = threading.Lock()
        self._holding = False

    @classmethod
    def calculate_response_key(cls, key: str) -> str:
        """The ``Sec-WebSocket-Accept`` value that answers a ``Sec-WebSocket-Key`` (websocket-server's classmethod)."""
        return accept_key(key)

    @classmethod
    def make_handshake_response(cls, key: str) -> str:
        """The 101 response that websocket-server sends for ``key`` (syncws's names an agreed extension or subprotocol too)."""
        return (
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {cls.calculate_response_key(key)}\r\n\r\n"
        )

    @property
    def keep_alive(self) -> bool:
        """True while the client is connected and not let go of; setting it False starts the closing handshake."""
        return not (self._endpoint.terminated or self._endpoint.connection.closed)

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        if not value:
            self._endpoint.close(CLOSE_STATUS_NORMAL, "")

    def send_message(self, message: Union[str, bytes]) -> Optional[bool]:
        """Send a text message (websocket-server's rule: str, or bytes that are UTF-8); False if it is neither.

        Raises syncws.ConnectionClosed once the client has left.
        """
        return self.send_text(message)

    def send_pong(self, message: Union[str, bytes]) -> Optional[bool]:
        """Send an unsolicited pong carrying ``message`` (pings are answered without it)."""
        return self.send_text(message, OPCODE_PONG)

    def send_text(self, message: Union[str, bytes], opcode: int = OPCODE_TEXT) -> Optional[bool]:
        """Send ``message`` as a text frame (or a pong, with ``opcode``); False, with a warning, when it is not text."""
        if isinstance(message, bytes):
            try:
                message = message.decode("utf-8")
            except UnicodeDecodeError:
                logger.warning("Can't send message, message is not valid UTF-8")
                return False
        elif not isinstance(message, str):
            logger.warning("Can't send message, message has to be a string or bytes. Got %s", type(message))
            return False
        if opcode == OPCODE_PONG:
            self._endpoint.connection.pong(message.encode("utf-8"))
        else:
            self._endpoint.write_message(message)
        return None

    def send_close(self, status: int = CLOSE_STATUS_NORMAL, reason: Union[str, bytes] = DEFAULT_CLOSE_REASON) -> None:
        """Start the closing handshake with ``status`` and ``reason``; ValueError for a status outside 1000 to 4999."""
        check_status(status)
        self._endpoint.close(status, text(reason))

    def write_message(self, message: Outgoing, binary: bool = False) -> None:
        """syncws's send: str as text, bytes-like as binary, dict or list as JSON text."""
        self._endpoint.write_message(message, binary)

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        self._endpoint.connection.abort()

    def hold_socket(self) -> None:
        """Make ``connection`` (and ``request``) a socket of this handler's own onto the client's connection.

        Called as the connection starts to end, on whichever thread decided
        that (it returns at once), and again on the connection thread when
        it has ended (then it does nothing). syncws closes its own socket
        object when the connection ends, after shutting the connection down
        both ways; websocket-server's socket stays open as long as its
        handler lives, so that a program's late ``connection.send()`` raises
        BrokenPipeError, not EBADF. The held socket (a duplicate file
        descriptor, plain even under TLS) is closed when this handler is
        garbage-collected. Nothing is written on it: the connection is shut
        down before syncws lets go of its own socket.
        """
        with self._socket_lock:
            if self._holding:
                return
            self._holding = True
            try:
                held = socket.socket(fileno=os.dup(self._endpoint.connection.sock.fileno()))
            except OSError:
                return  # syncws's socket is closed already: nothing to hold
        weakref.finalize(self, held.close)
        self.request = self.connection = held

    def __repr__(self) -> str:
        return f"<WebSocketHandler {self.client_address[0]}:{self.client_address[1]} {self.path!r}>"


def check_status(status: int) -> None:
    """ValueError for a close status outside 1000 to 4999."""
    if not 1000 <= status <= 4999:
        raise ValueError(f"CLOSE status must be between 1000 and 4999, got {status}")

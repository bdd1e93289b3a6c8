"""The closing handshake of one connection (RFC 6455 section 7), and how the connection ends.

:class:`ClosingHandshake` is the part of :class:`syncws.connection.Connection`
that ends it: our close frame with its deadline, the answer to the peer's,
failing the connection after a broken rule (section 7.1.7), and marking it
closed, once, whichever thread learns first. The protocol decides what each
close frame holds; the handshake writes it and keeps the time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from ..exceptions import ConnectionClosed, ProtocolError, SendTimeout
from ..protocol.protocol import Close, CloseCode, Protocol
from .transport import Abort, Transport

__all__ = ["ClosingHandshake"]


class ClosingHandshake:
    """The end of one connection: close frames, the close deadline, the closed flag.

    Args:
        protocol: the connection's protocol.
        transport: the connection's socket.
        send_lock: the connection's send lock (see :class:`~syncws.connection.Connection`).
        close_timeout: how long to wait for the peer's close frame after ours.
        notify: called as ``notify(code, reason)`` whenever a thread learns
            that the connection ends; the connection calls its ``on_closing``
            on the first call only.

    Threads: :meth:`close` and :meth:`abort` are safe from any thread;
    :meth:`answer` and :meth:`fail` belong to the reader thread.
    """

    def __init__(
        self, protocol: Protocol, transport: Transport, send_lock: threading.Lock, *, close_timeout: float, notify: Callable[[int, str], None]
    ) -> None:
        self._protocol, self._io, self._send_lock = protocol, transport, send_lock
        self.close_timeout = close_timeout
        self._notify = notify
        #: When the peer's close frame is due. Written under the send lock just before
        #: protocol.close_sent turns True (see start); the reader reads it only after seeing that flag.
        self.deadline = 0.0
        #: Set once the connection is closed for good. Safe from any thread.
        self.closed = threading.Event()

    def close(self, code: int, reason: str) -> None:
        """Send our close frame unless one went out or the connection is closed. Safe from any thread; returns at once."""
        with self._send_lock:
            if self._protocol.close_sent or self.closed.is_set():
                return
            frame = self.start(code, reason)
        self._notify(code, reason)
        self._write_close(frame)

    def start(self, code: Optional[int], reason: str) -> bytes:
        """Our close frame, from the protocol, with the close deadline set first. Requires the send lock.

        The deadline is set before ``protocol.close_sent`` turns True, so that
        the reader, which checks the deadline once it sees that flag, never
        reads a stale one.
        """
        assert self._send_lock.locked()
        self.deadline = time.monotonic() + self.close_timeout
        return self._protocol.send_close(code, reason)

    def answer(self, event: Close) -> None:
        """The peer's close frame came in: echo it unless ours went out, and mark the connection closed (reader thread)."""
        with self._send_lock:
            answer = not self._protocol.close_sent
            if answer:
                # Section 5.5.1: echo the peer's code (an empty close for none).
                frame = self.start(None if event.code == CloseCode.NO_STATUS_RCVD else event.code, event.reason)
        if answer:
            self._notify(event.code, event.reason)
            self._write_close(frame)
        self.mark_closed(event.code, event.reason)

    def _write_close(self, frame: bytes) -> None:
        """Write our close frame and make the reader wake often enough to keep the close deadline."""
        try:
            # Wake the reader sooner, so that it keeps the close deadline.
            self._io.shorten_tick(max(self.close_timeout / 4, 0.05))
            with self._send_lock:
                self._io.write(frame)
        except (ConnectionClosed, SendTimeout, OSError):
            pass

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (section 7.1.7): send our close frame, wait briefly for the peer's, drop it (reader thread)."""
        with self._send_lock:
            self.deadline = time.monotonic() + self.close_timeout
            frame = self._protocol.fail(code, reason)
        self._notify(code, reason)
        if frame is not None:
            self._write_close(frame)
        self._drain_until_close()

    def _drain_until_close(self) -> None:
        # Discard what the peer still sends until its close frame, so that it
        # reads our close frame instead of a reset (the suite checks this).
        protocol = self._protocol
        try:
            while not self.closed.is_set() and not protocol.discard_until_close():
                protocol.receive_data(self._io.recv_some())
                if time.monotonic() >= self.deadline:
                    raise Abort("close timeout")  # a peer that keeps sending still gets close_timeout, no more
        except ProtocolError:
            # The stream cannot be parsed past the error: drop raw bytes until
            # the peer goes quiet, so that closing with unread input does not
            # turn into a reset that would hide our close frame from the peer.
            protocol.discard_buffer()
            self._io.discard_until_quiet(0.2, self.deadline)
        except (Abort, OSError):
            pass
        self.mark_closed(protocol.close_code or CloseCode.ABNORMAL_CLOSURE, protocol.close_reason)

    def mark_closed(self, code: int, reason: str) -> None:
        """The connection ended (``code`` and ``reason`` unless it was known how already): notify, wake the reader."""
        self._protocol.closed(code, reason)
        self._notify(self._protocol.close_code or code, self._protocol.close_reason)
        if not self.closed.is_set():
            self.closed.set()
            self._io.shutdown()

    def abort(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "") -> None:
        """Drop the connection without a closing handshake (``code`` and ``reason`` recorded here). Safe from any thread."""
        self._protocol.closed(code, reason)
        self._notify(self._protocol.close_code or CloseCode.ABNORMAL_CLOSURE, self._protocol.close_reason)
        self.closed.set()
        self._io.shutdown()

"""How a :class:`~syncws.reactor.stream.Stream` ends: the closing handshake both ways, failing a broken connection, and ``on_closing``.

Mixed into the stream. A peer's close frame and a broken frame are acted on
once the handler has had the messages that came before them, on the lane's
worker, as a thread reading in order would: their replies still reach the
peer, which reads until our close frame (RFC 6455 5.5.1, 7.1.7). Every wait
is bounded by ``close_timeout`` on the loop's timers.

Threads: ``_answer_close`` and ``_fail`` run on the lane's worker;
``_notify_closing`` on whichever thread sees the end first; the rest on the
loop thread.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Callable, Optional

from ..exceptions import ProtocolError
from ..protocol.protocol import Close, CloseCode, Protocol

if TYPE_CHECKING:
    from .loop import IOLoop
    from .send_buffer import SendBuffer
    from .timers import Timer

__all__ = ["StreamClosing"]

logger = logging.getLogger("syncws.reactor.stream")  # its records are the stream's: one logger to configure


class StreamClosing:
    """The ends of a Stream (which mixes it in); the attributes are the stream's (see its ``__init__``)."""

    loop: IOLoop
    protocol: Protocol
    name: str
    close_timeout: float
    on_closing: Optional[Callable[[int, str], None]]
    _lock: threading.Lock
    _out: SendBuffer
    _finished: bool
    _closing_now: bool
    _closing_notified: threading.Lock
    _close_timer: Optional[Timer]
    _quiet_timer: Optional[Timer]
    _failing: bool
    _read_done: bool

    if TYPE_CHECKING:  # the stream's own

        def _write(self, *pieces: bytes) -> None: ...

        def _resume(self) -> None: ...

        def _finish(self, code: int, reason: str) -> None: ...

    def _notify_closing(self, code: int, reason: str) -> None:
        """Call ``on_closing(code, reason)`` once, the moment the connection starts to end (any thread)."""
        if self.on_closing is not None and self._closing_notified.acquire(blocking=False):
            try:
                self.on_closing(code, reason)
            except Exception:
                logger.exception("%s: on_closing failed", self.name)

    def _discard_until_close(self) -> None:
        """After a protocol error: drop what arrives until the peer's close frame, then close (loop thread).

        A stream that cannot be parsed past the error is dropped raw, and the
        socket closed once the peer has been quiet for a moment.
        """
        try:
            if self.protocol.discard_until_close():
                self._finish_after_flush()
            return
        except ProtocolError:
            self.protocol.discard_buffer()
        self.loop.timers.cancel(self._quiet_timer)
        self._quiet_timer = self.loop.timers.call_later(0.2, self._finish_after_flush)

    def _fail(self, error: ProtocolError) -> None:
        """Fail the connection after a broken rule (the lane's worker): our close frame with its code, then (loop thread) discard until the peer's."""
        with self._lock:
            frame = self.protocol.fail(error.code, error.reason) if not self._finished else None
            if frame is not None:
                self._write(frame)
        self._notify_closing(error.code, error.reason)
        self.loop.call_soon(self._discard_after_failing)

    def _discard_after_failing(self) -> None:
        """Section 7.1.7: read on, discarding, until the peer's close frame (or close_timeout), so that the peer
        reads our close frame instead of the reset of a socket closed on unread input (loop thread)."""
        self._failing = True
        self._read_done = False
        self._resume()
        self._discard_until_close()

    def _answer_close(self, event: Close) -> None:
        """Echo the peer's close frame (the lane's worker, after the messages before it), then close the socket once it is written."""
        with self._lock:
            if not self.protocol.close_sent and not self._finished:
                # Section 5.5.1: echo the peer's code and reason (an empty close for none).
                self._write(self.protocol.send_close(event.code if event.code != CloseCode.NO_STATUS_RCVD else None, event.reason))
        self._notify_closing(event.code, event.reason)
        # The server closes the TCP connection first (RFC 6455 7.1.1), once the answer is written.
        self.loop.call_soon(self._finish_after_flush)

    def _finish_after_flush(self) -> None:
        with self._lock:
            empty = not self._out
            self._closing_now = True
        if empty:
            self._finish(self.protocol.close_code or CloseCode.NORMAL_CLOSURE, self.protocol.close_reason)
        else:
            self._arm_close_timer()  # a peer that does not read our answer gets close_timeout, no more

    def _closing(self) -> None:
        """Our close frame is out: read on for the peer's answer (even if the handler is behind), within close_timeout."""
        self._resume()
        self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._finished:
            self._close_timer = self.loop.timers.call_later(self.close_timeout, lambda: self._finish(CloseCode.ABNORMAL_CLOSURE, "closing handshake timed out"))

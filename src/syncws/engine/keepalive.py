"""What a connection's reader does with its idle ticks: keepalive pings, and the close deadline.

The transport calls :meth:`Keepalive.idle` whenever a read waited a tick for
nothing, and the connection calls :meth:`Keepalive.received` after each read
that brought bytes. Both end the read (with :class:`~syncws.transport.Abort`)
when the connection has to go: it was closed meanwhile, the peer's close
frame is overdue, or a keepalive ping went unanswered too long.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

from ..exceptions import ConnectionClosed
from ..protocol.protocol import Protocol
from .closing import ClosingHandshake
from .transport import Abort

__all__ = ["Keepalive"]

logger = logging.getLogger(__name__)


class Keepalive:
    """The reader's clock: when to ping, when to give up on a ping or on the peer's close frame.

    Args:
        protocol: the connection's protocol (``close_sent`` says we are closing).
        closing: the connection's closing handshake (its ``closed`` flag and deadline).
        ping: sends a ping with the given payload (safe from any thread).
        interval: after this many idle seconds, send a ping; None: never.
        timeout: drop the connection if nothing arrives this long after a ping.
        name: used in log lines.

    Reader thread only (``last_received`` and ``ping_sent_at`` are its own).
    """

    def __init__(
        self,
        protocol: Protocol,
        closing: ClosingHandshake,
        ping: Callable[[bytes], None],
        *,
        interval: Optional[float],
        timeout: Optional[float],
        name: str,
    ) -> None:
        self._protocol, self._closing, self._ping = protocol, closing, ping
        self.interval, self.timeout, self.name = interval, timeout, name
        self.last_received = time.monotonic()
        self.ping_sent_at: Optional[float] = None

    def received(self) -> None:
        """Called after each read that brought bytes."""
        self.last_received = now = time.monotonic()
        if self._protocol.close_sent and now >= self._closing.deadline:
            # A peer that keeps sending after our close frame still gets close_timeout, no more.
            raise Abort("close timeout")

    def pong(self) -> None:
        """A pong came in: the peer is alive."""
        self.ping_sent_at = None

    def idle(self) -> None:
        """Called when a read waited a tick for nothing: enforce the close and keepalive deadlines."""
        if self._closing.closed.is_set():
            raise Abort("closed")
        now = time.monotonic()
        if self._protocol.close_sent:
            if now >= self._closing.deadline:
                logger.debug("%s: no close frame from peer within %s s", self.name, self._closing.close_timeout)
                raise Abort("close timeout")
            return
        if self.interval is None:
            return
        if self.ping_sent_at is not None:
            if self.timeout is not None and now - self.ping_sent_at >= self.timeout:
                logger.info("%s: no answer to keepalive ping within %s s; dropping", self.name, self.timeout)
                raise Abort("keepalive timeout")
        elif now - self.last_received >= self.interval:
            self.ping_sent_at = now
            try:
                self._ping(os.urandom(4))
            except (ConnectionClosed, OSError):
                raise Abort("ping failed") from None

"""What a connection could not send at once: :class:`Outbox`, a bounded queue and the thread that writes it out.

A broadcast (``sendWebSocketMessage`` to every connection of a name, a
cluster's send) must not wait on one connection's socket: a client that
stops reading would hold up every client after it by up to ``send_timeout``.
So :meth:`syncws.connection.Connection.send_nowait` writes what the socket
takes at once (the rest of a frame written in part waits in the transport,
ahead of any other write) and queues a message it cannot start here. A
thread of the connection's own (``syncws-outbox-N``), started only while
something waits, writes it all out with the ordinary blocking writes and
ends once nothing waits. When the queue would grow past ``limit`` bytes the
connection is given up on (the overflow hook aborts it).

Order: every write to the connection happens under its send lock, and
whoever holds the lock to send a message writes what waits first
(:meth:`Outbox.take` until empty). So messages reach the peer in the order
they were sent, from whichever thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from typing import Callable, Optional, Union

from .exceptions import ConnectionClosed, SendTimeout

__all__ = ["Outbox", "Item"]

logger = logging.getLogger(__name__)

#: A queued message: ``(opcode, payload, frame)``; ``frame`` is the whole frame when one was made
#: for many connections at once, None when the connection makes it at write time.
Item = tuple[int, Union[bytes, bytearray, memoryview], Optional[bytes]]

_writer_numbers = itertools.count(1)


class Outbox:
    """The messages of one connection waiting for its socket, and their writer thread. Safe from any thread.

    Args:
        drain: writes everything that waits, blocking: it takes the send lock
            itself, writes each item :meth:`take` gives and the transport's
            waiting bytes. Run on the writer thread.
        limit: bytes that may wait; a message that would pass it is not
            queued and ``overflow(bytes)`` is called instead (without any lock).
        name: the connection's name, for log lines.
    """

    def __init__(self, drain: Callable[[], None], limit: int, overflow: Callable[[int], None], name: str) -> None:
        self._drain = drain
        self.limit = limit
        self._overflow = overflow
        self.name = name
        # Synchronize access to _items, _bytes, _writer, _kicked and _dropped. Never held
        # while writing or while taking the send lock.
        self._lock = threading.Lock()
        self._items: deque[Item] = deque()
        self._bytes = 0
        self._writer: Optional[threading.Thread] = None
        self._kicked = False  # something new waits since the writer last looked
        self._dropped = False  # the connection ended: nothing is queued any more

    def __bool__(self) -> bool:
        """True while messages wait or the writer runs: a new message must go behind them.

        A read without the lock: the sender checks again under the send lock.
        """
        return bool(self._items) or self._writer is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages waiting now."""
        with self._lock:
            return self._bytes

    def put(self, item: Item) -> None:
        """Queue ``item`` and make sure the writer runs; ConnectionClosed once the connection ended.

        When the queue would pass its limit, nothing is queued and the
        overflow hook is called.
        """
        size = _size(item)
        with self._lock:
            if self._dropped:
                raise ConnectionClosed(1006, "", f"{self.name} is closed")
            queued = self._bytes + size
            over = queued > self.limit
            if not over:
                self._items.append(item)
                self._bytes = queued
                self._wake()
        if over:
            self._overflow(queued)

    def kick(self) -> None:
        """Make sure the writer runs: bytes wait in the transport (the rest of a frame written in part)."""
        with self._lock:
            if not self._dropped:
                self._wake()

    def take(self) -> Optional[Item]:
        """The oldest waiting message, or None (by the holder of the send lock, who writes it)."""
        with self._lock:
            if not self._items:
                return None
            item = self._items.popleft()
            self._bytes -= _size(item)
            return item

    def drop(self) -> None:
        """The connection ended: forget what waits and queue nothing more. Any thread."""
        with self._lock:
            self._dropped = True
            self._items.clear()
            self._bytes = 0

    def _wake(self) -> None:
        """Note that something waits and start the writer if none runs. Requires _lock."""
        assert self._lock.locked()
        self._kicked = True
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, name=f"syncws-outbox-{next(_writer_numbers)}", daemon=True)
            self._writer.start()

    def _run(self) -> None:
        """Write out what waits until nothing does (a ``syncws-outbox-N`` thread)."""
        while True:
            with self._lock:
                self._kicked = False
            try:
                self._drain()
            except (ConnectionClosed, SendTimeout, OSError) as exc:
                # The write failed and the transport gave the connection up: nothing more goes out.
                logger.debug("%s: waiting messages not sent: %s", self.name, exc)
                self.drop()
            with self._lock:
                if self._dropped or (not self._items and not self._kicked):
                    self._writer = None
                    return


def _size(item: Item) -> int:
    return len(item[2]) if item[2] is not None else len(item[1])

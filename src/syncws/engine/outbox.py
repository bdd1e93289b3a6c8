"""What a connection could not send at once: :class:`Outbox`, a bounded queue and the thread that writes it out.

A broadcast (``sendWebSocketMessage`` to every connection of a name, a
cluster's send) must not wait on one connection's socket: a client that
stops reading would hold up every client after it by up to ``send_timeout``.
So :meth:`syncws.connection.Connection.send_nowait` writes what the socket
takes at once (the rest of a frame written in part waits in the transport,
ahead of any other write) and queues a message it cannot start here. A
thread of the connection's own (``syncws-outbox-N``), started only while
something waits, writes it all out with the ordinary blocking writes and
ends once nothing waits.

When the queue would grow past ``limit`` bytes, the sender waits for room
as long as the peer keeps reading (its writer takes a message at least every
:data:`STALL` seconds), for at most ``burst_wait`` seconds in all: a burst
larger than the queue slows its sender down instead of closing every client
that reads. A peer that reads nothing for :data:`STALL` seconds, or a wait
past ``burst_wait``, gives the connection up (the overflow hook aborts it).

Order: every write to the connection happens under its send lock, and
whoever holds the lock to send a message writes what waits first
(:meth:`Outbox.take` until empty). So messages reach the peer in the order
they were sent, from whichever thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Callable, Optional, Union
from typing import Protocol as TypingProtocol

from ..exceptions import ConnectionClosed, SendTimeout
from ..protocol import frames
from ..protocol.deflate import PerMessageDeflate
from ..protocol.outgoing import Outgoing, encode_message
from ..protocol.protocol import CloseCode, Protocol
from .transport import Transport

__all__ = ["Outbox", "OutboxSending", "Item"]

logger = logging.getLogger(__name__)

#: A queued message: ``(opcode, payload, frame)``; ``frame`` is the whole frame when one was made
#: for many connections at once, None when the connection makes it at write time.
Item = tuple[int, Union[bytes, bytearray, memoryview], Optional[bytes]]

_writer_numbers = itertools.count(1)

#: A sender waiting for room in a full outbox gives the connection up when its writer has taken
#: no message for this long: the peer stopped reading (one that reads makes room sooner).
STALL = 1.0


class Meter(TypingProtocol):
    """What counts a connection's traffic (a server's per-endpoint counters, :mod:`syncws.observe`).

    Called on the thread that receives or sends, with no lock of the
    connection's held: it must be quick and safe from any thread.
    """

    def received(self, message: Union[str, bytes, bytearray, memoryview]) -> None:
        """One message received."""

    def sent(self, size: int) -> None:
        """One message of ``size`` payload bytes sent (or queued to be)."""

    def send_queue_full(self) -> None:
        """The connection was given up because its send queue was full."""


class Outbox:
    """The messages of one connection waiting for its socket, and their writer thread. Safe from any thread.

    Args:
        drain: writes everything that waits, blocking: it takes the send lock
            itself, writes each item :meth:`take` gives and the transport's
            waiting bytes. Run on the writer thread.
        limit: bytes that may wait. A message that would pass it waits for
            room while the peer reads (see the module's docstring); when
            none comes, it is not queued and ``overflow(bytes)`` is called
            instead (without any lock).
        name: the connection's name, for log lines.
        burst_wait: the longest a sender waits for room, in seconds.
    """

    def __init__(self, drain: Callable[[], None], limit: int, overflow: Callable[[int], None], name: str, burst_wait: float = 30.0) -> None:
        self._drain = drain
        self.limit = limit
        self._overflow = overflow
        self.name = name
        self.burst_wait = burst_wait
        # Synchronize access to _items, _bytes, writer, _kicked, _dropped, _taken and _waiting.
        # Never held while writing or while taking the send lock.
        self._lock = threading.Lock()
        # On _lock: a sender waiting for room is woken when a message is taken or the outbox is dropped.
        self._room = threading.Condition(self._lock)
        self._taken = 0  # messages taken so far: a waiting sender sees the peer read
        self._waiting = 0  # senders waiting on _room (take() notifies only when there are some)
        self._items: deque[Item] = deque()
        self._bytes = 0
        #: The writer thread while one runs, else None. Messages wait only while it
        #: runs, so a sender that finds it None may write at once; senders read it
        #: without the lock (an attribute, not a call: broadcasts read it per
        #: connection) and look again under the send lock.
        self.writer: Optional[threading.Thread] = None
        self._kicked = False  # something new waits since the writer last looked
        self._dropped = False  # the connection ended: nothing is queued any more

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages waiting now."""
        with self._lock:
            return self._bytes

    def put(self, item: Item) -> bool:
        """Queue ``item`` and make sure the writer runs; ConnectionClosed once the connection ended.

        When the queue would pass its limit, the calling thread waits for
        room while the peer reads (bounded, see the module's docstring);
        when none comes, nothing is queued and the overflow hook is called.
        Returns whether ``item`` was queued (False: it overflowed).
        """
        size = _size(item)
        with self._lock:
            queued = self._bytes + size
            if queued > self.limit and not self._dropped:
                queued = self._wait_for_room(size)
            if self._dropped:
                raise ConnectionClosed(1006, "", f"{self.name} is closed")
            over = queued > self.limit
            if not over:
                self._items.append(item)
                self._bytes = queued
                self._wake()
        if over:
            self._overflow(queued)
        return not over

    def _wait_for_room(self, size: int) -> int:
        """Wait while the peer reads until ``size`` more bytes fit; the bytes queued with them then. Requires _lock.

        Gives up (returns a total over the limit) when no message was taken
        for :data:`STALL` seconds or after ``burst_wait`` in all; returns at
        once when the outbox is dropped.
        """
        started = progress_at = time.monotonic()
        taken = self._taken
        self._waiting += 1
        try:
            while self._bytes + size > self.limit and not self._dropped:
                if self._taken != taken:
                    taken, progress_at = self._taken, time.monotonic()
                now = time.monotonic()
                left = min(progress_at + STALL, started + self.burst_wait) - now
                if left <= 0:
                    break
                self._room.wait(left)
        finally:
            self._waiting -= 1
        return self._bytes + size

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
            self._taken += 1
            if self._waiting:
                self._room.notify_all()
            return item

    def drop(self) -> None:
        """The connection ended: forget what waits and queue nothing more. Any thread."""
        with self._lock:
            self._dropped = True
            self._items.clear()
            self._bytes = 0
            self._room.notify_all()

    def _wake(self) -> None:
        """Note that something waits and start the writer if none runs. Requires _lock."""
        assert self._lock.locked()
        self._kicked = True
        if self.writer is None:
            self.writer = threading.Thread(target=self._run, name=f"syncws-outbox-{next(_writer_numbers)}", daemon=True)
            self.writer.start()

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
                    self.writer = None
                    return


class OutboxSending:
    """The sending that never waits on the socket, for :class:`syncws.connection.Connection` (which mixes it in).

    :meth:`send_nowait` writes what the socket takes at once and leaves the
    rest to the connection's :class:`Outbox`; whoever holds the send lock to
    write anything writes what waits there first (``_flush_outbox``).
    The attributes below are the connection's.
    """

    name: str
    is_client: bool
    protocol: Protocol
    _io: Transport
    _send_lock: threading.Lock
    _outbox: Outbox
    _deflate: Optional[PerMessageDeflate]
    meter: Optional[Meter]

    def abort(self, code: int, reason: str) -> None:
        """Drop the connection at once: the connection's own (``Connection.abort``)."""
        raise NotImplementedError

    def send_nowait(self, message: Outgoing, binary: bool = False, frame: Optional[bytes] = None) -> None:
        """Send one message without waiting for the socket: what it does not take at once waits. Safe from any thread.

        For broadcasts: a peer that stops reading must not hold up the
        sender. The part of the frame the socket does not take now, and any
        message that cannot start now (another thread is writing, or earlier
        ones wait), wait in this connection's outbox, which a thread of its
        own writes out in order (:mod:`syncws.outbox`). If more than
        ``max_send_queue`` bytes would wait, the calling thread waits while
        the peer reads (up to ``send_timeout``); a peer that reads nothing
        for a second (:data:`syncws.engine.outbox.STALL`) is too slow, and
        the connection is aborted (close code 1008, "send queue full").
        ``frame``: this message's whole frame, made once for many server
        connections (unmasked and uncompressed), used as it is where it
        fits (a connection that compresses makes its own). Raises
        TypeError as :meth:`send` does, and ConnectionClosed once the
        connection is closed or closing.
        """
        opcode, payload = encode_message(message, binary)
        self.send_encoded_nowait(opcode, payload, frame)

    def send_encoded_nowait(self, opcode: int, payload: Union[bytes, bytearray, memoryview], frame: Optional[bytes] = None) -> None:
        """:meth:`send_nowait` for a message encoded already (``encode_message``): a broadcast encodes it once. Any thread."""
        # A shared frame fits only a server connection that sends this message as it is (no mask, no compression).
        if frame is not None and (self.is_client or (self._deflate is not None and self._compresses(opcode, payload))):
            frame = None
        outbox, lock = self._outbox, self._send_lock
        if outbox.writer is None and lock.acquire(False):  # positional: the keyword costs CPython twice the call
            try:
                if outbox.writer is None:  # else a writer started meanwhile: go behind what it writes
                    self.protocol.check_open()
                    if not self._io.write_now(frame if frame is not None else self._frame_of((opcode, payload, None))):
                        outbox.kick()  # the rest of the frame waits in the transport: the writer takes it out
                    if self.meter is not None:
                        self.meter.sent(len(payload))
                    return
            finally:
                lock.release()
        # A message that overflowed the outbox is not sent (the connection is given up): not counted.
        if outbox.put((opcode, payload, frame)) and self.meter is not None:
            self.meter.sent(len(payload))

    def _frame_of(self, item: Item) -> Union[bytes, bytearray, memoryview]:
        """The whole frame of a message from the outbox or send_nowait. Requires the send lock."""
        opcode, payload, frame = item
        if frame is not None:
            return frame
        mask_key = self.protocol.mask_key()
        if self._compresses(opcode, payload):
            # Compressed here, under the send lock, and written before it is let go: in the compressor's order.
            header, payload = self.protocol.compressed_frame(opcode, payload, mask_key)
        else:
            header = frames.encode_header(opcode, len(payload), True, mask_key)
        return header + (frames.masked(payload, mask_key) if mask_key is not None and len(payload) else payload)

    def _compresses(self, opcode: int, payload: Union[bytes, bytearray, memoryview]) -> bool:
        """Whether a message from send_nowait goes compressed (the server's settings decide, as for send)."""
        return self._deflate is not None and self.protocol.compresses(opcode == frames.OP_BINARY, len(payload), None)

    def _flush_outbox(self) -> None:
        """Write every waiting message, in order, and the rest of a frame written in part. Requires the send lock."""
        while True:
            item = self._outbox.take()
            if item is None:
                break
            self.protocol.check_open()
            self._io.write(self._frame_of(item))
        if self._io.pending:
            self._io.write(b"")

    def _drain_outbox(self) -> None:
        """The outbox's writer: take the send lock and write out what waits (a ``syncws-outbox-N`` thread)."""
        with self._send_lock:
            self._flush_outbox()

    def _send_queue_full(self, queued: int) -> None:
        """More than ``max_send_queue`` bytes would wait: the peer is too slow; give it up (any thread)."""
        logger.warning("%s: %d bytes would wait to be sent (max_send_queue %d); closing the connection", self.name, queued, self._outbox.limit)
        if self.meter is not None:
            self.meter.send_queue_full()
        self.abort(CloseCode.POLICY_VIOLATION, "send queue full")


def _size(item: Item) -> int:
    return len(item[2]) if item[2] is not None else len(item[1])

"""The sending half of a connection: whole frames written under the send lock, small ones combined.

:class:`Sending` is mixed into :class:`syncws.engine.connection.Connection`
(as :class:`~syncws.engine.outbox.OutboxSending` is): :meth:`~Sending.send`,
:meth:`~Sending.ping`, :meth:`~Sending.pong`, :meth:`~Sending.send_parts`
and :meth:`~Sending.flush_preamble`, which block until the kernel has the
frame. Every write happens under the connection's send lock, after what
waits in the outbox (``_flush_outbox``, from ``OutboxSending``), so that
each frame goes out whole and messages in the order they were sent. A small
message whose sender finds the lock taken is left to the lock's holder
instead of waiting for it (flat combining: see :meth:`Sending._send_small`).

Threads: every method here is safe from any thread (the callers of a
handler, a RemoteService's workers, the reader answering a ping); the send
lock orders them.

Imports: ``protocol`` (frames, the outgoing encoding, the protocol's sending
half), the base modules, and ``transport`` and ``outbox`` of its own
package for the attributes' types; nothing from ``connection``, which
imports it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Optional, Union

from ..exceptions import ConnectionClosed, SendTimeout
from ..protocol import frames
from ..protocol.deflate import PerMessageDeflate
from ..protocol.outgoing import Outgoing, encode_message
from ..protocol.protocol import Protocol
from .outbox import Meter, Outbox
from .transport import Transport

__all__ = ["Sending"]

logger = logging.getLogger("syncws.engine.connection")  # its records are the connection's: one logger to configure

_COALESCE_LIMIT = 16 * 1024  # below this, header and payload go out in one send()


class Sending:
    """The blocking sends of :class:`syncws.engine.connection.Connection` (which mixes it in). Safe from any thread.

    The attributes below are the connection's (see its docstring for which
    lock guards what); ``_combining`` is this half's own, written under the
    send lock and read without it (see :meth:`_send_small`).
    """

    name: str
    protocol: Protocol
    _io: Transport
    _send_lock: threading.Lock
    _combining: bool
    _outbox: Outbox
    _deflate: Optional[PerMessageDeflate]
    meter: Optional[Meter]

    if TYPE_CHECKING:  # the outbox's own (OutboxSending), mixed into the connection beside this

        def _flush_outbox(self) -> None: ...

    def send(self, message: Outgoing, binary: bool = False, compress: Optional[bool] = None) -> None:
        """Send one message: str as text, bytes-like as binary, a dict or list as JSON text.

        ``binary=True`` sends text (and JSON) as a binary frame of its UTF-8
        bytes. Anything else raises TypeError before anything is sent. Safe
        from any thread; blocks until the frame is handed to the kernel, or,
        for a message under 16 KiB while another thread is writing, to that
        thread, which writes it next with its own (so a failure of that write
        ends the connection without raising here, as one after the kernel
        took the frame would). Raises ConnectionClosed once a close frame was
        sent or the socket is gone, and SendTimeout (after aborting) if the
        peer stopped reading.

        Where permessage-deflate was agreed, ``compress`` says whether this
        message goes compressed: None (the default) compresses text from the
        codec's ``min_size`` up (and binary if its options say so), False
        sends it as it is, True compresses it whatever its kind and size.
        Without the extension it changes nothing.
        """
        opcode, payload = encode_message(message, binary)
        if self._deflate is not None and self.protocol.compresses(opcode == frames.OP_BINARY, len(payload), compress):
            self._send_compressed(opcode, payload)
        else:
            self._send_frame(opcode, payload)
        if self.meter is not None:
            self.meter.sent(len(payload))

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (at most 125 bytes). Safe from any thread."""
        with self._send_lock:
            self._io.write(self.protocol.send_ping(payload))

    def pong(self, payload: bytes = b"") -> None:
        """Send an unsolicited pong (at most 125 bytes; RFC 6455 5.5.3 allows it as a heartbeat). Safe from any thread."""
        if len(payload) > 125:
            raise ValueError("a pong payload holds at most 125 bytes")
        with self._send_lock:
            self.protocol.check_open("pong")
            self._io.write(self.protocol.send_pong(payload))

    def send_parts(self, *parts: Union[bytes, bytearray, memoryview]) -> None:
        """Send one binary message made of ``parts`` put end to end, without joining
        them first where that can be avoided. Safe from any thread.

        Never compressed: this is how the parts of a binary reply go, which are
        bulk data that compression would slow down many times over on a LAN.
        """
        self._send_frame(frames.OP_BINARY, *parts)
        if self.meter is not None:
            self.meter.sent(sum(map(len, parts)))

    def _send_compressed(self, opcode: int, payload: Union[bytes, bytearray, memoryview]) -> None:
        """Compress and send one message under the send lock: with context takeover, messages
        must reach the peer in the order the compressor saw them."""
        mask_key = self.protocol.mask_key()
        with self._send_lock:
            if self._outbox.writer is not None:
                self._flush_outbox()
            header, data = self.protocol.compressed_frame(opcode, payload, mask_key)
            if len(data) < _COALESCE_LIMIT:
                self._io.write(header + (frames.masked(data, mask_key) if mask_key is not None and data else data))
            elif mask_key is not None:
                self._io.write(header)
                self._io.write_masked((data,), mask_key)
            else:
                self._io.write(header)
                self._io.write(data, continuing=True)

    def _send_frame(self, opcode: int, *parts: Union[bytes, bytearray, memoryview]) -> None:
        payload = parts[0] if len(parts) == 1 else None
        length = len(payload) if payload is not None else sum(map(len, parts))
        mask_key = self.protocol.mask_key()
        header = frames.encode_header(opcode, length, True, mask_key)
        if length < _COALESCE_LIMIT:
            # Small: build the whole frame before taking the lock, and send it in one call.
            data = payload if payload is not None else b"".join(parts)
            if mask_key is not None and length:
                data = frames.masked(data, mask_key)
            self._send_small(header + data)
            return
        with self._send_lock:
            self.protocol.check_open()
            if self._outbox.writer is not None:
                self._flush_outbox()
            self._io.write(header)
            if mask_key is not None:
                self._io.write_masked(parts, mask_key)
            else:
                for part in parts:
                    self._io.write(part, continuing=True)

    def _send_small(self, frame: bytes) -> None:
        """Write one whole frame of a small message, or leave it to the thread that holds the send lock. Any thread.

        Many threads sending on one connection (the callers of a
        RequestHandler, the workers of a RemoteService) would each wait for
        the lock while another writes: a sleep and a wake-up per message. A
        sender that finds the lock taken leaves its frame instead
        (``Transport.leave``) and returns; the holder writes what was left
        ahead of its next frame, or, once it lets go of the lock, in
        :meth:`_write_left`. Only a holder that does so (``_combining``) is
        trusted with it; a frame left while another holds the lock is written
        by its sender. Messages still go out in the order each thread sent
        them, and behind anything waiting in the outbox (nothing is left
        while something does).
        """
        lock = self._send_lock
        if not lock.acquire(False):  # positional: the keyword costs CPython twice the call
            self.protocol.check_open()
            if self._outbox.writer is not None or not self._io.leave(frame):
                lock.acquire()
            elif lock.acquire(False):
                frame = b""  # ours waits among the frames left, which the write below takes first
            elif self._combining:
                # Read after our frame was left: that holder looks at the frames left after it lets go.
                return
            else:
                lock.acquire()
                frame = b""
        self._combining = True
        try:
            self.protocol.check_open()
            if self._outbox.writer is not None:
                self._flush_outbox()
            self._io.write(frame)
        finally:
            self._combining = False
            lock.release()
        self._write_left()

    def _write_left(self) -> None:
        """Write the frames other senders left while this thread held the send lock (see :meth:`_send_small`). Any thread.

        The senders have returned already: when the connection is closing or
        the write fails, their frames go with the connection (logged at debug
        level), as a frame still in the socket's buffer would.
        """
        lock = self._send_lock
        while self._io.frames_left and lock.acquire(False):
            self._combining = True
            try:
                self.protocol.check_open()
                self._io.write(b"")
            except (ConnectionClosed, SendTimeout) as exc:
                logger.debug("%s: %d frames left by other senders not sent: %s", self.name, self._io.drop_left(), exc)
            finally:
                self._combining = False
                lock.release()

    def flush_preamble(self) -> None:
        """Write the preamble now if no frame has carried it out yet. Safe from any thread.

        The server registers a connection before its 101 response is out, so
        that a peer that sees the 101 can be sent to at once; a frame written
        in between takes the 101 out ahead of itself, under the send lock.
        """
        with self._send_lock:
            self._io.write(b"")

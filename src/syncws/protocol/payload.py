"""A data frame's payload and a message as they arrive, for :class:`syncws.reader.FrameReader`: where their bytes go.

:class:`DataFrame` is a frame whose header was read and whose payload is
coming: small ones come out of the reader's buffer; a large unfragmented
binary one goes into a ``bytes`` of its own, or, where the reader's
:data:`Placer` takes it, straight into the place it gives
(:class:`PlacedPayload`). :class:`PartialMessage` is a text, fragmented or
compressed message being put together, in an
:class:`~syncws.protocol.assembly.Assembly` (about its own size, however it
comes). No I/O; the reader's thread only.
"""

from __future__ import annotations

import codecs
import io
from typing import Callable, Optional, Union

from ..exceptions import ProtocolError
from . import frames
from .assembly import Assembly, text_width
from .deflate import PerMessageDeflate
from .frames import CloseCode

__all__ = ["Message", "PLACE_PREFIX", "Placer", "PlacedPayload", "NeedData", "DataFrame", "PartialMessage"]

Message = Union[str, bytes]

#: How many bytes of a large binary payload a :data:`Placer` sees before it decides.
PLACE_PREFIX = 32
#: ``placer(prefix, length)``: where the rest of a large unfragmented binary
#: payload of ``length`` bytes whose first :data:`PLACE_PREFIX` bytes
#: (unmasked) are ``prefix`` is to go: a writable view of exactly
#: ``length - PLACE_PREFIX`` bytes, or None to receive the payload as bytes.
Placer = Callable[[bytes, int], Optional[memoryview]]


class PlacedPayload(bytes):
    """A binary message whose payload went straight where a :data:`Placer` said: its bytes are the prefix only.

    ``length`` is the whole payload's; the rest of it, ``length - len(self)``
    bytes, is in the placer's view, unmasked, and the view is released.
    """

    length: int


_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class NeedData(Exception):
    """Raised inside the parser when the buffer ends before what it needs; nothing half-taken is lost."""


class DataFrame:
    """A data frame whose header was taken and whose payload is being read."""

    __slots__ = ("fin", "holder", "key", "length", "offset", "prefix", "target", "unmasked")

    def __init__(self, fin: bool, length: int, key: Optional[bytes]) -> None:
        self.fin = fin
        self.length = length
        self.key = key
        self.offset = 0  # payload bytes read so far
        self.unmasked = 0  # of those, how many are unmasked (large payloads only)
        self.holder: Optional[io.BytesIO] = None  # a large payload's bytes, as they are read
        # Or, where a placer took the payload: the view its bytes after the prefix go into.
        self.target: Optional[memoryview] = None
        self.prefix = b""

    @property
    def large(self) -> bool:
        """Whether the payload is being read into memory of its own (a holder or a placer's view)."""
        return self.holder is not None or self.target is not None

    def destination(self) -> memoryview:
        """A writable view of the rest of the payload, from ``offset`` on (it must be released after use)."""
        if self.target is not None:
            return self.target[self.offset - len(self.prefix) :]
        assert self.holder is not None
        return self.holder.getbuffer()[self.offset :]

    def place(self, buf: bytearray, placer: Placer) -> None:
        """Offer the payload to ``placer`` once its prefix is buffered; where it takes it, read on into its view."""
        if self.length <= PLACE_PREFIX or len(buf) < PLACE_PREFIX:
            return
        prefix = bytes(buf[:PLACE_PREFIX])
        if self.key is not None:
            prefix = frames.masked(prefix, self.key)
        target = placer(prefix, self.length)
        if target is None:
            return
        if len(target) != self.length - PLACE_PREFIX or target.readonly:
            target.release()  # not a place for this payload: it is received as bytes
            return
        del buf[:PLACE_PREFIX]
        self.target, self.prefix = target, prefix
        self.offset = self.unmasked = PLACE_PREFIX

    def take_placed(self, buf: bytearray) -> PlacedPayload:
        """Read the rest of a placed payload, from ``buf`` and the socket, into the placer's view."""
        target, length, key, skip = self.target, self.length, self.key, len(self.prefix)
        assert target is not None
        have = min(len(buf), length - self.offset)
        if have:
            target[self.offset - skip : self.offset - skip + have] = buf[:have]
            del buf[:have]
            self.offset += have
        if key is not None and self.offset > self.unmasked:
            frames.apply_mask(target[self.unmasked - skip : self.offset - skip], frames.key_at(key, self.unmasked))
            self.unmasked = self.offset
        if self.offset < length:
            raise NeedData()
        target.release()
        placed = PlacedPayload(self.prefix)
        placed.length = length
        return placed

    def take_large(self, buf: bytearray) -> bytes:
        """Put a large payload together, from ``buf`` and the socket, in the ``bytes`` object that is returned.

        Fresh memory costs a page fault per 4 KiB on first touch, more than the
        copying itself, so a large message must not pass through a second big
        buffer. ``io.BytesIO`` over a zeroed ``bytes`` lends a writable view of
        that very object (``getbuffer``; see :meth:`FrameReader.payload_buffer`),
        and once the view is released its ``getvalue()`` hands the object out
        without copying (CPython; where it copies instead, the result is the
        same, only slower). Each stretch is unmasked in place as soon as it is
        in, while it is still in the CPU cache.
        """
        length, key = self.length, self.key
        if self.holder is None:
            try:
                self.holder = io.BytesIO(bytes(length))
            except (MemoryError, OverflowError):
                # Only without a max_message_size: a claimed length no memory can hold.
                raise ProtocolError(f"a frame of {length} bytes cannot be held in memory", CloseCode.MESSAGE_TOO_BIG) from None
        with self.holder.getbuffer() as view:
            have = min(len(buf), length - self.offset)
            if have:
                view[self.offset : self.offset + have] = buf[:have]
                del buf[:have]
                self.offset += have
            if key is not None and self.offset > self.unmasked:
                frames.apply_mask(view[self.unmasked : self.offset], frames.key_at(key, self.unmasked))
                self.unmasked = self.offset
        if self.offset < length:
            raise NeedData()
        return self.holder.getvalue()


class PartialMessage(Assembly):
    """A text message, a message in several frames, or a compressed message, as it arrives.

    It is the :class:`~syncws.protocol.assembly.Assembly` its payload is put
    together in, one buffer for all its frames: a message in progress holds
    its payload so far and a constant, however many fragments it came in (a
    list of fragments would cost some 90 bytes per fragment, even an empty
    one), and the message it becomes costs about its own size, not twice it.
    Text is checked as it arrives, so that an invalid byte fails the message
    at once (close 1007), not when the whole of it is in. A compressed
    message is inflated as it arrives, in pieces, never past ``limit``.
    """

    __slots__ = ("decoder", "inflater", "limit")

    def __init__(self, opcode: int, inflater: Optional[PerMessageDeflate] = None, limit: Optional[int] = None) -> None:
        super().__init__()
        self.decoder = _utf8_decoder() if opcode == frames.OP_TEXT else None
        self.inflater = inflater  # set for a compressed message (RSV1 on its first frame)
        self.limit = limit

    def add(self, chunk: Union[bytes, bytearray]) -> None:
        """Add the next stretch of payload, unmasked (inflated here if the message is compressed)."""
        inflater = self.inflater
        if inflater is None:
            self._add_payload(chunk)
        else:
            inflater.inflate_into(chunk, None if self.limit is None else self.limit - self.size, self.size, self._add_payload)

    def _add_payload(self, chunk: Union[bytes, bytearray]) -> None:
        """Append a stretch of the (inflated) payload; a text one checked as UTF-8 first, and its characters counted."""
        decoder = self.decoder
        if decoder is None:
            self.append(chunk)
            return
        # An ASCII stretch is valid UTF-8 unless it ends a character left open before it.
        if chunk.isascii() and not decoder.getstate()[0]:
            self.append(chunk, len(chunk), 0)
            return
        try:
            piece = decoder.decode(chunk)
        except UnicodeDecodeError:
            raise ProtocolError("text message is not valid UTF-8", CloseCode.INVALID_DATA) from None
        # Counted as it arrives: the str is made at its final size once the message is whole.
        self.append(chunk, len(piece), text_width(piece))

    def result(self) -> Message:
        """The whole message, once its last frame is in: ``bytes``, or ``str`` for text (1007 if it ends inside a character)."""
        if self.inflater is not None:
            self.inflater.end_message_into(None if self.limit is None else self.limit - self.size, self.size, self._add_payload)
        if self.decoder is None:
            return self.take_bytes()
        try:
            self.decoder.decode(b"", True)
        except UnicodeDecodeError:
            raise ProtocolError("text message ends inside a UTF-8 character", CloseCode.INVALID_DATA) from None
        return self.take_text()

"""The receiving half of the websocket protocol (RFC 6455), without I/O: bytes in, events out.

:class:`FrameReader` is the frame parser that :class:`syncws.protocol.Protocol`
owns: frame headers and their checks, unmasking, fragmentation, UTF-8 of text
messages (checked as it arrives), control frames and the message size limit,
decided from the headers before a payload is read. It keeps no state of the
connection but what it reads: the owner tells it when data messages are to
be dropped (:attr:`FrameReader.drop_messages`) and hears of the peer's close
frame through ``on_close``.

A large payload can skip the receive buffer: while :meth:`FrameReader.payload_buffer`
returns a writable view, the pump may ``recv_into`` it and report the count with
:meth:`FrameReader.payload_received`; the message then reaches the application in
the very ``bytes`` object that the socket wrote into.

A large binary payload may also go straight where its owner says
(:attr:`FrameReader.placer`); the payload being read and the message being
put together are :mod:`syncws.payload`'s (and :mod:`syncws.protocol.assembly`'s,
which makes a large message cost about its own size). This module also holds what the
reader hands out (the events; the close codes are :mod:`syncws.frames`');
:mod:`syncws.protocol` re-exports them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

from ..exceptions import PayloadTooBig, ProtocolError
from . import frames
from .deflate import PerMessageDeflate
from .frames import CloseCode
from .payload import PLACE_PREFIX, DataFrame, Message, NeedData, PartialMessage, Placer

__all__ = ["FrameReader", "CloseCode", "Ping", "Pong", "Close", "Event", "Message"]

_LARGE_PAYLOAD = 64 * 1024  # an unfragmented binary payload this large may be read straight into its bytes
_EXTENDED_LENGTH = {126: 2, 127: 8}  # bytes of extended payload length after these length codes


class Ping(NamedTuple):
    """A ping arrived; answer it with :meth:`syncws.protocol.Protocol.send_pong`."""

    payload: bytes


class Pong(NamedTuple):
    """A pong arrived."""

    payload: bytes


class Close(NamedTuple):
    """The peer's close frame arrived (``code`` 1005 when it had none).

    Unless ours went out first, the pump answers with :meth:`~syncws.protocol.Protocol.send_close`
    and the same code (section 5.5.1).
    """

    code: int
    reason: str


Event = Union[str, bytes, Ping, Pong, Close]


class FrameReader:
    """The frame parser of one side of a connection: received bytes in, events out.

    Args:
        is_client: True on the client side: frames received must not be
            masked (and must be, on a server).
        max_message_size: a larger message is refused with 1009, decided from
            the frame headers before its payload is read; None for no limit.
        on_close: called as ``on_close(code, reason)`` when the peer's close
            frame is parsed, before its event is returned.
        deflate: the permessage-deflate codec when the handshake agreed on
            it: a data message whose first frame has RSV1 set is inflated
            (its size limit counts the inflated bytes); None: RSV1 is an error.

    One reader thread at a time, but for :attr:`drop_messages`, which the
    owner sets from its sending side.
    """

    def __init__(
        self, is_client: bool, max_message_size: Optional[int], on_close: Callable[[int, str], None], deflate: Optional[PerMessageDeflate] = None
    ) -> None:
        self.is_client = is_client
        self.max_message_size = max_message_size
        self.deflate = deflate
        self._allowed_rsv = frames.RSV1 if deflate is not None else 0
        #: Set (once, never cleared) when our close frame went out: data messages are dropped from then on (section 1.4).
        self.drop_messages = False
        self._on_close = on_close
        self._buffer = bytearray()
        self._frame: Optional[DataFrame] = None  # a data frame being read
        self._message: Optional[PartialMessage] = None  # a message being put together
        #: Where large unfragmented binary payloads may go instead of bytes of
        #: their own (see :data:`Placer`): set by the owner, from any thread; a
        #: payload is offered once, when its prefix is in.
        self.placer: Optional[Placer] = None
        #: The largest data message handed out (past the small-frame shortcut) since the owner set this to 0.
        self.largest_message = 0

    def receive_data(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Add bytes that came off the socket."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """How many received bytes are not parsed yet."""
        return len(self._buffer)

    def next_event(self) -> Optional[Event]:
        """The next event, or None when more bytes are needed. Raises ProtocolError for a broken rule.

        A data message comes as str (text) or bytes (binary); control frames as
        Ping, Pong and Close. Data that arrives once :attr:`drop_messages`
        is set is dropped. After a ProtocolError, the owner fails the
        connection and calls :meth:`reset`.
        """
        if self._frame is None and not self._buffer:
            return None  # a frame header comes next, and nothing is buffered: the common case between messages
        try:
            while True:
                if self._frame is None and self._message is None:
                    message = self._small_message()
                    if message is not None:
                        return message
                frame = self._frame or self._next_frame()
                if not isinstance(frame, DataFrame):
                    return frame  # a control event
                payload = self._read_payload(frame)
                self._frame = None
                if not frame.fin:
                    continue
                message = self._finish_message(payload)
                if not self.drop_messages:
                    return message
        except NeedData:
            return None

    def payload_buffer(self) -> Optional[memoryview]:
        """A writable view where the next bytes of a large payload belong, or None.

        While a large unfragmented binary payload is being read and nothing of
        it is buffered, the pump may read from the socket straight into this
        view (one copy less) and then call :meth:`payload_received`. The view
        must be released before the next call to :meth:`next_event`.
        """
        frame = self._frame
        if frame is None or not frame.large or self._buffer:
            return None
        return frame.destination()

    def payload_received(self, count: int) -> None:
        """``count`` bytes were written into the view of :meth:`payload_buffer`."""
        assert self._frame is not None
        self._frame.offset += count

    def _small_message(self) -> Optional[Message]:
        """The next message if it is one small whole frame already buffered, else None (nothing taken).

        A shortcut past the general path for what most traffic is; it accepts
        only frames that path would accept too (FIN set, no RSV bits but a
        negotiated RSV1, text or binary, the right mask bit, under 126 bytes)
        and leaves all else to it.
        """
        buf = self._buffer
        if len(buf) < 2 or self.drop_messages:
            return None
        b1, b2 = buf[0], buf[1]
        length = b2 & 0x7F
        if b1 != 0x81 and b1 != 0x82 and not ((b1 == 0xC1 or b1 == 0xC2) and self.deflate is not None):
            return None
        if length > 125 or bool(b2 & 0x80) == self.is_client:
            return None
        if self.max_message_size is not None and length > self.max_message_size:
            return None
        payload: Union[bytes, bytearray]
        if self.is_client:
            if len(buf) < 2 + length:
                return None
            payload = buf[2 : 2 + length]
            del buf[: 2 + length]
        else:
            if len(buf) < 6 + length:
                return None
            payload = frames.masked(buf[6 : 6 + length], bytes(buf[2:6]))
            del buf[: 6 + length]
        if b1 & 0x40:  # RSV1: compressed (checked above: only with permessage-deflate agreed)
            assert self.deflate is not None
            payload = self.deflate.inflate_whole(payload, self.max_message_size)
        if b1 & 0x0F == 0x2:  # binary
            return bytes(payload)
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("text message is not valid UTF-8", CloseCode.INVALID_DATA) from None

    def _next_frame(self) -> Union[DataFrame, Ping, Pong, Close]:
        """Take the next frame header: a data frame to read the payload of, or a whole control frame's event."""
        partial = self._message
        fin, opcode, length, key, compressed = self._take_header(partial.size if partial is not None else 0)
        if opcode >= 8:
            return self._control(opcode, bytes(self._take_payload(length, key)))
        if opcode == frames.OP_CONTINUATION:
            if partial is None:
                self._skip_buffered(length)
                raise ProtocolError("continuation frame without a message to continue")
        elif partial is not None:
            self._skip_buffered(length)
            raise ProtocolError("new data frame inside a fragmented message")
        elif opcode == frames.OP_TEXT or not fin or compressed:
            # Text is checked as it arrives; a message in parts is put together in one buffer;
            # a compressed one is inflated as it arrives (check_header allowed RSV1 on text and binary only).
            self._message = PartialMessage(opcode, self.deflate if compressed else None, self.max_message_size)
        self._frame = DataFrame(fin, length, key)
        return self._frame

    def _control(self, opcode: int, payload: bytes) -> Union[Ping, Pong, Close]:
        if opcode == frames.OP_PING:
            return Ping(payload)
        if opcode == frames.OP_PONG:
            return Pong(payload)
        code, reason = frames.parse_close(payload)
        self._on_close(code, reason)
        return Close(code, reason)

    def _take_header(self, message_size: Optional[int]) -> tuple[bool, int, int, Optional[bytes], int]:
        """Take a checked frame header off the buffer: ``(fin, opcode, payload length, mask key or None, RSV1 bit)``.

        ``message_size`` is the size of the message so far, for the size
        limit; None skips the limit (frames that are only being dropped).

        Nothing is taken until the whole header is buffered (and, for a control
        frame, its payload too), so that the parser can stop anywhere.
        """
        buf = self._need(2)
        header = frames.parse_header(buf[0], buf[1])
        try:
            frames.check_header(header, not self.is_client, self._allowed_rsv)
        except ProtocolError:
            self._skip_buffered_frame(header)
            raise
        extra = _EXTENDED_LENGTH.get(header.length_code, 0)
        size = 2 + extra + (4 if header.masked else 0)
        buf = self._need(size)
        length = header.length_code if not extra else int.from_bytes(buf[2 : 2 + extra], "big")
        if length >> 63:
            raise ProtocolError("64-bit payload length with the high bit set")
        if header.opcode >= 8:
            buf = self._need(size + length)
        key = bytes(buf[size - 4 : size]) if header.masked else None
        del buf[:size]
        limit = self.max_message_size
        if limit is not None and message_size is not None and header.opcode < 8 and message_size + length > limit:
            # Decided from the header alone: the payload is never read.
            raise PayloadTooBig(message_size + length, limit)
        return header.fin, header.opcode, length, key, header.rsv & frames.RSV1

    def _read_payload(self, frame: DataFrame) -> Union[bytes, bytearray, None]:
        """A data frame's payload: returned when it is a whole binary message, else added to the message."""
        message = self._message
        if message is None:
            if not frame.large and (frame.length < _LARGE_PAYLOAD or frame.length <= len(self._buffer)):
                return self._take_payload(frame.length, frame.key)
            if not frame.large and self.placer is not None:
                if len(self._buffer) < PLACE_PREFIX:
                    raise NeedData()  # the payload is large: its prefix is on the way
                frame.place(self._buffer, self.placer)
            if frame.target is not None:
                return frame.take_placed(self._buffer)
            return frame.take_large(self._buffer)
        buf = self._buffer
        while frame.offset < frame.length:
            if not buf:
                raise NeedData()
            chunk = buf[: frame.length - frame.offset]
            del buf[: len(chunk)]
            if frame.key is not None:
                frames.apply_mask(chunk, frames.key_at(frame.key, frame.offset))
            message.add(chunk)
            frame.offset += len(chunk)
        return None

    def _finish_message(self, payload: Union[bytes, bytearray, None]) -> Message:
        message, self._message = self._message, None
        if message is None:
            assert payload is not None
            self.largest_message = max(self.largest_message, len(payload))  # a PlacedPayload's prefix: the rest is its owner's
            return payload if isinstance(payload, bytes) else bytes(payload)  # a PlacedPayload as it is
        self.largest_message = max(self.largest_message, message.size)
        return message.result()

    def _need(self, n: int) -> bytearray:
        if len(self._buffer) < n:
            raise NeedData()
        return self._buffer

    def _take_payload(self, length: int, key: Optional[bytes]) -> bytearray:
        buf = self._need(length)
        payload = buf[:length]
        del buf[:length]
        if key is not None:
            frames.apply_mask(payload, key)
        return payload

    def _skip_buffered_frame(self, header: frames.FrameHeader) -> None:
        """Drop a refused frame (header not yet taken) if all of it is buffered already.

        Failing a connection, we still want to read the peer's close frame that
        follows, and that needs the stream in step. What is not buffered is not
        waited for: a hostile peer may never send it.
        """
        buf = self._buffer
        extra = _EXTENDED_LENGTH.get(header.length_code, 0)
        if len(buf) < 2 + extra:
            return
        length = header.length_code if not extra else int.from_bytes(buf[2 : 2 + extra], "big")
        total = 2 + extra + (4 if header.masked else 0) + length
        if len(buf) >= total:
            del buf[:total]

    def _skip_buffered(self, length: int) -> None:
        """Drop a refused frame's payload if all of it is buffered already (see _skip_buffered_frame)."""
        if len(self._buffer) >= length:
            del self._buffer[:length]

    def discard_until_close(self) -> Optional[bool]:
        """After failing the connection: drop frames until the peer's close frame.

        True once it came, None when more bytes are needed; raises
        ProtocolError when the stream cannot be parsed (then only dropping
        raw bytes is left, see :meth:`discard_buffer`).
        """
        buf = self._buffer
        try:
            while True:
                frame = self._frame  # a frame whose payload is being dropped
                if frame is not None:
                    dropped = min(frame.length - frame.offset, len(buf))
                    del buf[:dropped]
                    frame.offset += dropped
                    if frame.offset < frame.length:
                        raise NeedData()
                    self._frame = None
                _, opcode, length, key, _ = self._take_header(None)  # dropped: no size limit
                if opcode == frames.OP_CLOSE:
                    self._control(opcode, bytes(self._take_payload(length, key)))
                    return True
                self._frame = DataFrame(True, length, None)
        except NeedData:
            return None

    def discard_buffer(self) -> None:
        """Drop whatever is buffered."""
        self._buffer.clear()

    def reset(self) -> None:
        """Forget the frame and the message in progress (the connection is being failed)."""
        self._frame = self._message = None  # a message's memory map, if it grew one, is unmapped as it goes
        if self.deflate is not None:
            self.deflate.reset_receiving()

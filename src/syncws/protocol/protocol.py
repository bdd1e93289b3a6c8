"""The websocket protocol (RFC 6455) without I/O: bytes in, events out, frames to send.

:class:`Protocol` is the whole of the protocol's rules, as python-websockets'
``Protocol`` and wsproto are: frame headers and their checks, masking,
fragmentation, UTF-8 of text messages (checked as it arrives), control
frames, the closing handshake and its codes, and the message size limit.
It never touches a socket and never waits; :class:`syncws.connection.Connection`
is the pump that feeds it what the socket gives and writes what it returns.
So every rule is tested on plain bytes (tests/test_protocol.py). The receiving
half, the frame parser, is :class:`syncws.reader.FrameReader` (``protocol.reader``);
this class keeps the state of the connection and builds the frames it sends.

Receiving (one reader thread at a time)::

    protocol.receive_data(data)          # bytes that came off the socket
    event = protocol.next_event()        # a message (str or bytes), Ping, Pong, Close, or None: more bytes needed

A large payload can skip the receive buffer: while :meth:`Protocol.payload_buffer`
returns a writable view, the pump may ``recv_into`` it and report the count with
:meth:`Protocol.payload_received`; the message then reaches the application in
the very ``bytes`` object that the socket wrote into.

Sending (under one lock held by the caller, the pump's send lock): the
``send_*`` methods check the state and return the bytes of the frame to write.

What the protocol itself must answer (a pong, the echo of a close frame, the
close frame that fails the connection) it does not send: the pump asks for it
with :meth:`Protocol.send_pong` and :meth:`Protocol.send_close`, and
:meth:`Protocol.fail` after a :class:`~syncws.exceptions.ProtocolError`.
"""

from __future__ import annotations

import enum
from typing import Optional, Union

from ..exceptions import ConnectionClosed
from . import frames
from .deflate import PerMessageDeflate
from .reader import Close, CloseCode, Event, FrameReader, Message, Ping, Pong

__all__ = ["Protocol", "State", "CloseCode", "Ping", "Pong", "Close", "Event", "Message"]


class State(enum.IntEnum):
    """Where a connection is in its life (RFC 6455 section 4 and 7)."""

    OPEN = 1  #: messages flow both ways
    CLOSING = 2  #: a close frame went out or came in; the closing handshake is under way
    CLOSED = 3  #: both close frames were exchanged, or the connection was lost


# Module constants for the checks on every send: looking an Enum member up on its class
# costs about 80 ns on Python 3.11, a global 13.
_CLOSED = State.CLOSED


class Protocol:
    """One side of a websocket connection, after the opening handshake.

    Args:
        is_client: True on the client side: frames sent are masked, frames
            received must not be (and the reverse on a server).
        max_message_size: a larger message is refused with 1009, decided from
            the frame headers before its payload is read (for a compressed
            message, as it is inflated); None for no limit.
        deflate: the permessage-deflate codec, when the handshake agreed on
            it (RFC 7692): compressed messages are accepted (RSV1 on their
            first frame) and :meth:`compressed_frame` may be used to send.

    The receiving methods belong to one reader thread at a time; the sending
    methods must be called under one lock (the pump's send lock). ``state``,
    ``close_code`` and ``close_reason`` may be read from any thread.
    ``close_code`` and ``close_reason`` are set once, by the first thread that
    learns how the connection ends (the reader on a close frame or a broken
    rule, any thread through :meth:`closed` on an abort); when two learn it at
    once, either account may stand, and both are true.
    """

    def __init__(self, is_client: bool, max_message_size: Optional[int] = None, deflate: Optional[PerMessageDeflate] = None) -> None:
        self.is_client = is_client
        #: The permessage-deflate codec, or None without compression.
        self.deflate = deflate
        #: OPEN, CLOSING or CLOSED. Written under the pump's send lock (see the send_* methods).
        self.state = State.OPEN
        #: The close code and reason once known: the peer's close frame, or ours when we fail
        #: the connection; 1006 when it ended without a close frame.
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self.close_sent = False  # our close frame went out (written under the send lock)
        self.close_received = False  # the peer's close frame came in (reader only)
        #: The frame parser, the receiving half: the reader thread's. The pump calls it
        #: directly; the receiving methods below hand each call on to it.
        self.reader = FrameReader(is_client, max_message_size, self._close_received, deflate)

    @property
    def max_message_size(self) -> Optional[int]:
        """The largest message accepted (None: no limit)."""
        return self.reader.max_message_size

    # ------------------------------------------------------------------ receiving (reader thread)

    def receive_data(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Add bytes that came off the socket."""
        self.reader.receive_data(data)

    def receive_eof(self) -> None:
        """The socket ended: the connection is closed (1006 unless a close frame came first)."""
        if self.close_code is None:
            self.close_code, self.close_reason = CloseCode.ABNORMAL_CLOSURE, ""
        self.state = State.CLOSED

    @property
    def buffered(self) -> int:
        """How many received bytes are not parsed yet."""
        return self.reader.buffered

    def next_event(self) -> Optional[Event]:
        """The next event, or None when more bytes are needed. Raises ProtocolError for a broken rule.

        A data message comes as str (text) or bytes (binary); control frames as
        Ping, Pong and Close. Data that arrives after our close frame is
        dropped (section 1.4). After a ProtocolError, call :meth:`fail`.
        """
        return self.reader.next_event()

    def payload_buffer(self) -> Optional[memoryview]:
        """A writable view where the next bytes of a large payload belong, or None (see :meth:`FrameReader.payload_buffer`)."""
        return self.reader.payload_buffer()

    def payload_received(self, count: int) -> None:
        """``count`` bytes were written into the view of :meth:`payload_buffer`."""
        self.reader.payload_received(count)

    def discard_until_close(self) -> Optional[bool]:
        """After failing the connection: drop frames until the peer's close frame (see :meth:`FrameReader.discard_until_close`)."""
        return self.reader.discard_until_close()

    def discard_buffer(self) -> None:
        """Drop whatever is buffered."""
        self.reader.discard_buffer()

    def _close_received(self, code: int, reason: str) -> None:
        """The reader parsed the peer's close frame (reader thread)."""
        self.close_received = True
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    # ------------------------------------------------------------------ sending (under the send lock)

    def check_open(self, what: str = "send") -> None:
        """Raise ConnectionClosed unless messages may still be sent."""
        if self.close_sent or self.state is _CLOSED:
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason, f"cannot {what}: the connection is closing")

    def mask_key(self) -> Optional[bytes]:
        """A fresh mask key for the next frame on a client, None on a server."""
        return frames.mask_keys.next() if self.is_client else None

    def compresses(self, binary: bool, length: int, compress: Optional[bool]) -> bool:
        """Whether to send a message compressed: ``compress`` True or False decides (if compression
        was agreed and can be used); None leaves it to the codec's defaults (text from ``min_size`` bytes)."""
        deflate = self.deflate
        if deflate is None or compress is False or not deflate.can_compress:
            return False
        return compress is True or deflate.wants(binary, length)

    def compressed_frame(self, opcode: int, payload: frames.Buffer, mask_key: Optional[bytes]) -> tuple[bytes, bytes]:
        """The header (RSV1 set) and the compressed, still unmasked, payload of one whole message.

        Requires the send lock, and that the frame goes out before the lock is
        released: with context takeover, each message refers to those compressed
        before it, so they must reach the peer in the order they were compressed.
        """
        assert self.deflate is not None
        self.check_open()
        data = self.deflate.compress(payload)
        return frames.encode_header(opcode, len(data), True, mask_key, frames.RSV1), data

    def send_pong(self, payload: bytes) -> bytes:
        """The pong frame that answers a ping with ``payload``."""
        return frames.encode_frame(frames.OP_PONG, payload, mask_key=self.mask_key())

    def send_ping(self, payload: bytes) -> bytes:
        """A ping frame (at most 125 bytes)."""
        if len(payload) > 125:
            raise ValueError("a ping payload holds at most 125 bytes")
        self.check_open("ping")
        return frames.encode_frame(frames.OP_PING, payload, mask_key=self.mask_key())

    def send_close(self, code: Optional[int] = CloseCode.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """Our close frame (empty for ``code`` None); from now on no message may be sent.

        Raises ConnectionClosed if ours went out already. After the peer's
        close frame came in, this is the answer that ends the handshake.
        """
        if self.close_sent:
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason, "close frame already sent")
        self.close_sent = True
        self.reader.drop_messages = True
        self.state = State.CLOSED if self.close_received else State.CLOSING
        return frames.encode_frame(frames.OP_CLOSE, frames.encode_close(code, reason), mask_key=self.mask_key())

    def fail(self, code: int, reason: str) -> Optional[bytes]:
        """Fail the connection (section 7.1.7) after a broken rule: the close frame to send, or None when ours went out already."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.reader.reset()
        return None if self.close_sent else self.send_close(code, reason)

    def closed(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "") -> None:
        """The pump gave up on the connection (lost, aborted, or out of time): mark it CLOSED."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.state = State.CLOSED

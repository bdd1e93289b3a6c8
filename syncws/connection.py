"""One websocket connection over a connected socket: the read loop and a thread-safe send.

The same :class:`Connection` serves both sides: the server runs one per accepted
socket on that socket's own thread, and :func:`syncws.connect` wraps the socket
that websocket-client opened and shook hands on.

Threads:

* :meth:`Connection.recv` belongs to one *reader* thread at a time (the server's
  connection thread, or the client's owner). It reassembles fragments, answers
  pings, runs the closing handshake and enforces the size limit and keepalive.
* :meth:`Connection.send`, :meth:`Connection.ping` and :meth:`Connection.close`
  are safe from any thread. A lock makes each frame go out whole and in order.

Every socket call carries a timeout of a few seconds (the *tick*). A read that
times out is not an error: it is when the reader checks its keepalive and close
deadlines. A write that makes no progress for ``send_timeout`` seconds is: the
peer stopped reading, so the connection is aborted rather than letting one
stuck peer block its senders forever.
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional, TypeVar, Union

from . import frames, timeouts
from .exceptions import ConnectionClosed, PayloadTooBig, ProtocolError, SendTimeout

__all__ = ["Connection", "Message", "Outgoing", "encode_message", "DEFAULT_MAX_MESSAGE_SIZE"]

logger = logging.getLogger(__name__)

Message = Union[str, bytes]
#: What ``send`` takes: str (text), a bytes-like object (binary), or a dict or list (JSON text).
Outgoing = Union[str, bytes, bytearray, memoryview, dict[str, Any], list[Any]]
T = TypeVar("T")
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

_UNPACK_16 = struct.Struct("!H").unpack
_UNPACK_64 = struct.Struct("!Q").unpack
_RECV_SIZE = 64 * 1024  # one read for many small frames; below malloc's mmap threshold
_LARGE_PAYLOAD = 64 * 1024  # payloads this large are read straight into their bytes (see _read_large)
_COALESCE_LIMIT = 16 * 1024  # below this, header and payload go out in one send()
_MASK_SLICE = 256 * 1024  # masked sends go out in slices of this size
_utf8_decoder = codecs.getincrementaldecoder("utf-8")

OPEN, CLOSING, CLOSED = "OPEN", "CLOSING", "CLOSED"


_EXTENDED_LENGTH = {126: 2, 127: 8}  # bytes of extended payload length after these length codes


class _Abort(Exception):
    """Raised inside the read loop when the socket is gone (EOF, reset or aborted)."""


class _Timeout(Exception):
    """Raised inside the read loop, before a read that would block, once the caller's deadline passed."""


class _DataFrame:
    """A data frame whose header was taken and whose payload is being read (reader thread only)."""

    __slots__ = ("fin", "holder", "key", "length", "offset", "unmasked")

    def __init__(self, fin: bool, length: int, key: Optional[bytes]) -> None:
        self.fin = fin
        self.length = length
        self.key = key
        self.offset = 0  # payload bytes read so far
        self.unmasked = 0  # of those, how many are unmasked (large payloads only)
        self.holder: Optional[io.BytesIO] = None  # a large payload's bytes, as they are read


class _PartialMessage:
    """A text message, or a message in several frames, as it arrives (reader thread only).

    Every frame's payload is appended to one buffer, so a message in progress
    holds its payload so far and a constant, however many fragments it came
    in (a list of fragments would cost some 90 bytes per fragment, even an
    empty one). Text is checked as it arrives, so that an invalid byte fails
    the message at once (close 1007), not when the whole of it is in.
    """

    __slots__ = ("data", "decoder")

    def __init__(self, opcode: int) -> None:
        self.data = bytearray()
        self.decoder = _utf8_decoder() if opcode == frames.OP_TEXT else None

    def add(self, chunk: bytearray) -> None:
        decoder = self.decoder
        # An ASCII stretch is valid UTF-8 unless it ends a character left open before it.
        if decoder is not None and not (chunk.isascii() and not decoder.getstate()[0]):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                raise ProtocolError("text message is not valid UTF-8", 1007) from None
        self.data += chunk

    def result(self) -> Message:
        if self.decoder is None:
            return bytes(self.data)
        try:
            self.decoder.decode(b"", True)
        except UnicodeDecodeError:
            raise ProtocolError("text message ends inside a UTF-8 character", 1007) from None
        return self.data.decode("utf-8")


def encode_message(message: Outgoing, binary: bool = False) -> tuple[int, Union[bytes, bytearray, memoryview]]:
    """The opcode and payload of a message that ``send`` takes; TypeError for anything else.

    str goes as text; bytes, bytearray, memoryview and any other object with
    the buffer protocol (a numpy array, for instance) as binary, sent from
    its memory as it is; a dict or list as JSON text. ``binary=True`` sends
    text and JSON as binary frames of their UTF-8 bytes.
    """
    if isinstance(message, (dict, list)):
        message = json.dumps(message)
    if isinstance(message, str):
        return (frames.OP_BINARY if binary else frames.OP_TEXT), message.encode("utf-8")
    if isinstance(message, (bytes, bytearray)):
        return frames.OP_BINARY, message
    try:
        view = memoryview(message)
    except TypeError:
        raise TypeError(
            f"cannot send a {type(message).__name__}: send takes str (text), bytes-like such as bytes, "
            "bytearray or memoryview (binary), or a dict or list (JSON text)"
        ) from None
    if not view.c_contiguous:
        raise TypeError(f"cannot send a non-contiguous {type(message).__name__}: make a contiguous copy first")
    return frames.OP_BINARY, view.cast("B") if view.format != "B" or view.ndim != 1 else view


class Connection:
    """A websocket connection, after the opening handshake.

    Args:
        sock: the connected socket (plain or TLS).
        is_client: True on the client side (mask what is sent, expect unmasked frames).
        max_message_size: a larger message is refused with close 1009 before its
            payload is read; None for no limit.
        ping_interval: after this many idle seconds, send a ping; None: never.
        ping_timeout: drop the connection if nothing arrives this long after a ping.
        send_timeout: abort a send that makes no progress for this long; None: wait.
        close_timeout: how long to wait for the peer's close frame after ours.
        initial_data: bytes read past the handshake that belong to the frame stream.
        preamble: bytes to write before the first frame (the server's 101
            response): see :meth:`flush_preamble`.
        name: used in log lines.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        is_client: bool,
        max_message_size: Optional[int] = DEFAULT_MAX_MESSAGE_SIZE,
        ping_interval: Optional[float] = 20.0,
        ping_timeout: Optional[float] = 20.0,
        send_timeout: Optional[float] = 30.0,
        close_timeout: float = 5.0,
        initial_data: bytes = b"",
        preamble: bytes = b"",
        name: str = "connection",
    ) -> None:
        self.sock = sock
        self.is_client = is_client
        self.max_message_size = max_message_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.name = name
        #: The close code and reason, once the connection is closed (1006: no close frame).
        self.close_code: Optional[int] = None
        self.close_reason: str = ""

        # Synchronize writes to the socket and the flag that a close frame went out:
        # nothing may be sent after it, and each frame must go out whole.
        self._send_lock = threading.Lock()
        self._close_sent = False
        self._preamble = preamble
        self._closing_deadline = 0.0
        self._closed = threading.Event()
        # One-shot: taken by whichever thread first decides that the connection ends (see on_closing).
        self._closing_notified = threading.Lock()
        #: Called once, as ``on_closing(code, reason)``, when the connection starts to end:
        #: our close frame goes out, the peer's arrives, or the socket is lost. It runs on
        #: the thread that decided it, possibly holding the send lock: it must return at
        #: once and must not send. The server's handlers use it to release waiting calls.
        self.on_closing: Optional[Callable[[int, str], None]] = None
        # The reader's state: read and written by the reader thread only.
        self._rbuf = bytearray(initial_data)
        self._frame: Optional[_DataFrame] = None  # a data frame being read
        self._message: Optional[_PartialMessage] = None  # a message being put together
        self._deadline: Optional[float] = None  # when the current recv(timeout) gives up
        self._last_received = time.monotonic()
        self._ping_sent_at: Optional[float] = None
        limits = [t for t in (ping_interval, send_timeout, close_timeout) if t]
        self._tick = max(0.05, min([*limits, 10.0]) / 2)
        # OpenSSL's objects are not safe for a read and a write at once from two
        # threads (seen as spurious EAGAIN and dropped connections). On TLS the
        # socket is made non-blocking and every SSL call runs under one lock,
        # held only for the call itself: waiting happens in select(), unlocked.
        self._tls_lock: Optional[threading.Lock] = threading.Lock() if isinstance(sock, ssl.SSLSocket) else None
        sock.settimeout(0.0 if self._tls_lock is not None else self._tick)
        frames.load_accelerator()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        """OPEN, CLOSING (a close frame went out) or CLOSED."""
        if self._closed.is_set():
            return CLOSED
        return CLOSING if self._close_sent else OPEN

    @property
    def closed(self) -> bool:
        """True once the connection is closed for good."""
        return self._closed.is_set()

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """Block until the connection is closed; return False on timeout. Safe from any thread."""
        return self._closed.wait(timeout)

    # ------------------------------------------------------------------ reading

    def recv(self, timeout: Optional[float] = None) -> Optional[Message]:
        """Return the next message (str for text, bytes for binary), or None once closed.

        Reader thread only. Control frames are handled here: pings are answered,
        the closing handshake is completed, protocol errors close the connection
        with the RFC's code. It never raises for anything the peer does.

        ``timeout`` (seconds; None or inf waits forever) bounds the whole call,
        whatever control frames arrive meanwhile: when it passes, TimeoutError
        is raised and the connection stays usable. What arrived of a message
        is kept, and the next call goes on from there.
        """
        self._deadline = timeouts.deadline(timeout)
        try:
            if self._frame is None and self._message is None:
                buf = self._rbuf
                if not buf:
                    buf += self._recv_some()
                # The common case first: a small, whole, unfragmented message already buffered.
                message = self._small_message(buf)
                if message is not None:
                    return message
            return self._recv_message()
        except _Timeout:
            raise TimeoutError(f"no message within {timeout} s") from None
        except ProtocolError as exc:
            self._deadline = None
            logger.info("%s: protocol error from peer: %s", self.name, exc)
            self._fail(exc.code, exc.reason)
        except (_Abort, OSError) as exc:
            self._mark_closed(1006, "")
            logger.debug("%s: connection lost: %r", self.name, exc)
        finally:
            self._deadline = None
        return None

    def __iter__(self) -> Iterator[Message]:
        """The messages, as :meth:`recv` returns them, until the connection closes. Reader thread only."""
        while True:
            message = self.recv()
            if message is None:
                return
            yield message

    def _small_message(self, buf: bytearray) -> Optional[Message]:
        """The next message if it is one small whole frame already in ``buf``, else None (nothing consumed).

        A shortcut past the general path for what most traffic is; it accepts
        only frames that path would accept too (FIN set, no RSV bits, text or
        binary, the right mask bit, under 126 bytes) and leaves all else to it.
        """
        if len(buf) < 2 or self._close_sent:
            return None
        b1, b2 = buf[0], buf[1]
        length = b2 & 0x7F
        if (b1 != 0x81 and b1 != 0x82) or length > 125 or bool(b2 & 0x80) == self.is_client:
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
            key = bytes(buf[2:6])
            payload = frames.masked(buf[6 : 6 + length], key)
            del buf[: 6 + length]
        if b1 == 0x82:
            return bytes(payload)
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("text message is not valid UTF-8", 1007) from None

    def _recv_message(self) -> Optional[Message]:
        """Read frames until a whole data message is in; None once the connection ended.

        Every step keeps its progress in ``_frame`` and ``_message`` before it
        may block, so a timeout can interrupt it anywhere without losing data.
        """
        while True:
            frame = self._frame or self._next_data_frame()
            if frame is None:
                return None
            payload = self._read_frame_payload(frame)
            self._frame = None
            if not frame.fin:
                continue
            message = self._finish_message(payload)
            if self._close_sent:
                continue  # Section 1.4: after our close frame, data is discarded.
            return message

    def _next_data_frame(self) -> Optional[_DataFrame]:
        """Handle control frames until a data frame's header is in; that frame, or None once closed."""
        while True:
            partial = self._message
            fin, opcode, length, key = self._read_header(len(partial.data) if partial is not None else 0)
            if opcode >= 8:
                payload = self._take(length)
                if key is not None:
                    frames.apply_mask(payload, key)
                if self._handle_control(opcode, payload):
                    return None
                continue
            if opcode == frames.OP_CONTINUATION:
                if partial is None:
                    self._skip_buffered(length)
                    raise ProtocolError("continuation frame without a message to continue")
            elif partial is not None:
                self._skip_buffered(length)
                raise ProtocolError("new data frame inside a fragmented message")
            elif opcode == frames.OP_TEXT or not fin:
                # Text is checked as it arrives; a message in parts is put together in one buffer.
                self._message = _PartialMessage(opcode)
            self._frame = _DataFrame(fin, length, key)
            return self._frame

    def _read_frame_payload(self, frame: _DataFrame) -> Union[bytes, bytearray, None]:
        """Read a data frame's payload: returned when it is a whole binary message, else added to ``_message``."""
        message = self._message
        if message is None:
            if frame.length < _LARGE_PAYLOAD or frame.length <= len(self._rbuf):
                self._fill(frame.length)
                payload = self._take(frame.length)
                if frame.key is not None:
                    frames.apply_mask(payload, frame.key)
                return payload
            return self._read_large(frame)
        while frame.offset < frame.length:
            chunk = self._read_some(frame.length - frame.offset)
            if frame.key is not None:
                frames.apply_mask(chunk, frames.key_at(frame.key, frame.offset))
            message.add(chunk)
            frame.offset += len(chunk)
        return None

    def _finish_message(self, payload: Union[bytes, bytearray, None]) -> Message:
        message, self._message = self._message, None
        if message is None:
            assert payload is not None
            return payload if type(payload) is bytes else bytes(payload)
        return message.result()

    def _read_header(self, message_size: int) -> tuple[bool, int, int, Optional[bytes]]:
        """Take a checked frame header from the stream: ``(fin, opcode, payload length, mask key or None)``.

        Nothing is taken until the whole header is buffered (and, for a control
        frame, its payload too), so that a timeout never leaves half a header read.
        """
        buf = self._fill(2)
        header = frames.parse_header(buf[0], buf[1])
        try:
            frames.check_header(header, expect_masked=not self.is_client)
        except ProtocolError:
            self._skip_buffered_frame(header)
            raise
        extra = _EXTENDED_LENGTH.get(header.length_code, 0)
        size = 2 + extra + (4 if header.masked else 0)
        buf = self._fill(size)
        length = header.length_code if not extra else int.from_bytes(buf[2 : 2 + extra], "big")
        if length >> 63:
            raise ProtocolError("64-bit payload length with the high bit set")
        if header.opcode >= 8:
            buf = self._fill(size + length)
        key = bytes(buf[size - 4 : size]) if header.masked else None
        del buf[:size]
        limit = self.max_message_size
        if limit is not None and header.opcode < 8 and message_size + length > limit:
            # Decided from the header alone: the payload is never read.
            raise PayloadTooBig(message_size + length, limit)
        return header.fin, header.opcode, length, key

    def _skip_buffered_frame(self, header: frames.FrameHeader) -> None:
        """Drop a refused frame (header not yet taken) if all of it is buffered already.

        Failing a connection, we still want to read the peer's close frame that
        follows, and that needs the stream in step. What is not buffered is not
        waited for: a hostile peer may never send it.
        """
        buf = self._rbuf
        extra = _EXTENDED_LENGTH.get(header.length_code, 0)
        if len(buf) < 2 + extra:
            return
        length = header.length_code if not extra else int.from_bytes(buf[2 : 2 + extra], "big")
        total = 2 + extra + (4 if header.masked else 0) + length
        if len(buf) >= total:
            del buf[:total]

    def _skip_buffered(self, length: int) -> None:
        """Drop a refused frame's payload if all of it is buffered already (see _skip_buffered_frame)."""
        if len(self._rbuf) >= length:
            del self._rbuf[:length]

    def _read_large(self, frame: _DataFrame) -> bytes:
        """Read a large payload straight into the ``bytes`` object that is returned.

        Fresh memory costs a page fault per 4 KiB on first touch, more than the
        copying itself, so a large message must not pass through a second big
        buffer. ``io.BytesIO`` over a zeroed ``bytes`` lends a writable view of
        that very object (``getbuffer``), and once the view is released its
        ``getvalue()`` hands the object out without copying (CPython; where it
        copies instead, the result is the same, only slower). Each stretch is
        unmasked in place as soon as it arrives, while it is still in the CPU
        cache and while the peer goes on sending. The progress lives in
        ``frame``, so that a timeout can interrupt the read and a later call resume it.
        """
        length, key = frame.length, frame.key
        if frame.holder is None:
            try:
                frame.holder = io.BytesIO(bytes(length))
            except (MemoryError, OverflowError):
                # Only without a max_message_size: a claimed length no memory can hold.
                raise ProtocolError(f"a frame of {length} bytes cannot be held in memory", 1009) from None
        with frame.holder.getbuffer() as view:
            while True:
                have = min(len(self._rbuf), length - frame.offset)
                if have:
                    view[frame.offset : frame.offset + have] = self._rbuf[:have]
                    del self._rbuf[:have]
                    frame.offset += have
                if key is not None and frame.offset > frame.unmasked:
                    frames.apply_mask(view[frame.unmasked : frame.offset], frames.key_at(key, frame.unmasked))
                    frame.unmasked = frame.offset
                if frame.offset == length:
                    break
                frame.offset += self._recv_into(view[frame.offset :])
        return frame.holder.getvalue()

    def _handle_control(self, opcode: int, payload: Union[bytes, bytearray]) -> bool:
        """Act on a control frame; return True when it ended the connection."""
        if opcode == frames.OP_PING:
            try:
                self._send_frame(frames.OP_PONG, bytes(payload))
            except ConnectionClosed:
                pass  # we are closing; the peer's close frame will follow
            return False
        if opcode == frames.OP_PONG:
            self._ping_sent_at = None
            return False
        code, reason = frames.parse_close(bytes(payload))
        with self._send_lock:
            answer = not self._close_sent
            self._close_sent = True
        if answer:
            self._notify_closing(code, reason)
            # Section 5.5.1: echo the peer's code (an empty close for none).
            self._write_close(None if code == 1005 else code, reason if code != 1005 else "")
        self._mark_closed(code, reason)
        return True

    def _fill(self, n: int) -> bytearray:
        """Read until at least ``n`` bytes are buffered; return the buffer (nothing is taken)."""
        buf = self._rbuf
        while len(buf) < n:
            buf += self._recv_some()
        return buf

    def _take(self, n: int) -> bytearray:
        """Take ``n`` buffered bytes off the front of the buffer (a writable copy)."""
        buf = self._rbuf
        data = buf[:n]
        del buf[:n]
        return data

    def _read_some(self, limit: int) -> bytearray:
        """Return between 1 and ``limit`` bytes (none when ``limit`` is 0), reading only if nothing is buffered."""
        if limit <= 0:
            return bytearray()
        buf = self._rbuf
        if not buf:
            buf += self._recv_some()
        data = buf[:limit]
        del buf[:limit]
        return data

    def _recv_some(self, size: int = _RECV_SIZE) -> bytes:
        if self._tls_lock is not None:
            data = self._tls_call(lambda: self.sock.recv(size), reading=True)
            if not data:
                raise _Abort("end of stream")
            self._received()
            return data
        while True:
            if self._deadline is not None:
                self._wait_readable()
            try:
                data = self.sock.recv(size)
            except socket.timeout:
                self._on_idle()
                continue
            if not data:
                raise _Abort("end of stream")
            self._received()
            return data

    def _recv_into(self, view: memoryview) -> int:
        if self._tls_lock is not None:
            n: int = self._tls_call(lambda: self.sock.recv_into(view), reading=True)
            if not n:
                raise _Abort("end of stream")
            self._received()
            return n
        while True:
            if self._deadline is not None:
                self._wait_readable()
            try:
                n = self.sock.recv_into(view)
            except socket.timeout:
                self._on_idle()
                continue
            if not n:
                raise _Abort("end of stream")
            self._received()
            return n

    def _wait_readable(self) -> None:
        """Wait, under a recv deadline, until the (plain) socket is readable; raise _Timeout once the deadline passes.

        The keepalive and close checks still run every tick meanwhile.
        """
        assert self._deadline is not None
        while True:
            wait = min(self._deadline - time.monotonic(), self._tick)
            try:
                if select.select([self.sock], [], [], max(0.0, wait))[0]:
                    return
            except ValueError:  # the socket was closed under us
                raise _Abort("closed") from None
            if time.monotonic() >= self._deadline:
                raise _Timeout()
            self._on_idle()

    def _tls_call(self, call: Callable[[], T], reading: bool) -> T:
        """Run one SSL call under the TLS lock; wait for the socket, unlocked, when it would block.

        A reader that waits a tick without data runs the idle checks; a writer
        that makes no progress for ``send_timeout`` raises socket.timeout,
        which the send loop turns into SendTimeout.
        """
        assert self._tls_lock is not None
        started = time.monotonic()
        while True:
            with self._tls_lock:
                try:
                    return call()
                except ssl.SSLWantReadError:
                    wait_read = True
                except ssl.SSLWantWriteError:
                    wait_read = False
            sockets = [self.sock]
            deadline = self._deadline if reading else None
            wait = self._tick if deadline is None else max(0.0, min(self._tick, deadline - time.monotonic()))
            ready = select.select(sockets if wait_read else [], [] if wait_read else sockets, [], wait)
            if ready[0] or ready[1]:
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise _Timeout()
            if reading:
                self._on_idle()
            elif self.send_timeout is not None and time.monotonic() - started >= self.send_timeout:
                raise socket.timeout("TLS send made no progress")

    def _received(self) -> None:
        self._last_received = now = time.monotonic()
        if self._close_sent and now >= self._closing_deadline:
            # A peer that keeps sending after our close frame still gets close_timeout, no more.
            raise _Abort("close timeout")

    def _on_idle(self) -> None:
        """Called by the reader when a read timed out: enforce the close and keepalive deadlines."""
        if self._closed.is_set():
            raise _Abort("closed")
        now = time.monotonic()
        if self._close_sent:
            if now >= self._closing_deadline:
                logger.debug("%s: no close frame from peer within %s s", self.name, self.close_timeout)
                raise _Abort("close timeout")
            return
        if self.ping_interval is None:
            return
        if self._ping_sent_at is not None:
            if self.ping_timeout is not None and now - self._ping_sent_at >= self.ping_timeout:
                logger.info("%s: no answer to keepalive ping within %s s; dropping", self.name, self.ping_timeout)
                raise _Abort("keepalive timeout")
        elif now - self._last_received >= self.ping_interval:
            self._ping_sent_at = now
            try:
                self._send_frame(frames.OP_PING, os.urandom(4))
            except (ConnectionClosed, OSError):
                raise _Abort("ping failed") from None

    # ------------------------------------------------------------------ writing

    def send(self, message: Outgoing, binary: bool = False) -> None:
        """Send one message: str as text, bytes-like as binary, a dict or list as JSON text.

        ``binary=True`` sends text (and JSON) as a binary frame of its UTF-8
        bytes. Anything else raises TypeError before anything is sent. Safe
        from any thread; blocks until the frame is handed to the kernel.
        Raises ConnectionClosed once a close frame was sent or the socket is
        gone, and SendTimeout (after aborting) if the peer stopped reading.
        """
        self._send_frame(*encode_message(message, binary))

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (at most 125 bytes). Safe from any thread."""
        if len(payload) > 125:
            raise ValueError("a ping payload holds at most 125 bytes")
        self._send_frame(frames.OP_PING, payload)

    def send_parts(self, *parts: Union[bytes, bytearray, memoryview]) -> None:
        """Send one binary message made of ``parts`` put end to end, without joining
        them first where that can be avoided. Safe from any thread."""
        self._send_frame(frames.OP_BINARY, *parts)

    def _send_frame(self, opcode: int, *parts: Union[bytes, bytearray, memoryview]) -> None:
        payload = parts[0] if len(parts) == 1 else None
        length = len(payload) if payload is not None else sum(map(len, parts))
        mask_key = os.urandom(4) if self.is_client else None
        header = frames.encode_header(opcode, length, True, mask_key)
        if length < _COALESCE_LIMIT:
            # Small: build the whole frame before taking the lock, and send it in one call.
            data = payload if payload is not None else b"".join(parts)
            if mask_key is not None and length:
                data = frames.masked(data, mask_key)
            frame = header + data
            with self._send_lock:
                if self._close_sent:
                    raise ConnectionClosed(self.close_code or 1006, self.close_reason, f"{self.name} is closing")
                self._send_all(frame)
            return
        with self._send_lock:
            if self._close_sent:
                raise ConnectionClosed(self.close_code or 1006, self.close_reason, f"{self.name} is closing")
            self._send_all(header)
            if mask_key is not None:
                self._send_masked(parts, mask_key)
            else:
                for part in parts:
                    self._send_all(part)

    def _send_masked(self, parts: tuple[Union[bytes, bytearray, memoryview], ...], mask_key: bytes) -> None:
        """Mask and send a large payload a slice at a time; the caller holds the send lock.

        Masking needs a copy. One small buffer, reused for every slice, stays
        in the CPU cache; a copy of the whole payload would cost a page fault
        per 4 KiB of fresh memory, which is slower than the masking itself.
        """
        scratch = bytearray(_MASK_SLICE)
        offset = 0
        for part in parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), _MASK_SLICE):
                piece = view[start : start + _MASK_SLICE]
                out = memoryview(scratch)[: len(piece)]
                frames.mask_into(out, piece, frames.key_at(mask_key, offset))
                self._send_all(out)
                offset += len(piece)

    def flush_preamble(self) -> None:
        """Write the preamble now if no frame has carried it out yet. Safe from any thread.

        The server registers a connection before its 101 response is out, so
        that a peer that sees the 101 can be sent to at once; a frame written
        in between takes the 101 out ahead of itself, under the send lock.
        """
        with self._send_lock:
            self._send_all(b"")

    def _send_all(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Write all of ``data`` (after the preamble, if still pending); the caller holds the send lock."""
        if self._preamble:
            data = self._preamble + data
            self._preamble = b""
        view = memoryview(data)
        last_progress = time.monotonic()
        while view:
            try:
                tls = self._tls_lock is not None
                sent = self._tls_call(functools.partial(self.sock.send, view), reading=False) if tls else self.sock.send(view)
            except socket.timeout:
                if self.send_timeout is not None and time.monotonic() - last_progress >= self.send_timeout:
                    # Part of a frame may be out: the stream cannot be resumed.
                    self.abort()
                    raise SendTimeout(f"{self.name}: peer read nothing for {self.send_timeout} s") from None
                continue
            except OSError as exc:
                self.abort()
                raise ConnectionClosed(1006, "", f"{self.name}: send failed: {exc}") from exc
            view = view[sent:]
            last_progress = time.monotonic()

    # ------------------------------------------------------------------ closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake. Safe from any thread; returns at once.

        The reader finishes it when the peer's close frame arrives, or drops the
        connection after ``close_timeout``. Calling it again does nothing.
        """
        with self._send_lock:
            if self._close_sent or self._closed.is_set():
                return
            self._close_sent = True
        self._notify_closing(code, reason)
        self._write_close(code, reason)

    def _write_close(self, code: Optional[int], reason: str) -> None:
        frame = frames.encode_frame(frames.OP_CLOSE, frames.encode_close(code, reason), mask_key=os.urandom(4) if self.is_client else None)
        self._closing_deadline = time.monotonic() + self.close_timeout
        try:
            # Wake the reader sooner, so that it keeps the close deadline.
            self._tick = min(self._tick, max(self.close_timeout / 4, 0.05))
            if self._tls_lock is None:
                self.sock.settimeout(self._tick)
            with self._send_lock:
                self._send_all(frame)
        except (ConnectionClosed, SendTimeout, OSError):
            pass

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (section 7.1.7): send our close frame, wait briefly for the peer's, drop it."""
        with self._send_lock:
            send = not self._close_sent
            self._close_sent = True
        self._mark_closed_code(code, reason)
        self._notify_closing(code, reason)
        if send:
            self._write_close(code, reason)
        self._drain_until_close()

    def _drain_until_close(self) -> None:
        # Discard what the peer still sends until its close frame, so that it
        # reads our close frame instead of a reset (the suite checks this).
        self._frame = self._message = None
        try:
            while not self._closed.is_set():
                _, opcode, length, _ = self._read_header(0)
                if opcode == frames.OP_CLOSE:
                    break
                while length:
                    length -= len(self._read_some(min(length, _RECV_SIZE)))
        except ProtocolError:
            # The stream cannot be parsed past the error: drop raw bytes until
            # the peer goes quiet, so that closing with unread input does not
            # turn into a reset that would hide our close frame from the peer.
            self._discard_until_quiet(0.2)
        except (_Abort, OSError):
            pass
        self._mark_closed(self.close_code or 1006, self.close_reason)

    def _discard_until_quiet(self, quiet: float) -> None:
        self._rbuf.clear()
        try:
            while time.monotonic() < self._closing_deadline and select.select([self.sock], [], [], quiet)[0]:
                if not (self._tls_call(lambda: self.sock.recv(_RECV_SIZE), reading=True) if self._tls_lock else self.sock.recv(_RECV_SIZE)):
                    return
        except (OSError, _Abort):  # socket.timeout included: the peer went quiet
            pass

    def _mark_closed_code(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    def _notify_closing(self, code: int, reason: str) -> None:
        """Call ``on_closing`` if no thread did yet (any thread; see on_closing)."""
        if self.on_closing is None or not self._closing_notified.acquire(blocking=False):
            return  # the lock is never released: a one-shot
        try:
            self.on_closing(code, reason)
        except Exception:
            logger.exception("%s: on_closing failed", self.name)

    def _mark_closed(self, code: int, reason: str) -> None:
        self._mark_closed_code(code, reason)
        self._notify_closing(self.close_code or code, self.close_reason)
        if not self._closed.is_set():
            self._closed.set()
            self._shutdown_socket()

    def abort(self) -> None:
        """Drop the connection without a closing handshake. Safe from any thread.

        A reader blocked in :meth:`recv` wakes up and returns None.
        """
        self._mark_closed_code(1006, "")
        self._notify_closing(self.close_code or 1006, self.close_reason)
        self._closed.set()
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def release(self) -> None:
        """Close the socket's file descriptor; the reader calls this when it is done."""
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass

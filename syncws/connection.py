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
import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import Callable, Optional, TypeVar, Union

from . import frames
from .exceptions import ConnectionClosed, PayloadTooBig, ProtocolError, SendTimeout

__all__ = ["Connection", "Message", "DEFAULT_MAX_MESSAGE_SIZE"]

logger = logging.getLogger(__name__)

Message = Union[str, bytes]
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


class _Abort(Exception):
    """Raised inside the read loop when the socket is gone (EOF, reset or aborted)."""


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
        self._rbuf = bytearray(initial_data)
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

    def recv(self) -> Optional[Message]:
        """Return the next message (str for text, bytes for binary), or None once closed.

        Reader thread only. Control frames are handled here: pings are answered,
        the closing handshake is completed, protocol errors close the connection
        with the RFC's code. It never raises for anything the peer does.
        """
        try:
            buf = self._rbuf
            if not buf:
                buf += self._recv_some()
            # The common case first: a small, whole, unfragmented message already buffered.
            message = self._small_message(buf)
            return message if message is not None else self._recv_message()
        except ProtocolError as exc:
            logger.info("%s: protocol error from peer: %s", self.name, exc)
            self._fail(exc.code, exc.reason)
        except (_Abort, OSError) as exc:
            self._mark_closed(1006, "")
            logger.debug("%s: connection lost: %r", self.name, exc)
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
            masked = buf[6 : 6 + length]
            del buf[: 6 + length]
            mask = int.from_bytes((key * ((length >> 2) + 1))[:length], "little")
            payload = (int.from_bytes(masked, "little") ^ mask).to_bytes(length, "little")
        if b1 == 0x82:
            return bytes(payload)
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("text message is not valid UTF-8", 1007) from None

    def _recv_message(self) -> Optional[Message]:
        fragments: Optional[list[Union[bytes, bytearray]]] = None  # a binary message's frames so far
        text: Optional[list[str]] = None  # a text message's decoded pieces so far
        decoder = None
        size = 0
        while True:
            fin, opcode, length, key = self._read_header(size)
            if opcode >= 8:
                if self._handle_control(opcode, self._read_payload(length, key)):
                    return None
                continue
            if opcode == frames.OP_CONTINUATION:
                if fragments is None and text is None:
                    self._skip_buffered(length)
                    raise ProtocolError("continuation frame without a message to continue")
            elif fragments is not None or text is not None:
                self._skip_buffered(length)
                raise ProtocolError("new data frame inside a fragmented message")
            elif opcode == frames.OP_TEXT:
                decoder, text = _utf8_decoder(), []
            else:
                fragments = []
            size += length
            if decoder is not None and text is not None:
                self._read_text(length, key, decoder, text, fin)
            elif fragments is not None:
                fragments.append(self._read_payload(length, key))
            if not fin:
                continue
            if self._close_sent:
                # Section 1.4: after our close frame, data is discarded.
                fragments, text, decoder, size = None, None, None, 0
                continue
            if text is not None:
                return text[0] if len(text) == 1 else "".join(text)
            assert fragments is not None
            return bytes(fragments[0]) if len(fragments) == 1 else b"".join(fragments)

    def _read_header(self, message_size: int) -> tuple[bool, int, int, Optional[bytes]]:
        """Read and check a frame header: ``(fin, opcode, payload length, mask key or None)``."""
        b1, b2 = self._read(2)
        header = frames.parse_header(b1, b2)
        try:
            frames.check_header(header, expect_masked=not self.is_client)
        except ProtocolError:
            self._skip_buffered_frame(header)
            raise
        length = header.length_code
        if length == 126:
            (length,) = _UNPACK_16(self._read(2))
        elif length == 127:
            (length,) = _UNPACK_64(self._read(8))
            if length >> 63:
                raise ProtocolError("64-bit payload length with the high bit set")
        limit = self.max_message_size
        if limit is not None and header.opcode < 8 and message_size + length > limit:
            # Decided from the header alone: the payload is never read.
            raise PayloadTooBig(message_size + length, limit)
        key = bytes(self._read(4)) if header.masked else None
        return header.fin, header.opcode, length, key

    def _skip_buffered_frame(self, header: frames.FrameHeader) -> None:
        """Drop the rest of a refused frame if all of it is buffered already.

        Failing a connection, we still want to read the peer's close frame that
        follows, and that needs the stream in step. What is not buffered is not
        waited for: a hostile peer may never send it.
        """
        buf = self._rbuf
        extra = {126: 2, 127: 8}.get(header.length_code, 0)
        if len(buf) < extra:
            return
        length = header.length_code if not extra else int.from_bytes(buf[:extra], "big")
        total = extra + (4 if header.masked else 0) + length
        if len(buf) >= total:
            del buf[:total]

    def _skip_buffered(self, length: int) -> None:
        """Drop a refused frame's payload if all of it is buffered already (see _skip_buffered_frame)."""
        if len(self._rbuf) >= length:
            del self._rbuf[:length]

    def _read_payload(self, length: int, key: Optional[bytes]) -> Union[bytes, bytearray]:
        if length < _LARGE_PAYLOAD or length <= len(self._rbuf):
            payload = self._read(length)
            if key is not None:
                frames.apply_mask(payload, key)
            return payload
        return self._read_large(length, key)

    def _read_large(self, length: int, key: Optional[bytes]) -> bytes:
        """Read a large payload straight into the ``bytes`` object that is returned.

        Fresh memory costs a page fault per 4 KiB on first touch, more than the
        copying itself, so a large message must not pass through a second big
        buffer. ``io.BytesIO`` over a zeroed ``bytes`` lends a writable view of
        that very object (``getbuffer``), and once the view is released its
        ``getvalue()`` hands the object out without copying (CPython; where it
        copies instead, the result is the same, only slower). Each stretch is
        unmasked in place as soon as it arrives, while it is still in the CPU
        cache and while the peer goes on sending.
        """
        try:
            holder = io.BytesIO(bytes(length))
        except (MemoryError, OverflowError):
            # Only without a max_message_size: a claimed length no memory can hold.
            raise ProtocolError(f"a frame of {length} bytes cannot be held in memory", 1009) from None
        with holder.getbuffer() as view:
            have = min(len(self._rbuf), length)
            view[:have] = self._rbuf[:have]
            del self._rbuf[:have]
            unmasked = 0
            while True:
                if key is not None and have > unmasked:
                    shift = unmasked % 4  # keep the key aligned with the payload's byte positions
                    frames.apply_mask(view[unmasked:have], key[shift:] + key[:shift])
                    unmasked = have
                if have == length:
                    break
                have += self._recv_into(view[have:])
        return holder.getvalue()

    def _read_text(self, length: int, key: Optional[bytes], decoder: codecs.IncrementalDecoder, out: list[str], final: bool) -> None:
        """Read a text frame's payload and decode it into ``out`` as it arrives.

        Decoding each piece as it comes off the socket fails a message at its
        first invalid byte (close 1007), not once the whole of it is in.
        """
        offset = 0
        while True:
            chunk = self._read_some(length - offset)
            if key is not None and chunk:
                shift = offset % 4  # keep the key aligned with the payload's byte positions
                frames.apply_mask(chunk, key[shift:] + key[:shift])
            offset += len(chunk)
            try:
                out.append(decoder.decode(chunk, final and offset == length))
            except UnicodeDecodeError:
                raise ProtocolError("text message is not valid UTF-8", 1007) from None
            if offset == length:
                return

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
            # Section 5.5.1: echo the peer's code (an empty close for none).
            self._write_close(None if code == 1005 else code, reason if code != 1005 else "")
        self._mark_closed(code, reason)
        return True

    def _read(self, n: int) -> bytearray:
        """Return exactly ``n`` bytes from the stream (a writable buffer)."""
        buf = self._rbuf
        if len(buf) >= n:
            data = buf[:n]
            del buf[:n]
            return data
        while len(buf) < n:
            buf += self._recv_some()
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
            try:
                n = self.sock.recv_into(view)
            except socket.timeout:
                self._on_idle()
                continue
            if not n:
                raise _Abort("end of stream")
            self._received()
            return n

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
            ready = select.select(sockets if wait_read else [], [] if wait_read else sockets, [], self._tick)
            if ready[0] or ready[1]:
                continue
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

    def send(self, message: Union[str, bytes, bytearray, memoryview]) -> None:
        """Send one message: a text frame for str, a binary frame for bytes-like.

        Safe from any thread; blocks until the frame is handed to the kernel.
        Raises ConnectionClosed once a close frame was sent or the socket is
        gone, and SendTimeout (after aborting) if the peer stopped reading.
        """
        if isinstance(message, str):
            self._send_frame(frames.OP_TEXT, message.encode("utf-8"))
        else:
            self._send_frame(frames.OP_BINARY, message)

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
                mask = int.from_bytes((mask_key * ((length >> 2) + 1))[:length], "little")
                data = (int.from_bytes(data, "little") ^ mask).to_bytes(length, "little")
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
                shift = offset % 4  # keep the key aligned with the payload's byte positions
                frames.mask_into(out, piece, mask_key[shift:] + mask_key[:shift])
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
        self._write_close(code, reason)

    def _write_close(self, code: Optional[int], reason: str) -> None:
        payload = frames.encode_close(code, reason)
        if self.is_client:
            key = os.urandom(4)
            masked = bytearray(payload)
            frames.apply_mask(masked, key)
            frame = frames.encode_header(frames.OP_CLOSE, len(payload), True, key) + masked
        else:
            frame = frames.encode_header(frames.OP_CLOSE, len(payload)) + payload
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
        if send:
            self._write_close(code, reason)
        self._mark_closed_code(code, reason)
        self._drain_until_close()

    def _drain_until_close(self) -> None:
        # Discard what the peer still sends until its close frame, so that it
        # reads our close frame instead of a reset (the suite checks this).
        try:
            while not self._closed.is_set():
                _, opcode, length, key = self._read_header(0)
                self._read_payload(length, key)
                if opcode == frames.OP_CLOSE:
                    break
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

    def _mark_closed(self, code: int, reason: str) -> None:
        self._mark_closed_code(code, reason)
        if not self._closed.is_set():
            self._closed.set()
            self._shutdown_socket()

    def abort(self) -> None:
        """Drop the connection without a closing handshake. Safe from any thread.

        A reader blocked in :meth:`recv` wakes up and returns None.
        """
        self._mark_closed_code(1006, "")
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

"""One websocket connection over a connected socket: the pump between the socket and the protocol.

:class:`Connection` reads the socket into :class:`~syncws.protocol.Protocol`
(the protocol's rules, without I/O), writes the frames it returns, and keeps
what only a pump can: the timeouts, keepalive, TLS and the send lock. The
same class serves both sides: the server runs one per accepted socket on that
socket's own thread, and :func:`syncws.connect` wraps the socket that
websocket-client opened and shook hands on.

Threads:

* :meth:`Connection.recv` belongs to one *reader* thread at a time (the server's
  connection thread, or the client's owner). It answers pings, finishes the
  closing handshake and enforces keepalive and ``close_timeout``.
* :meth:`Connection.send`, :meth:`Connection.ping` and :meth:`Connection.close`
  are safe from any thread. The send lock makes each frame go out whole and in order.

Every socket call carries a timeout of a few seconds (the *tick*). A read that
times out is not an error: it is when the reader checks its keepalive and close
deadlines. A write that makes no progress for ``send_timeout`` seconds is: the
peer stopped reading, so the connection is aborted rather than letting one
stuck peer block its senders forever.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional, TypeVar, Union

from . import frames, timeouts
from .exceptions import ConnectionClosed, ProtocolError, SendTimeout
from .protocol import Close, CloseCode, Message, Ping, Pong, Protocol, State

__all__ = ["Connection", "Message", "Outgoing", "encode_message", "DEFAULT_MAX_MESSAGE_SIZE"]

logger = logging.getLogger(__name__)

#: What ``send`` takes: str (text), a bytes-like object (binary), or a dict or list (JSON text).
Outgoing = Union[str, bytes, bytearray, memoryview, dict[str, Any], list[Any]]
T = TypeVar("T")
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024

_RECV_SIZE = 64 * 1024  # one read for many small frames; below malloc's mmap threshold
_COALESCE_LIMIT = 16 * 1024  # below this, header and payload go out in one send()
_MASK_SLICE = 256 * 1024  # masked sends go out in slices of this size


class _Abort(Exception):
    """Raised inside the read loop when the socket is gone (EOF, reset or aborted)."""


class _Timeout(Exception):
    """Raised inside the read loop, before a read that would block, once the caller's deadline passed."""


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

    Who touches what: ``protocol``'s receiving half, ``_deadline``,
    ``_last_received`` and ``_ping_sent_at`` belong to the reader thread;
    ``protocol``'s sending half, ``_preamble`` and ``_closing_deadline`` are
    written under ``_send_lock``; ``_closed`` is an Event and
    ``_closing_notified`` a one-shot lock, safe from anywhere. ``_tick`` is
    shortened (never lengthened) by the thread that sends our close frame and
    read by the reader: a stale value only makes it wake one tick later.
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
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.name = name
        #: The protocol's rules and state. Its receiving half belongs to the reader
        #: thread; its sending half and its state are used under the send lock.
        self.protocol = Protocol(is_client, max_message_size)
        self.protocol.receive_data(initial_data)

        # Synchronize writes to the socket and the sending half of the protocol
        # (close_sent, state): each frame goes out whole, and none after the
        # close frame. _preamble is written (and emptied) only under it too.
        self._send_lock = threading.Lock()
        self._preamble = preamble
        # Written under the send lock just before protocol.close_sent turns True (see
        # _start_closing); the reader reads it only after seeing that flag.
        self._closing_deadline = 0.0
        self._closed = threading.Event()
        # One-shot: taken by whichever thread first decides that the connection ends (see on_closing).
        self._closing_notified = threading.Lock()
        #: Called once, as ``on_closing(code, reason)``, when the connection starts to end:
        #: our close frame goes out, the peer's arrives, or the socket is lost. It runs on
        #: the thread that decided it, possibly holding the send lock: it must return at
        #: once and must not send. The server's handlers use it to release waiting calls.
        self.on_closing: Optional[Callable[[int, str], None]] = None
        # The reader's own: touched by the reader thread only.
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
    def state(self) -> State:
        """OPEN, CLOSING (a close frame went out or came in) or CLOSED. Safe from any thread."""
        return State.CLOSED if self._closed.is_set() else self.protocol.state

    @property
    def closed(self) -> bool:
        """True once the connection is closed for good."""
        return self._closed.is_set()

    @property
    def close_code(self) -> Optional[int]:
        """The close code once known (the peer's close frame, or the code we failed it with; 1006: none)."""
        return self.protocol.close_code

    @property
    def close_reason(self) -> str:
        """The close reason that goes with :attr:`close_code`."""
        return self.protocol.close_reason

    @property
    def max_message_size(self) -> Optional[int]:
        """The largest message accepted (None: no limit)."""
        return self.protocol.max_message_size

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """Block until the connection is closed; return False on timeout. Safe from any thread."""
        return self._closed.wait(timeouts.check_timeout(timeout))

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
        protocol = self.protocol
        try:
            while True:
                event = protocol.next_event()
                if event is None:
                    self._read_more()
                elif isinstance(event, (bytes, str)):
                    return event
                elif self._on_control(event):
                    return None
        except _Timeout:
            raise TimeoutError(f"no message within {timeout} s") from None
        except ProtocolError as exc:
            self._deadline = None
            logger.info("%s: protocol error from peer: %s", self.name, exc)
            self._fail(exc.code, exc.reason)
        except (_Abort, OSError) as exc:
            self._mark_closed(CloseCode.ABNORMAL_CLOSURE, "")
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

    def _read_more(self) -> None:
        """Give the protocol more bytes: straight into a large payload's own memory where it offers it."""
        view = self.protocol.payload_buffer()
        if view is None:
            self.protocol.receive_data(self._recv_some())
            return
        with view:
            count = self._recv_into(view)
        self.protocol.payload_received(count)

    def _on_control(self, event: Union[Ping, Pong, Close]) -> bool:
        """Act on a control frame; return True when it ended the connection."""
        if type(event) is Ping:
            with self._send_lock:
                if self.protocol.close_sent:
                    return False  # we are closing; the peer's close frame will follow
                frame = self.protocol.send_pong(event.payload)
                try:
                    self._send_all(frame)
                except (ConnectionClosed, SendTimeout):
                    pass  # aborted: the next read ends the loop
            return False
        if type(event) is Pong:
            self._ping_sent_at = None
            return False
        assert type(event) is Close
        with self._send_lock:
            answer = not self.protocol.close_sent
            if answer:
                # Section 5.5.1: echo the peer's code (an empty close for none).
                frame = self._start_closing(None if event.code == CloseCode.NO_STATUS_RCVD else event.code, event.reason)
        if answer:
            self._notify_closing(event.code, event.reason)
            self._write_close(frame)
        self._mark_closed(event.code, event.reason)
        return True

    def _recv_some(self, size: int = _RECV_SIZE) -> bytes:
        """Up to ``size`` bytes from the socket: at least one (reader thread)."""
        data: bytes = self._recv(lambda: self.sock.recv(size))
        return data

    def _recv_into(self, view: memoryview) -> int:
        """Read into ``view``; the count, at least one (reader thread)."""
        count: int = self._recv(lambda: self.sock.recv_into(view))
        return count

    def _recv(self, call: Callable[[], T]) -> T:
        """Run one socket read, waiting for data as long as it takes, with the idle checks every tick.

        Raises _Abort at the end of the stream and _Timeout when a recv
        deadline passes first; nothing is read in that case.
        """
        if self._tls_lock is not None:
            result = self._tls_call(call, reading=True)
        else:
            while True:
                if self._deadline is not None:
                    self._wait_readable()
                try:
                    result = call()
                    break
                except socket.timeout:
                    self._on_idle()
        if not result:
            raise _Abort("end of stream")
        self._received()
        return result

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
        if self.protocol.close_sent and now >= self._closing_deadline:
            # A peer that keeps sending after our close frame still gets close_timeout, no more.
            raise _Abort("close timeout")

    def _on_idle(self) -> None:
        """Called by the reader when a read timed out: enforce the close and keepalive deadlines."""
        if self._closed.is_set():
            raise _Abort("closed")
        now = time.monotonic()
        if self.protocol.close_sent:
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
                self.ping(os.urandom(4))
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
        with self._send_lock:
            self._send_all(self.protocol.send_ping(payload))

    def pong(self, payload: bytes = b"") -> None:
        """Send an unsolicited pong (at most 125 bytes; RFC 6455 5.5.3 allows it as a heartbeat). Safe from any thread."""
        if len(payload) > 125:
            raise ValueError("a pong payload holds at most 125 bytes")
        with self._send_lock:
            self.protocol.check_open("pong")
            self._send_all(self.protocol.send_pong(payload))

    def send_parts(self, *parts: Union[bytes, bytearray, memoryview]) -> None:
        """Send one binary message made of ``parts`` put end to end, without joining
        them first where that can be avoided. Safe from any thread."""
        self._send_frame(frames.OP_BINARY, *parts)

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
            frame = header + data
            with self._send_lock:
                self.protocol.check_open()
                self._send_all(frame)
            return
        with self._send_lock:
            self.protocol.check_open()
            self._send_all(header)
            if mask_key is not None:
                self._send_masked(parts, mask_key)
            else:
                for part in parts:
                    self._send_all(part)

    def _send_masked(self, parts: tuple[Union[bytes, bytearray, memoryview], ...], mask_key: bytes) -> None:
        """Mask and send a large payload a slice at a time. Requires the send lock.

        Masking needs a copy. One small buffer, reused for every slice, stays
        in the CPU cache; a copy of the whole payload would cost a page fault
        per 4 KiB of fresh memory, which is slower than the masking itself.
        """
        assert self._send_lock.locked()
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
        """Write all of ``data`` (after the preamble, if still pending). Requires the send lock."""
        assert self._send_lock.locked()
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

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake. Safe from any thread; returns at once.

        The reader finishes it when the peer's close frame arrives, or drops the
        connection after ``close_timeout``. Calling it again does nothing.
        """
        with self._send_lock:
            if self.protocol.close_sent or self._closed.is_set():
                return
            frame = self._start_closing(code, reason)
        self._notify_closing(code, reason)
        self._write_close(frame)

    def _start_closing(self, code: Optional[int], reason: str) -> bytes:
        """Our close frame, from the protocol, with the close deadline set first. Requires the send lock.

        The deadline is set before ``protocol.close_sent`` turns True, so that
        the reader, which checks the deadline once it sees that flag, never
        reads a stale one.
        """
        assert self._send_lock.locked()
        self._closing_deadline = time.monotonic() + self.close_timeout
        return self.protocol.send_close(code, reason)

    def _write_close(self, frame: bytes) -> None:
        """Write our close frame and make the reader wake often enough to keep the close deadline."""
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
            self._closing_deadline = time.monotonic() + self.close_timeout
            frame = self.protocol.fail(code, reason)
        self._notify_closing(code, reason)
        if frame is not None:
            self._write_close(frame)
        self._drain_until_close()

    def _drain_until_close(self) -> None:
        # Discard what the peer still sends until its close frame, so that it
        # reads our close frame instead of a reset (the suite checks this).
        try:
            while not self._closed.is_set() and not self.protocol.discard_until_close():
                self.protocol.receive_data(self._recv_some())
        except ProtocolError:
            # The stream cannot be parsed past the error: drop raw bytes until
            # the peer goes quiet, so that closing with unread input does not
            # turn into a reset that would hide our close frame from the peer.
            self._discard_until_quiet(0.2)
        except (_Abort, OSError):
            pass
        self._mark_closed(self.close_code or CloseCode.ABNORMAL_CLOSURE, self.close_reason)

    def _discard_until_quiet(self, quiet: float) -> None:
        self.protocol.discard_buffer()
        try:
            while time.monotonic() < self._closing_deadline and select.select([self.sock], [], [], quiet)[0]:
                if not (self._tls_call(lambda: self.sock.recv(_RECV_SIZE), reading=True) if self._tls_lock else self.sock.recv(_RECV_SIZE)):
                    return
        except (OSError, _Abort):  # socket.timeout included: the peer went quiet
            pass

    def _notify_closing(self, code: int, reason: str) -> None:
        """Call ``on_closing`` if no thread did yet (any thread; see on_closing)."""
        if self.on_closing is None or not self._closing_notified.acquire(blocking=False):
            return  # the lock is never released: a one-shot
        try:
            self.on_closing(code, reason)
        except Exception:
            logger.exception("%s: on_closing failed", self.name)

    def _mark_closed(self, code: int, reason: str) -> None:
        self.protocol.closed(code, reason)
        self._notify_closing(self.protocol.close_code or code, self.protocol.close_reason)
        if not self._closed.is_set():
            self._closed.set()
            self._shutdown_socket()

    def abort(self) -> None:
        """Drop the connection without a closing handshake. Safe from any thread.

        A reader blocked in :meth:`recv` wakes up and returns None.
        """
        self.protocol.closed(CloseCode.ABNORMAL_CLOSURE, "")
        self._notify_closing(self.protocol.close_code or CloseCode.ABNORMAL_CLOSURE, self.protocol.close_reason)
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

"""The writing half of a :class:`~syncws.reactor.stream.Stream`: every send, from any thread.

A frame is written at once as far as the non-blocking socket takes it;
the rest waits in the stream's buffer, which the loop flushes when the socket
is writable, so no thread waits on the socket while it holds the lock.

Two ways to wait for room, as the thread engine has them
(:mod:`syncws.engine.sending` and :mod:`syncws.engine.outbox`):

* :meth:`StreamWriting.send` and :meth:`StreamWriting.send_parts` (a reply,
  a request) wait while more than ``high_water`` bytes wait, up to
  ``send_timeout``; then the connection is aborted with SendTimeout.
* :meth:`StreamWriting.send_nowait` (a broadcast) never waits for the
  socket: past ``max_send_queue`` waiting bytes, the peer has :data:`STALL`
  seconds to read something, or it is too slow and the connection is closed
  with 1008 "send queue full".

Neither ever waits on the loop thread: the loop writes what it must (pongs,
close frames) and lets the buffer grow by what it wrote.

The 101 response is held back as the ``preamble`` until the first frame or
:meth:`StreamWriting.flush_preamble`, so that the server can register the
connection (and its handler's ``open`` run) before the client sees it accepted.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Union

from ..exceptions import ConnectionClosed, SendTimeout
from ..protocol import frames
from ..protocol.outgoing import Outgoing, encode_message
from ..protocol.protocol import CloseCode, Protocol, State
from .handler_pool import release_the_loop

if TYPE_CHECKING:
    import socket

    from .loop import IOLoop
    from .send_buffer import SendBuffer
    from .socket_io import SocketIO

__all__ = ["StreamWriting", "STALL"]

#: A broadcast past ``max_send_queue`` waits this long for the peer to read something; then the peer is too slow.
STALL = 1.0

#: Pieces of a frame smaller than this together are joined and written in one send.
COALESCE_LIMIT = 16 * 1024

Buffer = Union[bytes, bytearray, memoryview]


class StreamWriting:
    """Sends, pings and closes of a Stream (which mixes it in). Safe from any thread.

    The attributes are the stream's: ``_lock`` guards ``_out``, ``_writing``,
    ``_preamble``, ``_closing_now``, ``_finished`` and the protocol's sending
    half; ``_room`` (a condition on it) wakes senders waiting for the buffer
    to drain, once it is down to a limit in ``_room_limits`` (their limits).
    """

    loop: IOLoop
    sock: socket.socket
    _io: SocketIO
    protocol: Protocol
    send_timeout: Optional[float]
    high_water: int
    max_send_queue: int
    meter: Optional[Any]
    _lock: threading.Lock
    _room: threading.Condition
    _room_limits: list[int]
    _out: SendBuffer
    _taken: int
    _writing: bool
    _preamble: bytes
    _closing_now: bool
    _finished: bool
    _left_lock: threading.Lock
    _left: list[bytes]
    _combining: bool

    if TYPE_CHECKING:  # the stream's own

        def _finish(self, code: int, reason: str) -> None: ...

        def _closing(self) -> None: ...

        def _notify_closing(self, code: int, reason: str) -> None: ...

    # ------------------------------------------------------------------ any thread

    @property
    def send_queue_bytes(self) -> int:
        """Bytes written by senders that the socket has not taken yet."""
        return len(self._out)

    def send(self, message: Outgoing, binary: bool = False, compress: Optional[bool] = None) -> None:
        """Send one message (str as text, bytes-like as binary, dict or list as JSON text).

        Writes at once what the socket takes; waits while more than
        ``high_water`` bytes are still waiting (not on the loop thread), and
        aborts the connection with SendTimeout after ``send_timeout``.
        Raises ConnectionClosed once our close frame went out or the socket is gone.
        """
        opcode, payload = encode_message(message, binary)
        if len(payload) < COALESCE_LIMIT and not self.protocol.compresses(opcode == frames.OP_BINARY, len(payload), compress):
            self._send_small(frames.encode_header(opcode, len(payload)) + payload)
            if self.meter is not None:
                self.meter.sent(len(payload))
            return
        with self._lock:
            self._check_open()
            if self.protocol.compresses(opcode == frames.OP_BINARY, len(payload), compress):
                header, data = self.protocol.compressed_frame(opcode, payload, None)
                self._write(header, data)
            else:
                self._write(frames.encode_header(opcode, len(payload)), payload)
            if len(self._out) > self.high_water and not self.loop.in_loop() and not self._wait_for_room(self.high_water, self.send_timeout):
                self._give_up(CloseCode.ABNORMAL_CLOSURE, "send timed out")
                raise SendTimeout(f"the peer took nothing for {self.send_timeout} s; connection aborted")
        if self.meter is not None:
            self.meter.sent(len(payload))

    def send_parts(self, *parts: Buffer) -> None:
        """Send one binary message made of ``parts`` end to end, never compressed (a binary reply's parts)."""
        length = sum(map(len, parts))
        with self._lock:
            self._check_open()
            self._write(frames.encode_header(frames.OP_BINARY, length), *parts)
            if len(self._out) > self.high_water and not self.loop.in_loop() and not self._wait_for_room(self.high_water, self.send_timeout):
                self._give_up(CloseCode.ABNORMAL_CLOSURE, "send timed out")
                raise SendTimeout(f"the peer took nothing for {self.send_timeout} s; connection aborted")
        if self.meter is not None:
            self.meter.sent(length)

    def send_nowait(self, message: Outgoing, binary: bool = False, frame: Optional[bytes] = None) -> None:
        """Send one message without waiting on the socket: a broadcast's way (see the module docstring)."""
        opcode, payload = encode_message(message, binary)
        self.send_encoded_nowait(opcode, payload, frame)

    def send_encoded_nowait(self, opcode: int, payload: Buffer, frame: Optional[bytes] = None) -> None:
        """:meth:`send_nowait` for a message encoded already; ``frame``, its whole uncompressed frame made once for many."""
        with self._lock:
            self._check_open()
            if self.protocol.compresses(opcode == frames.OP_BINARY, len(payload), None):
                self._write(*self.protocol.compressed_frame(opcode, payload, None))
            else:
                self._write(frame if frame is not None else frames.encode_header(opcode, len(payload)) + payload)
            if len(self._out) > self.max_send_queue and not self.loop.in_loop() and not self._wait_for_room(self.max_send_queue, STALL):
                # The peer is too slow for broadcasts: it goes, the sender does not wait on it any longer.
                self._give_up(CloseCode.POLICY_VIOLATION, "send queue full")
                if self.meter is not None:
                    self.meter.send_queue_full()
                return
        if self.meter is not None:
            self.meter.sent(len(payload))

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (at most 125 bytes)."""
        with self._lock:
            self._check_open("ping")
            self._write(self.protocol.send_ping(payload))

    def pong(self, payload: bytes = b"") -> None:
        """Send an unsolicited pong (at most 125 bytes), a heartbeat RFC 6455 5.5.3 allows."""
        if len(payload) > 125:
            raise ValueError("a pong payload holds at most 125 bytes")
        with self._lock:
            self._check_open("pong")
            self._write(self.protocol.send_pong(payload))

    def flush_preamble(self) -> None:
        """Write the held-back 101 response now, if no frame took it out yet."""
        with self._lock:
            if self._preamble and not self._finished:
                self._write()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake: our close frame now, the socket closed when the peer answers or after ``close_timeout``. Idempotent."""
        with self._lock:
            if self._finished or self.protocol.close_sent or self.protocol.state is State.CLOSED:
                return  # already closing, or aborted (or lost): no close frame after that
            self._write(self.protocol.send_close(code, reason))
        self._notify_closing(code, reason)
        self.loop.call_soon(self._closing)

    def abort(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "") -> None:
        """Close the socket now, without a closing handshake (``code`` is what ``on_close`` hears).

        Sends fail with ConnectionClosed from the moment this returns; the
        socket itself is closed on the loop thread a moment later.
        """
        with self._lock:
            self.protocol.closed(code, reason)
            self._out.clear()
        self._notify_closing(code, reason)
        self.loop.call_soon(lambda: self._finish(code, reason))

    def _init_combining(self) -> None:
        """The state of :meth:`_send_small`'s combining; called once by the stream's ``__init__``."""
        # Synchronize access to _left and _combining: the small frames other senders left while
        # _lock was held by a small send (_combining), which writes them before it lets go.
        self._left_lock = threading.Lock()
        self._left = []
        self._combining = False

    def _send_small(self, frame: bytes) -> None:
        """Write one whole small frame, or leave it to the thread writing now. Any thread.

        Many threads sending on one connection (the callers of a
        RequestHandler) would each wait for the lock while another writes: a
        sleep and a wake-up per message. A sender that finds the lock held by
        another small send leaves its frame instead and returns; the holder
        writes what was left, in the order it was left, before it lets go
        (:meth:`_stop_combining`). Each thread's messages still go out in the
        order it sent them. A frame left on a connection that closes
        meanwhile is dropped with it, as a frame in the write buffer is.
        """
        lock = self._lock
        if not lock.acquire(False):  # positional: the keyword costs CPython twice the call
            self.protocol.check_open()
            with self._left_lock:
                if self._combining:
                    self._left.append(frame)
                    return
            lock.acquire()  # the holder takes no more frames: wait for the lock
        try:
            with self._left_lock:
                self._combining = True
            try:
                self._check_open()
                self._write(frame)
            finally:
                self._stop_combining()
            if len(self._out) > self.high_water and not self.loop.in_loop() and not self._wait_for_room(self.high_water, self.send_timeout):
                self._give_up(CloseCode.ABNORMAL_CLOSURE, "send timed out")
                raise SendTimeout(f"the peer took nothing for {self.send_timeout} s; connection aborted")
        finally:
            lock.release()

    # ------------------------------------------------------------------ under _lock

    def _stop_combining(self) -> None:
        """Write the frames other senders left, take no more, and keep the lock. Requires holding _lock.

        A few rounds at most: senders that keep leaving frames cannot keep the holder
        here; after the last round they wait for the lock instead.
        """
        for round_ in range(8):
            with self._left_lock:
                left, self._left = self._left, []
                if not left or round_ == 7:
                    self._combining = False
                done = not self._combining
            if left and not self._finished and not self.protocol.close_sent:
                self._write(left[0] if len(left) == 1 else b"".join(left))
            if done:
                return

    def _check_open(self, what: str = "send") -> None:
        if self._finished:
            code = self.protocol.close_code or CloseCode.ABNORMAL_CLOSURE
            raise ConnectionClosed(code, self.protocol.close_reason, f"cannot {what}: the connection is closed")
        self.protocol.check_open(what)

    def _write(self, *pieces: Buffer) -> None:
        """Write ``pieces`` (after the preamble, if it is still held) as far as the socket takes them now; queue the rest. Requires _lock."""
        if self._preamble:
            pieces, self._preamble = (self._preamble, *pieces), b""
        if len(pieces) > 1 and sum(map(len, pieces)) < COALESCE_LIMIT:
            pieces = (b"".join(pieces),)  # one send, one TCP segment: a small frame's header and payload together
        for piece in pieces:
            if not self._out:
                try:
                    sent = self._io.send(piece)
                except OSError:
                    return  # the socket is gone: the loop sees it on its next read
                if sent == len(piece):
                    continue
                piece = memoryview(piece)[sent:]
            self._out.append(piece)
        if self._out and not self._writing:
            self._writing = True
            self.loop.call_soon(lambda: self.loop.add_writer(self.sock, self._on_writable))

    def _wait_for_room(self, limit: int, patience: Optional[float]) -> bool:
        """Wait until at most ``limit`` bytes wait (True), or until the peer took nothing for ``patience``
        seconds (False; None: no end). Requires holding _lock (released while waiting), the caller's
        frame last in ``_out``. Raises ConnectionClosed when the connection ended (closed, aborted,
        given up) before the socket took the whole frame: it is lost, and the send did not happen."""
        end = self._taken + len(self._out)  # the caller's frame is written out once _taken reaches this
        release_the_loop()  # a handler on the thread that read its message: the loop writes what it waits for
        taken = self._taken
        deadline = None if patience is None else time.monotonic() + patience
        self._room_limits.append(limit)
        try:
            while len(self._out) > limit and not self._finished:
                # Woken at a waiter's limit, not at each write (dearer than the write); at the deadline,
                # progress made meanwhile starts the peer's patience again (senders adding do not hide it).
                if self._taken != taken:
                    taken = self._taken
                    deadline = None if patience is None else time.monotonic() + patience
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._room.wait(remaining)
        finally:
            self._room_limits.remove(limit)
        if self._taken < end and (self._finished or (self.protocol.state is State.CLOSED and not self.protocol.close_sent)):
            self._check_open()  # what was left of the frame was dropped with the connection
        return True

    def _give_up(self, code: int, reason: str) -> None:
        """Drop the connection for a peer that does not read: no closing handshake (it would not read that either). Requires _lock."""
        self.protocol.closed(code, reason)  # sends fail from now on
        self._out.clear()
        self.loop.call_soon(lambda: self._finish(code, reason))

    # ------------------------------------------------------------------ the loop thread

    def _on_writable(self) -> None:
        finish = False
        with self._lock:
            if self._finished:
                return
            try:
                sent = self._out.send_with(self._io.send)  # as much as the socket takes now
            except OSError:
                sent, finish = 0, True
            if sent == 0 and not finish:
                if self._io.write_wants_read and self._writing:
                    # TLS needs the peer's bytes first: retried after the next read, not at every writable.
                    self._writing = False
                    self.loop.remove_writer(self.sock)
                return
            self._taken += sent
            if not self._out or finish:
                self._writing = False
                self.loop.remove_writer(self.sock)
            if self._room_limits and len(self._out) <= max(self._room_limits):
                self._room.notify_all()  # on a failed write, _finish (below) wakes them all
            done = not self._out and self._closing_now
        if finish:
            self._finish(CloseCode.ABNORMAL_CLOSURE, "connection lost while writing")
        elif done:
            self._finish(self.protocol.close_code or CloseCode.NORMAL_CLOSURE, self.protocol.close_reason)

"""One open websocket driven by the I/O loop instead of a thread of its own: :class:`Stream`.

The pump of :mod:`syncws.engine.connection`, turned inside out. There, a
thread per connection blocks in ``recv`` and wakes at every tick to look at
its deadlines; here the :class:`~syncws.reactor.loop.IOLoop` calls
:meth:`Stream._on_readable` only when the socket has bytes, feeds them to
the sans-I/O :class:`~syncws.protocol.protocol.Protocol`, answers pings and
close frames itself, and hands each message to the connection's
:class:`~syncws.reactor.handler_pool.Lane`, which runs the handler on a
worker thread, in order. Its deadlines (the closing handshake's, keepalive
pings and their pongs) are timers on the loop's heap: a quiet connection
costs no wake-up.

Writing: :meth:`Stream.send` (any thread) writes the frame at once if the
socket takes it; what it does not take waits in the stream's buffer and the
loop flushes it when the socket is writable. A sender waits while more than
``high_water`` bytes wait (at most ``send_timeout``, then the connection is
aborted), so a client that stops reading slows its senders instead of
growing memory; the loop thread itself never waits.

Back-pressure on reading: once ``lane.limit`` messages wait for the handler,
the loop stops reading this socket; the lane's ``on_room`` resumes it, so a
slow handler slows its client through TCP.

Plain and TLS sockets, server side (:mod:`syncws.reactor.socket_io` hides
the difference); the TLS handshake is done before the socket comes here.

Threads: the loop thread runs the reading, the flushing and the deadlines;
:meth:`send`, :meth:`ping`, :meth:`close` and :meth:`abort` are safe from
any thread; ``on_message`` and ``on_close`` run on the lane's worker.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from typing import Any, Callable, Optional, Union

from ..exceptions import ConnectionClosed, ProtocolError
from ..protocol import frames
from ..protocol.payload import Placer
from ..protocol.protocol import Close, CloseCode, Ping, Pong, Protocol, State
from .handler_pool import HandlerPool, LaneClosed
from .loop import IOLoop
from .send_buffer import SendBuffer
from .socket_io import socket_io
from .stream_closing import StreamClosing
from .stream_writing import StreamWriting
from .timers import Timer

__all__ = ["Stream"]

logger = logging.getLogger(__name__)

Message = Union[str, bytes]


class Stream(StreamWriting, StreamClosing):
    """A server-side websocket on an :class:`IOLoop` (see the module docstring).

    Args:
        loop: the loop that reads this socket and keeps its deadlines.
        sock: the connected socket, after the opening handshake; made non-blocking here.
        protocol: the connection's protocol state (server side).
        pool: the handler pool; the stream takes a lane of it, where ``on_message`` and ``on_close`` run, in order.
        limit: messages waiting for the handler past which the socket is not read.
        on_message: called with each message (str or bytes), on the lane's worker.
        on_close: called once with the close code and reason, the lane's last call.
        initial_data: bytes read past the handshake, fed to the protocol first.
        close_timeout: after our close frame, how long the peer has to answer before the socket is closed anyway.
        ping_interval: send a ping after this long without a message from the peer; None: never.
        ping_timeout: abort with 1011 when a ping's pong takes longer than this.
        send_timeout: how long a sender may wait for room in the write buffer before the connection is aborted.
        high_water: bytes waiting to be written past which a sender waits.
        max_send_queue: bytes waiting past which a broadcast (``send_nowait``) gives a peer that reads nothing
            :data:`~syncws.reactor.stream_writing.STALL` seconds, then closes it (1008, "send queue full").
        preamble: bytes written before the first frame (the 101 response; see ``flush_preamble``).
        name: used in log lines.

    Beside them, as the thread engine's connection has them: ``meter`` (what counts the
    messages, set before ``start``) and ``on_closing(code, reason)``, called once, on the
    thread that decided it, the moment the connection starts to end; it must return at once.
    """

    def __init__(
        self,
        loop: IOLoop,
        sock: socket.socket,
        protocol: Protocol,
        pool: HandlerPool,
        on_message: Callable[[Message], None],
        on_close: Callable[[int, str], None],
        *,
        initial_data: bytes = b"",
        close_timeout: float = 5.0,
        ping_interval: Optional[float] = None,
        ping_timeout: Optional[float] = None,
        send_timeout: Optional[float] = 30.0,
        high_water: int = 1 << 20,
        limit: int = 16,
        max_send_queue: int = 4 << 20,
        preamble: bytes = b"",
        name: str = "stream",
    ) -> None:
        self.loop, self.sock, self.protocol = loop, sock, protocol
        self.lane = pool.lane(limit, on_room=self._on_room)
        self.on_message, self.on_close = on_message, on_close
        self.close_timeout, self.ping_interval, self.ping_timeout = close_timeout, ping_interval, ping_timeout
        self.send_timeout, self.high_water, self.max_send_queue, self.name = send_timeout, high_water, max_send_queue, name
        self.meter: Optional[Any] = None
        #: Called with each message on the loop thread before it goes to the lane; True: it was
        #: taken there (a RequestHandler's reply). It must be quick and must not raise.
        self.quick: Optional[Callable[[Message], bool]] = None
        self.on_closing: Optional[Callable[[int, str], None]] = None
        self._closing_notified = threading.Lock()  # one-shot: taken by the first to see the connection end
        self._closed = threading.Event()  # set once the socket is closed
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each send is a whole frame: Nagle's wait for the peer's (delayed) ACK would add 40 ms to a small reply.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._initial = initial_data
        # Synchronize access to _out, _taken, _writing, _preamble, _closing_now, _finished, _room_limits (the buffer
        # sizes the senders waiting on _room wait for) and the protocol's sending half; _room wakes those senders.
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._room_limits: list[int] = []
        self._io = socket_io(sock, self._lock)  # on TLS, each SSL call runs under _lock
        self._init_combining()
        self._out = SendBuffer()  # bytes the socket has not taken yet
        self._taken = 0  # bytes the loop has written out of _out so far: a waiting sender's sign that the peer reads
        self._preamble = preamble  # written before the first frame
        self._writing = False  # the loop watches the socket for writability
        self._closing_now = False  # the close handshake is over: the socket closes once _out is written
        self._finished = False  # the socket is closed and on_close is queued
        # Loop thread only:
        self._reading = False  # the loop watches the socket for reading
        self._paused = False  # reading stopped for the lane's back-pressure
        self._close_timer: Optional[Timer] = None
        self._read_done = False  # the peer's close frame came in: nothing after it is read
        self._failing = False  # a protocol error was answered: what arrives is discarded until the peer's close frame
        self._quiet_timer: Optional[Timer] = None  # a broken stream: closed once the peer is quiet
        self._keepalive = Keepalive(
            loop, ping_interval, ping_timeout, self._keepalive_ping, lambda: self._finish(CloseCode.ABNORMAL_CLOSURE, "keepalive ping timeout")
        )
        frames.load_accelerator()  # numpy's import (0.3 s, once) here, not on the loop amid a large message

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        """Start reading on the loop; returns at once."""
        self.loop.call_soon(self._begin)

    @property
    def state(self) -> State:
        """OPEN, CLOSING (a close frame went out or came in) or CLOSED. Safe from any thread."""
        return State.CLOSED if self._finished else self.protocol.state

    @property
    def closed(self) -> bool:
        """True once the connection is closed for good: the socket closed, or the connection aborted (its socket closes a moment later)."""
        return self._finished or self.protocol.state is State.CLOSED

    @property
    def close_code(self) -> Optional[int]:
        """The close code once the connection ended or is ending (1006: lost without a close frame), else None."""
        return self.protocol.close_code

    @property
    def close_reason(self) -> str:
        """The close reason that goes with :attr:`close_code`."""
        return self.protocol.close_reason

    @property
    def placer(self) -> Optional[Placer]:
        """Where large binary payloads may be read straight into (see :data:`syncws.protocol.payload.Placer`); None: nowhere."""
        return self.protocol.reader.placer

    @placer.setter
    def placer(self, placer: Optional[Placer]) -> None:
        self.protocol.reader.placer = placer  # read on the loop thread when a large payload starts: safe from any thread

    @property
    def extensions(self) -> str:
        """The extensions agreed in the handshake ("" for none)."""
        deflate = self.protocol.deflate
        return deflate.agreement.header_value() if deflate is not None else ""

    def wait_closed(self, timeout: Optional[float] = None) -> bool:
        """Block until the socket is closed; False on timeout."""
        return self._closed.wait(timeout)

    def release(self) -> None:
        """Nothing to free that the close did not (the thread engine's connection closes its socket here)."""

    # ------------------------------------------------------------------ the loop thread

    def _begin(self) -> None:
        self._resume()
        self._keepalive.arm()
        if self._initial:
            data, self._initial = self._initial, b""
            self.protocol.receive_data(data)
            self._handle_events()

    def _resume(self) -> None:
        if not self._finished and not self._reading and not self._read_done:
            self._reading = True
            self._paused = False
            self.loop.add_reader(self.sock, self._on_readable)
            self._handle_events()  # messages read before the pause, still in the protocol's buffer
            if self._io.pending():
                self.loop.call_soon(self._on_readable)  # bytes TLS decrypted before the pause: no readiness will say so

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self._paused = True
            self.loop.remove_reader(self.sock)

    def _on_readable(self) -> None:
        if not self._reading:
            return  # paused or finished since this read was scheduled
        # A large binary payload being read offers its own memory: read straight into it (one copy less).
        view = None if self._failing else self.protocol.payload_buffer()
        try:
            if view is None:
                count = self._io.recv_into(self.loop.read_buffer)
            else:
                with view:
                    count = self._io.recv_into(view)
                if count:
                    self.protocol.payload_received(count)
        except OSError as exc:
            self._finish(CloseCode.ABNORMAL_CLOSURE, f"connection lost: {exc}")
            return
        if count is None:
            return
        if count == 0:
            # The peer is done sending (it may still read: a half-close). The messages before the end
            # are handled first, as a thread reading in order would, and their replies written; then
            # the socket closes (within close_timeout, whatever the handler does).
            self._pause()
            self._read_done = True
            self._arm_close_timer()
            try:
                self.lane.submit(lambda: self.loop.call_soon(self._at_eof))
            except LaneClosed:
                self._at_eof()
            return
        if view is None:
            self.protocol.receive_data(memoryview(self.loop.read_buffer)[:count])  # copied into the protocol's own buffer
        self._keepalive.arm()  # the peer is alive: the next ping waits a whole interval again
        if self._failing:
            self._discard_until_close()
        else:
            self._handle_events()
        if self._io.write_wants_read:
            self._on_writable()  # a TLS write waited for these bytes
        if self._reading and self._io.pending():
            self.loop.call_soon(self._on_readable)  # TLS holds more, which the selector cannot see

    def _at_eof(self) -> None:
        """The peer's end of the stream, once the handler has had what came before it: close (loop thread)."""
        self.protocol.receive_eof()
        self._finish(self.protocol.close_code or CloseCode.ABNORMAL_CLOSURE, self.protocol.close_reason)

    def _handle_events(self) -> None:
        # Paused: what is buffered stays parsed no further, so a lane holds at most its limit.
        while not self._finished and not self._paused:
            try:
                event = self.protocol.next_event()
            except ProtocolError as exc:
                # Failed once the handler has had the messages before the broken frame, as a
                # thread reading in order would; close_timeout bounds a handler that keeps it waiting.
                self._pause()
                self._read_done = True
                self._arm_close_timer()
                try:
                    self.lane.submit(functools.partial(self._fail, exc))
                except LaneClosed:
                    self._fail(exc)
                return
            if event is None:
                return
            if isinstance(event, (str, bytes)):
                if self.meter is not None:
                    self.meter.received(event)
                if self.quick is not None and self.quick(event):
                    continue  # taken on this thread: a reply matched to its caller
                try:
                    pending = self.lane.submit(functools.partial(self.on_message, event))
                except LaneClosed:
                    return
                if pending >= self.lane.limit:
                    self._pause()
            elif isinstance(event, Ping):
                with self._lock:
                    if not self.protocol.close_sent:
                        self._write(self.protocol.send_pong(event.payload))
            elif isinstance(event, Pong):
                self._keepalive.pong()
            elif isinstance(event, Close):
                # Answered once the handler has had the messages that came before it, as a thread
                # reading in order would: their replies still reach the peer, which reads until our
                # close frame. Nothing after a close frame counts, so reading stops; close_timeout
                # bounds a handler that keeps the answer waiting.
                self._pause()
                self._read_done = True
                self._arm_close_timer()
                try:
                    self.lane.submit(functools.partial(self._answer_close, event))
                except LaneClosed:
                    self._answer_close(event)
                return

    def _on_room(self) -> None:
        """The lane drained below its limit (a worker thread): read again."""
        self.loop.call_soon(lambda: self._resume() if self._paused else None)

    def _keepalive_ping(self) -> bool:
        """Send a keepalive ping (loop thread); False when the connection is closing."""
        try:
            self.ping(b"syncws")
        except ConnectionClosed:
            return False
        return True

    def _finish(self, code: int, reason: str) -> None:
        """Close the socket, stop watching it, and queue on_close (loop thread). Once."""
        self._notify_closing(code, reason)  # a no-op when a close frame (ours or the peer's) said it first
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._writing = False
            self._out.clear()
            self.protocol.closed(code, reason)
            self._room.notify_all()
        self.loop.timers.cancel(self._close_timer)
        self.loop.timers.cancel(self._quiet_timer)
        self._keepalive.stop()
        self.loop.remove_reader(self.sock)
        self.loop.remove_writer(self.sock)
        self._reading = False
        try:
            self.sock.close()
        except OSError:
            pass
        self._closed.set()
        final_code = self.protocol.close_code or code
        final_reason = self.protocol.close_reason if self.protocol.close_code else reason
        logger.debug("stream closed: %s %r", final_code, final_reason)
        try:
            self.lane.submit(lambda: self.on_close(final_code, final_reason))
        except LaneClosed:
            pass
        self.lane.close()


class Keepalive:
    """A stream's keepalive on the loop's timers: a ping after ``interval`` of silence, and ``expire()`` when its pong takes over ``timeout``.

    Hearing from the peer only notes the time: the timer, when it fires, sends the
    ping only if the connection really was silent for the interval, and otherwise
    waits for what is left of it. A busy connection so costs one clock reading per
    read, not a timer per read.

    Loop thread only. ``ping()`` sends the ping (False: the connection is closing, so no deadline).
    """

    def __init__(self, loop: IOLoop, interval: Optional[float], timeout: Optional[float], ping: Callable[[], bool], expire: Callable[[], None]) -> None:
        self.loop, self.interval, self.timeout, self._ping, self._expire = loop, interval, timeout, ping, expire
        self._timer: Optional[Timer] = None  # the next look at the silence, or the wait for a pong
        self._heard = 0.0  # when the peer was last heard from (the loop's clock)
        self._awaiting_pong = False
        self._stopped = False

    def arm(self) -> None:
        """The peer was heard from: the next ping after a whole interval of silence."""
        if self.interval is None or self._stopped:
            return
        self._heard = self.loop.timers.clock()
        if self._awaiting_pong:  # the answer came: the pong's deadline goes, the next ping waits an interval from now
            self._awaiting_pong = False
            self.loop.timers.cancel(self._timer)
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.timers.call_later(self.interval, self._look)

    def pong(self) -> None:
        """A pong came in."""
        self._awaiting_pong = False

    def stop(self) -> None:
        """No more pings (the connection ended)."""
        self._stopped = True
        self.loop.timers.cancel(self._timer)

    def _look(self) -> None:
        """The interval since the last look passed: ping if the peer was silent all along, else wait for the rest."""
        assert self.interval is not None  # armed only with an interval
        self._timer = None
        if self._stopped:
            return
        silent_until = self._heard + self.interval
        if self.loop.timers.clock() < silent_until:
            self._timer = self.loop.timers.call_at(silent_until, self._look)
            return
        if not self._ping():
            return
        self._awaiting_pong = True
        if self.timeout is not None:
            self._timer = self.loop.timers.call_later(self.timeout, self._deadline)

    def _deadline(self) -> None:
        self._timer = None
        if self._stopped:
            return
        if self._awaiting_pong:
            self._expire()
        elif self.interval is not None:
            # The pong (or anything) came: the next ping after a whole interval of silence since then.
            self._timer = self.loop.timers.call_at(self._heard + self.interval, self._look)

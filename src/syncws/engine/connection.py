"""One websocket connection over a connected socket: the pump between the socket and the protocol.

:class:`Connection` reads the socket into :class:`~syncws.protocol.Protocol`
(the protocol's rules, without I/O), writes the frames it returns, and keeps
what only a pump can: the send lock, keepalive and the closing handshake. It
stands on three helpers, one per concern: :class:`~syncws.transport.Transport`
(the socket: waits, timeouts, TLS), :class:`~syncws.closing.ClosingHandshake`
(close frames, the close deadline, the closed flag) and
:class:`~syncws.keepalive.Keepalive` (what the reader does with idle ticks).
The same class serves both sides: the server runs one per accepted socket on
that socket's own thread, and :func:`syncws.connect` wraps the socket that
websocket-client opened and shook hands on.

Threads:

* :meth:`Connection.recv` belongs to one *reader* thread at a time (the server's
  connection thread, or the client's owner). It answers pings, finishes the
  closing handshake and enforces keepalive and ``close_timeout``.
* :meth:`Connection.send`, :meth:`Connection.ping` and :meth:`Connection.close`
  are safe from any thread. The send lock makes each frame go out whole and in order.
  The sends are the connection's sending half, mixed in from
  :mod:`syncws.engine.sending` (blocking) and :mod:`syncws.engine.outbox` (never waiting).

Every socket call waits at most a few seconds (the *tick*, which the kernel
enforces on a plain socket: see :mod:`syncws.transport`). A read that times
out is not an error: it is when the reader checks its keepalive and close
deadlines. A write that makes no progress for ``send_timeout`` seconds is: the
peer stopped reading, so the connection is aborted rather than letting one
stuck peer block its senders forever.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from typing import Callable, Optional, Union

from .. import timeouts
from ..exceptions import ConnectionClosed, ProtocolError, SendTimeout
from ..protocol import frames
from ..protocol.deflate import PerMessageDeflate
from ..protocol.outgoing import Outgoing, encode_message
from ..protocol.payload import Placer
from ..protocol.protocol import Close, CloseCode, Message, Ping, Pong, Protocol, State
from . import memory
from .closing import ClosingHandshake
from .keepalive import Keepalive
from .outbox import Meter, Outbox, OutboxSending
from .sending import Sending
from .transport import Abort, ReadTimeout, Transport

__all__ = ["Connection", "Message", "Outgoing", "encode_message", "DEFAULT_MAX_MESSAGE_SIZE"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: Bytes that may wait in a connection's outbox (send_nowait) before the peer is given up as too slow.
DEFAULT_MAX_SEND_QUEUE = 4 * 1024 * 1024


class Connection(Sending, OutboxSending):
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
        deflate: the permessage-deflate codec when the handshake agreed on
            it (:mod:`syncws.deflate`); None: no compression.
        name: used in log lines.

    Who touches what: ``protocol.reader`` (the receiving half, with the
    permessage-deflate inflater), the transport's reads and deadline, and
    ``_keepalive`` belong to the reader thread; ``protocol``'s sending half
    (with the compressor), the transport's writes and the closing
    handshake's deadline are used under ``_send_lock``; ``_closed`` is an Event
    and ``_closing_notified`` a one-shot lock, safe from anywhere.

    The sending half lives in two mixins: :class:`~syncws.engine.sending.Sending`
    (``send``, ``ping``, ``pong``, ``send_parts``, ``flush_preamble``: blocking,
    under the send lock) and :class:`~syncws.engine.outbox.OutboxSending`
    (``send_nowait``, ``send_encoded_nowait``: never waiting on the socket).
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
        max_send_queue: int = DEFAULT_MAX_SEND_QUEUE,
        deflate: Optional[PerMessageDeflate] = None,
        name: str = "connection",
    ) -> None:
        self.sock = sock
        self.is_client = is_client
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self.name = name
        #: The protocol's rules and state. Its receiving half (``protocol.reader``) belongs
        #: to the reader thread; its sending half and its state are used under the send lock.
        self.protocol = Protocol(is_client, max_message_size, deflate)
        self.protocol.receive_data(initial_data)
        self._reader = self.protocol.reader  # called directly on the hot path, one layer less
        self._deflate = deflate  # checked on every send: None keeps the uncompressed path as it was

        # Synchronize writes to the socket (through the transport, which asserts it, and
        # with them its pending preamble) and the sending half of the protocol
        # (close_sent, state, the permessage-deflate compressor): each frame goes out
        # whole, none after the close frame, and compressed ones in the order compressed.
        # The closing handshake's deadline is written under it too.
        self._send_lock = threading.Lock()
        # True while a thread in _send_small holds the send lock: one that writes
        # the frames other senders leave once it lets go. Written under the send
        # lock, read without it (see _send_small for why a stale read is safe).
        self._combining = False
        # One-shot: taken by whichever thread first decides that the connection ends (see on_closing).
        self._closing_notified = threading.Lock()
        #: Called once, as ``on_closing(code, reason)``, when the connection starts to end:
        #: our close frame goes out, the peer's arrives, or the socket is lost. It runs on
        #: the thread that decided it, possibly holding the send lock: it must return at
        #: once and must not send. The server's handlers use it to release waiting calls.
        self.on_closing: Optional[Callable[[int, str], None]] = None
        limits = [t for t in (ping_interval, send_timeout, close_timeout) if t]
        tick = max(0.05, min([*limits, 10.0]) / 2)
        self._io = Transport(
            sock,
            tick=tick,
            send_timeout=send_timeout,
            write_lock=self._send_lock,
            on_idle=self._on_idle,
            on_broken=self.abort,
            preamble=preamble,
            name=name,
        )
        self._closing = ClosingHandshake(self.protocol, self._io, self._send_lock, close_timeout=close_timeout, notify=self._notify_closing)
        self._closed = self._closing.closed  # an Event: set once the connection is closed for good
        self._keepalive = Keepalive(self.protocol, self._closing, self.ping, interval=ping_interval, timeout=ping_timeout, name=name)
        # What send_nowait could not send at once; its writer thread runs only while something waits.
        # A sender finding it full waits while the peer reads, at most send_timeout (30 s without one).
        self._outbox = Outbox(self._drain_outbox, max_send_queue, self._send_queue_full, name, burst_wait=send_timeout or 30.0)
        # Trims of the C library's heaps owed after a large message (reader thread only; see syncws.engine.memory).
        self._trims_owed = 0
        #: What counts this connection's messages (a server's endpoint counters), or None.
        #: Set once, before the connection is handed to its handler.
        self.meter: Optional[Meter] = None
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

    @property
    def placer(self) -> Optional[Placer]:
        """Where large binary payloads may be read straight into (see :data:`syncws.payload.Placer`); None: nowhere."""
        return self._reader.placer

    @placer.setter
    def placer(self, placer: Optional[Placer]) -> None:
        self._reader.placer = placer  # read by the reader thread when a large payload starts: safe from any thread

    @property
    def send_queue_bytes(self) -> int:
        """Bytes of messages from :meth:`send_nowait` waiting for the socket now."""
        return self._outbox.queued_bytes

    @property
    def extensions(self) -> str:
        """The extensions agreed in the handshake, as the server's ``Sec-WebSocket-Extensions`` said ("" for none)."""
        deflate = self.protocol.deflate
        return deflate.agreement.header_value() if deflate is not None else ""

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
        self._io.deadline = timeouts.deadline(timeout)
        next_event = self._reader.next_event
        try:
            while True:
                event = next_event()
                if event is None:
                    self._read_more()
                elif isinstance(event, (bytes, str)):
                    if self.meter is not None:
                        self.meter.received(event)
                    return event
                elif self._on_control(event):
                    return None
        except ReadTimeout:
            raise TimeoutError(f"no message within {timeout} s") from None
        except ProtocolError as exc:
            self._io.deadline = None
            logger.info("%s: protocol error from peer: %s", self.name, exc)
            self._closing.fail(exc.code, exc.reason)
        except (Abort, OSError) as exc:
            self._closing.mark_closed(CloseCode.ABNORMAL_CLOSURE, "")
            logger.debug("%s: connection lost: %r", self.name, exc)
        finally:
            self._io.deadline = None
        return None

    def __iter__(self) -> Iterator[Message]:
        """The messages, as :meth:`recv` returns them, until the connection closes. Reader thread only."""
        while True:
            message = self.recv()
            if message is None:
                return
            yield message
            # Not held while the next one is awaited: a large message handled is freed now
            # (if the caller let go of it too), not when the next message arrives.
            del message

    def _read_more(self) -> None:
        """Give the protocol more bytes: straight into a large payload's own memory where it offers it."""
        if self._reader.largest_message:
            self._owe_trims()
        if self._trims_owed:
            self._pay_trim()
        view = self._reader.payload_buffer()
        if view is None:
            self._reader.receive_data(self._io.recv_some())
        else:
            with view:
                count = self._io.recv_into(view)
            self._reader.payload_received(count)
        self._keepalive.received()

    def _owe_trims(self) -> None:
        """A large message was handed out: owe two trims (reader thread).

        The first is paid at the next wait for the socket, once the message
        has been handled; the second a wait later still (or at an idle tick),
        as the caller may hold on to the message until the next one comes.
        """
        if self._reader.largest_message >= memory.TRIM_AFTER and memory.trimmer.available:
            self._trims_owed = 2
        self._reader.largest_message = 0

    def _pay_trim(self) -> None:
        """Pay one trim owed, unless the process trimmed less than a second ago (reader thread)."""
        if memory.trimmer.trim():
            self._trims_owed -= 1

    def _on_idle(self) -> None:
        """A read waited a tick for nothing (reader thread): the keepalive's deadlines, and a trim still owed."""
        self._keepalive.idle()
        if self._trims_owed:
            self._pay_trim()

    def _on_control(self, event: Union[Ping, Pong, Close]) -> bool:
        """Act on a control frame; return True when it ended the connection."""
        if type(event) is Ping:
            with self._send_lock:
                if self.protocol.close_sent:
                    return False  # we are closing; the peer's close frame will follow
                frame = self.protocol.send_pong(event.payload)
                try:
                    self._io.write(frame)
                except (ConnectionClosed, SendTimeout):
                    pass  # aborted: the next read ends the loop
            return False
        if type(event) is Pong:
            self._keepalive.pong()
            return False
        assert type(event) is Close
        self._closing.answer(event)
        return True

    # ------------------------------------------------------------------ closing

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake. Safe from any thread; returns at once.

        The reader finishes it when the peer's close frame arrives, or drops the
        connection after ``close_timeout``. Calling it again does nothing.
        """
        self._closing.close(code, reason)

    def abort(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "") -> None:
        """Drop the connection without a closing handshake. Safe from any thread.

        A reader blocked in :meth:`recv` wakes up and returns None. ``code``
        and ``reason`` are what ``close_code`` and ``close_reason`` say here
        (no close frame carries them to the peer).
        """
        self._closing.abort(code, reason)

    def release(self) -> None:
        """Close the socket's file descriptor; the reader calls this when it is done."""
        self._closed.set()
        self._io.close()

    def _notify_closing(self, code: int, reason: str) -> None:
        """Call ``on_closing`` if no thread did yet (any thread; see on_closing)."""
        self._outbox.drop()  # messages still waiting are not sent once the connection ends
        if self.on_closing is None or not self._closing_notified.acquire(blocking=False):
            return  # the lock is never released: a one-shot
        try:
            self.on_closing(code, reason)
        except Exception:
            logger.exception("%s: on_closing failed", self.name)

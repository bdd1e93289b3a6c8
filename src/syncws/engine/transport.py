"""The socket under one connection: reads that wait a tick at a time, whole writes, TLS made safe for two threads.

:class:`Transport` knows bytes and sockets, nothing of websocket frames but
how to mask a payload on its way out. :class:`syncws.connection.Connection`
stands on it: it reads what the protocol asks for and writes the frames the
protocol returns.

Every wait lasts at most one *tick* (a few seconds). A read that waits a
tick without data is not an error: the transport calls the connection's idle
hook, which checks its keepalive and close deadlines. A write that makes no
progress for ``send_timeout`` seconds is: the peer stopped reading, so the
transport reports the stream broken and raises
:class:`~syncws.exceptions.SendTimeout`, rather than letting one stuck peer
block its senders forever.

A plain socket stays blocking, and the kernel bounds each wait by the tick
(``SO_RCVTIMEO`` and ``SO_SNDTIMEO``): a read or a write is one system call.
Python's own socket timeout would poll before each of them, a second system
call and a second release of the GIL per read and per write (measured on a
socket pair: 54 to 66 us per round trip against 42 to 43 blocking).

Two mixins hold what is not the reads and writes themselves:
:class:`~syncws.engine.ticks.Ticks` (the tick, the reader's deadline and the
kernel's bounds; :class:`ReadTimeout` is defined there and exported here too)
and :class:`~syncws.engine.tls.TlsCalls` (the TLS lock and the SSL calls).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, TypeVar, Union

from ..exceptions import ConnectionClosed, SendTimeout
from ..protocol import frames
from .ticks import ReadTimeout, Ticks, wait_for_socket
from .tls import TlsCalls

__all__ = ["Transport", "Abort", "ReadTimeout", "RECV_SIZE"]

T = TypeVar("T")
Buffer = Union[bytes, bytearray, memoryview]

RECV_SIZE = 64 * 1024  # one read for many small frames; below malloc's mmap threshold
LEFT_FRAME_LIMIT = 16 * 1024  # a frame up to this size may be left for the writer (see Transport.leave)
_LEFT_FRAMES_MAX = 32  # frames that may wait so: at most 512 KiB
_MASK_SLICE = 256 * 1024  # masked writes go out in slices of this size


class Abort(Exception):
    """Raised inside a read when the socket is gone (end of stream, closed under us), or by the idle hook to end the read."""


class Transport(TlsCalls, Ticks):
    """One connected socket (plain or TLS), read by one thread and written by others.

    Args:
        sock: the connected socket; the transport sets its timeout (non-blocking on TLS).
        tick: the longest single wait, after which a waiting reader runs ``on_idle``.
        send_timeout: a write that makes no progress this long fails; None: wait.
        write_lock: the lock that every writer holds around a write (the
            connection's send lock); the write methods assert it.
        on_idle: called by a reader that waited a tick without data; it may
            raise :class:`Abort` to end the read.
        on_broken: called when a write fails, before the exception is raised:
            part of a frame may be out, so the stream cannot go on.
        preamble: bytes to write ahead of the first write (the server's 101 response).
        name: used in error messages.

    Threads: the reads and :attr:`deadline` belong to one reader thread at a
    time; the writes and ``_preamble`` to the holder of ``write_lock``;
    :meth:`leave`, :meth:`shorten_tick`, :meth:`shutdown` and :meth:`close`
    are safe from any thread. The tick and deadline bookkeeping is
    :class:`~syncws.engine.ticks.Ticks`'s, the TLS calls
    :class:`~syncws.engine.tls.TlsCalls`'s.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        tick: float,
        send_timeout: Optional[float],
        write_lock: threading.Lock,
        on_idle: Callable[[], None],
        on_broken: Callable[[], None],
        preamble: bytes = b"",
        name: str = "connection",
    ) -> None:
        self.sock, self.send_timeout, self.name = sock, send_timeout, name
        self._write_lock = write_lock
        self._on_idle, self._on_broken = on_idle, on_broken
        # Written ahead of the next write, under write_lock only: the 101 response, or the
        # rest of a frame that write_now wrote in part.
        self._preamble = preamble
        # Whole small frames that writers who found write_lock taken left for its holder
        # (flat combining: see leave). Appended by any thread without the lock
        # (deque.append and popleft are atomic), taken by the lock's holder.
        self._left: deque[bytes] = deque()
        self._init_tls(sock)
        self._init_ticks(tick)

    # ------------------------------------------------------------------ reading (reader thread)

    def recv_some(self, size: int = RECV_SIZE) -> bytes:
        """Up to ``size`` bytes from the socket: at least one."""
        data: bytes = self._read(self.sock.recv, size)
        return data

    def recv_into(self, view: memoryview) -> int:
        """Read into ``view``; the count, at least one."""
        count: int = self._read(self.sock.recv_into, view)
        return count

    def _read(self, call: Callable[[Any], T], arg: Any) -> T:
        """Run one socket read, waiting for data as long as it takes, with ``on_idle`` every tick.

        Raises Abort at the end of the stream and ReadTimeout when
        :attr:`deadline` passes first; nothing is read in that case.
        """
        if self._tls_lock is not None:
            result = self._tls_call(call, arg, reading=True)
        else:
            while True:
                deadline = self.deadline
                if deadline is None:
                    if self._read_wait != self.tick:  # a read with a deadline lowered it
                        self._bound_read_wait(self.tick)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ReadTimeout()
                    # Whole milliseconds, so that reads in a row rarely need a new value.
                    wait = min(self.tick, max(0.001, round(left, 3)))
                    if wait != self._read_wait:
                        self._bound_read_wait(wait)
                try:
                    result = call(arg)
                    break
                except (BlockingIOError, socket.timeout):  # the kernel's bound passed without data
                    if deadline is not None and time.monotonic() >= deadline:
                        raise ReadTimeout() from None
                    self._on_idle()
        if not result:
            raise Abort("end of stream")
        return result

    def discard_until_quiet(self, quiet: float, until: float) -> None:
        """Read and drop bytes until the peer sends nothing for ``quiet`` seconds, the stream ends, or ``until`` (monotonic) passes."""
        try:
            while time.monotonic() < until and wait_for_socket(self.sock, True, quiet):
                if not (self._tls_call(self.sock.recv, RECV_SIZE, reading=True) if self._tls_lock else self.sock.recv(RECV_SIZE)):
                    return
        except (OSError, Abort):  # socket.timeout included: the peer went quiet
            pass

    # ------------------------------------------------------------------ writing (under write_lock)

    def leave(self, frame: bytes) -> bool:
        """Leave a whole frame for the holder of ``write_lock`` to write ahead of its next frame. Any thread.

        For a writer that found the lock taken: instead of waiting for it (a
        sleep and a wake-up per write when many threads send on one
        connection), it leaves its frame, and whoever holds the lock writes
        the frames left, in order and in one system call with its own. False
        (nothing left) for a frame over :data:`LEFT_FRAME_LIMIT` or when 32
        wait already: the writer then waits for the lock as usual. The one
        that leaves a frame must make sure someone writes it (see
        ``Connection._send_small``).
        """
        if len(frame) > LEFT_FRAME_LIMIT or len(self._left) >= _LEFT_FRAMES_MAX:
            return False
        self._left.append(frame)
        return True

    @property
    def frames_left(self) -> bool:
        """Whether frames left by other writers wait. A read without the lock."""
        return bool(self._left)

    def drop_left(self) -> int:
        """Forget the frames left (the connection cannot send them any more); how many. Requires ``write_lock``."""
        assert self._write_lock.locked()
        count = len(self._left)
        self._left.clear()
        return count

    def _take_left(self) -> bytes:
        """The frames left so far, end to end, taken off the queue. Requires ``write_lock``."""
        left = self._left
        return b"".join([left.popleft() for _ in range(len(left))])

    def write(self, data: Buffer, continuing: bool = False) -> None:
        """Write all of ``data`` (after the preamble, if still pending). Requires ``write_lock``.

        Unless ``continuing`` (``data`` goes on a frame whose start the last
        write carried), the frames other writers left go out ahead of it.
        Raises SendTimeout if the peer read nothing for ``send_timeout``, and
        ConnectionClosed if the socket failed; ``on_broken`` runs first.
        """
        assert self._write_lock.locked()
        if self._left and not continuing:
            data = self._preamble + self._take_left() + data
            self._preamble = b""
        elif self._preamble:
            data = self._preamble + data
            self._preamble = b""
        if not data:
            return
        if self._tls_lock is None:
            # Most writes go out whole in one call: no view, no clock, unless they do not.
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, socket.timeout):
                sent = 0
            except OSError as exc:
                self._on_broken()
                raise ConnectionClosed(1006, "", f"{self.name}: send failed: {exc}") from exc
            if sent == len(data):
                return
            view = memoryview(data)[sent:]
            # A send that took nothing waited a tick (SO_SNDTIMEO) for room first.
            last_progress = time.monotonic() - (self.tick if not sent else 0.0)
        else:
            view = memoryview(data)
            last_progress = time.monotonic()
        while view:
            try:
                sent = self._tls_call(self.sock.send, view, reading=False) if self._tls_lock is not None else self.sock.send(view)
            except (BlockingIOError, socket.timeout):  # a tick without progress (SO_SNDTIMEO, or the TLS loop)
                if self.send_timeout is not None and time.monotonic() - last_progress >= self.send_timeout:
                    self._on_broken()
                    raise SendTimeout(f"{self.name}: peer read nothing for {self.send_timeout} s") from None
                continue
            except OSError as exc:
                self._on_broken()
                raise ConnectionClosed(1006, "", f"{self.name}: send failed: {exc}") from exc
            view = view[sent:]
            last_progress = time.monotonic()

    @property
    def pending(self) -> int:
        """Bytes waiting to go out ahead of the next write: the preamble, or the rest of a frame :meth:`write_now` wrote in part."""
        return len(self._preamble)

    def write_now(self, data: Buffer) -> bool:
        """Write what the socket takes at once, without waiting; the rest goes out ahead of the next write. Requires ``write_lock``.

        Returns True when all of ``data`` went out. While bytes wait already,
        nothing is written: ``data`` waits behind them. The next
        :meth:`write` (``write(b"")`` to flush alone) writes what waits
        first, so a frame never has another written into its middle. On TLS
        the rest is the whole of ``data`` (OpenSSL's retry after it would
        block must carry the same bytes, which the next write does).
        """
        assert self._write_lock.locked()
        if self._preamble:
            self._preamble += self._take_left() + bytes(data)
            return False
        if self._left:
            data = self._take_left() + data
        try:
            if self._tls_lock is not None:
                with self._tls_lock:
                    sent = self.sock.send(data)  # the socket is non-blocking on TLS
            else:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)  # what fits now, without waiting
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, socket.timeout):
            sent = 0
        except OSError as exc:  # the peer is gone, or the socket was closed under us
            self._on_broken()
            raise ConnectionClosed(1006, "", f"{self.name}: send failed: {exc}") from exc
        if sent < len(data):
            self._preamble = bytes(memoryview(data)[sent:])
            return False
        return True

    def write_masked(self, parts: tuple[Buffer, ...], mask_key: bytes) -> None:
        """Mask ``parts``, one payload end to end, with ``mask_key`` and write it a slice at a time. Requires ``write_lock``.

        The payload goes on the frame whose header the last write carried.

        Masking needs a copy. One small buffer, reused for every slice, stays
        in the CPU cache; a copy of the whole payload would cost a page fault
        per 4 KiB of fresh memory, which is slower than the masking itself.
        """
        assert self._write_lock.locked()
        scratch = bytearray(_MASK_SLICE)
        offset = 0
        for part in parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), _MASK_SLICE):
                piece = view[start : start + _MASK_SLICE]
                out = memoryview(scratch)[: len(piece)]
                frames.mask_into(out, piece, frames.key_at(mask_key, offset))
                self.write(out, continuing=True)
                offset += len(piece)

    # ------------------------------------------------------------------ ending (any thread)

    def shutdown(self) -> None:
        """Shut the socket down both ways: a reader blocked on it wakes up."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Close the socket's file descriptor. Any thread; on TLS, never during another thread's SSL call.

        An SSL object keeps the descriptor's number: a call in flight when it
        closed would go on with whatever socket the process opens next under
        that number, another peer's. Under the TLS lock (held for one
        non-blocking call at a time) the close waits for that call to end, and
        a later call finds the socket closed.
        """
        try:
            if self._tls_lock is None:
                self.sock.close()
            else:
                with self._tls_lock:
                    self.sock.close()
        except OSError:
            pass

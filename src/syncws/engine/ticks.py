"""How long one wait on a connection's socket lasts: the tick, the reader's deadline, and the kernel's bounds on a plain socket.

:class:`Ticks` is mixed into :class:`syncws.engine.transport.Transport`: it
sets the socket's waiting up (a plain socket blocking, each read and write
bounded by the kernel with ``SO_RCVTIMEO`` and ``SO_SNDTIMEO``; a TLS socket
non-blocking, its waits done in ``poll()`` by :mod:`syncws.engine.tls`)
and keeps the kernel's read bound in step with the tick and the reader's
:attr:`~Ticks.deadline`. The read loop itself (``Transport._read``) stays in
the transport and reads these attributes directly: it runs once per read.
:class:`ReadTimeout` is what a read raises once that deadline passed.

Threads: :attr:`~Ticks.deadline` belongs to the reader thread;
:meth:`~Ticks.shorten_tick` is safe from any thread; ``_wait_lock`` orders
the changes to the kernel's read bound between the two.

Imports: the standard library only.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from typing import Optional

__all__ = ["Ticks", "ReadTimeout", "wait_for_socket"]


def wait_for_socket(sock: socket.socket, readable: bool, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to be readable (or writable); True once it is.

    ``poll()`` where the system has it: ``select()`` takes no file descriptor
    past 1023 (ValueError), which a process with a thousand connections has.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN if readable else select.POLLOUT)
        return bool(poller.poll(max(0.0, timeout) * 1000))
    ready = select.select([sock] if readable else [], [] if readable else [sock], [], max(0.0, timeout))
    return bool(ready[0] or ready[1])


class ReadTimeout(Exception):
    """Raised by a read, before it reads anything, once the reader's :attr:`Transport.deadline` passed."""


class Ticks:
    """The tick and deadline bookkeeping of :class:`syncws.engine.transport.Transport` (which mixes it in).

    ``sock`` and ``_tls_lock`` (None on a plain socket) are the transport's.
    """

    sock: socket.socket
    _tls_lock: Optional[threading.Lock]

    def _init_ticks(self, tick: float) -> None:
        """Set the waits up: a read or a write waits at most ``tick`` seconds. Called once by the transport's ``__init__``."""
        #: The reader's: when the current read gives up with ReadTimeout (None: never).
        self.deadline: Optional[float] = None
        #: Shortened (never lengthened) by any thread, read by the reader: a stale
        #: value only makes it wake one tick later.
        self.tick = tick
        # Synchronize access to _read_wait, the kernel's bound on a read (SO_RCVTIMEO) as
        # last set: the reader lowers it for a read with a deadline, shorten_tick from any
        # thread, and neither may raise it over the other's value.
        self._wait_lock = threading.Lock()
        self._read_wait = tick
        if self._tls_lock is not None:
            self.sock.settimeout(0.0)
        else:
            self.sock.settimeout(None)
            self._set_kernel_timeout(socket.SO_SNDTIMEO, tick)
            self._set_kernel_timeout(socket.SO_RCVTIMEO, tick)

    def shorten_tick(self, tick: float) -> None:
        """Make waits last at most ``tick`` seconds from now on. Safe from any thread."""
        self.tick = min(self.tick, tick)
        if self._tls_lock is None:
            self._set_kernel_timeout(socket.SO_SNDTIMEO, self.tick)
            self._bound_read_wait(self.tick, lower_only=True)

    def _bound_read_wait(self, wait: float, lower_only: bool = False) -> None:
        """Make the kernel end a blocking read after ``wait`` seconds without data (any thread)."""
        with self._wait_lock:
            if wait == self._read_wait or (lower_only and wait > self._read_wait):
                return
            self._read_wait = wait
            self._set_kernel_timeout(socket.SO_RCVTIMEO, wait)

    def _set_kernel_timeout(self, option: int, seconds: float) -> None:
        """Bound each blocking read (SO_RCVTIMEO) or write (SO_SNDTIMEO) of the plain socket: it then fails with EAGAIN."""
        # A zero timeval means "wait forever" to the kernel: never less than a microsecond.
        whole, micros = divmod(max(1, round(seconds * 1e6)), 1_000_000)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, option, struct.pack("@ll", whole, micros))
        except OSError:  # closed under us: the next read or write says so
            pass

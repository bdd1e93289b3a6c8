"""TLS made safe for two threads: one lock around every SSL call, the waits outside it.

OpenSSL's objects are not safe for a read and a write at once from two
threads, which a connection does (its reader, and whichever thread sends).
:class:`TlsCalls` is mixed into :class:`syncws.engine.transport.Transport`:
on a TLS socket (made non-blocking by :mod:`syncws.engine.ticks`) every SSL
call runs under ``_tls_lock`` through :meth:`TlsCalls._tls_call`, and a call
that would block waits in ``poll()`` with the lock let go, a tick at a
time. On a plain socket ``_tls_lock`` is None and nothing here runs.

Threads: the reader thread (reads) and the holder of the connection's send
lock (writes), at the same time; the lock is held only for the SSL call itself.

Imports: the standard library, and :mod:`syncws.engine.ticks` of its own
package for :class:`~syncws.engine.ticks.ReadTimeout`.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any, Callable, Optional, TypeVar

from .ticks import ReadTimeout, wait_for_socket

__all__ = ["TlsCalls"]

T = TypeVar("T")


class TlsCalls:
    """The TLS calls of :class:`syncws.engine.transport.Transport` (which mixes it in).

    ``sock``, ``tick``, ``deadline``, ``send_timeout`` and ``_on_idle`` are the transport's.
    """

    sock: socket.socket
    tick: float
    deadline: Optional[float]
    send_timeout: Optional[float]
    _on_idle: Callable[[], None]

    def _init_tls(self, sock: socket.socket) -> None:
        """Make the TLS lock if ``sock`` is a TLS socket. Called once by the transport's ``__init__``, before the waits are set up."""
        # OpenSSL's objects are not safe for a read and a write at once from two
        # threads (seen as spurious EAGAIN and dropped connections). On TLS the
        # socket is made non-blocking and every SSL call runs under this lock,
        # held only for the call itself: waiting happens in poll(), unlocked.
        self._tls_lock: Optional[threading.Lock] = threading.Lock() if isinstance(sock, ssl.SSLSocket) else None

    def _tls_call(self, call: Callable[[Any], T], arg: Any, reading: bool) -> T:
        """Run one SSL call under the TLS lock; wait for the socket (poll), unlocked, when it would block.

        A reader that waits a tick without data runs the idle hook; a writer
        that makes no progress for ``send_timeout`` raises socket.timeout,
        which the write loop turns into SendTimeout.
        """
        assert self._tls_lock is not None
        started = time.monotonic()
        while True:
            with self._tls_lock:
                try:
                    return call(arg)
                except ssl.SSLWantReadError:
                    wait_read = True
                except ssl.SSLWantWriteError:
                    wait_read = False
            deadline = self.deadline if reading else None
            wait = self.tick if deadline is None else max(0.0, min(self.tick, deadline - time.monotonic()))
            if wait_for_socket(self.sock, wait_read, wait):
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise ReadTimeout()
            if reading:
                self._on_idle()
            elif self.send_timeout is not None and time.monotonic() - started >= self.send_timeout:
                raise socket.timeout("TLS send made no progress")

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

Peers may not be as careful: CPython does not serialize the calls on one SSL
object (python/cpython#143756), and clients that read on one thread while
another writes (the ``websockets`` package's sync client does) can lose or
garble the bytes they write while their reader takes in a TLS 1.3 session
ticket, which a server sends just after the handshake, as the client writes
its HTTP request. :func:`server_context`, the context syncws makes from
certificate files, sends no tickets: a websocket connection is long-lived
and gains next to nothing from resuming a TLS session.

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

__all__ = ["TlsCalls", "server_context"]

T = TypeVar("T")


def server_context(certfile: str, keyfile: Optional[str] = None) -> ssl.SSLContext:
    """A server's TLS context with the certificate chain from ``certfile`` (and its key from
    ``keyfile``, unless ``certfile`` holds it), sending no TLS 1.3 session tickets (see the
    module's docstring). Raises OSError when a file cannot be read, ssl.SSLError when it holds no
    certificate chain with its key."""
    # What create_default_context(Purpose.CLIENT_AUTH) makes on Python 3.10+; on 3.9 that is a
    # context for either side, where num_tickets cannot be set.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    # No tickets: a peer whose reader would take one while its writer sends the request can lose the request.
    context.num_tickets = 0
    return context


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

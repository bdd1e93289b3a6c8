"""Non-blocking reads and writes of a :class:`~syncws.reactor.stream.Stream`, on a plain or a TLS socket.

The stream asks for bytes and gives bytes; this module hides how the socket
says "not now". On a plain socket that is ``BlockingIOError``. On a TLS socket
(``ssl.SSLSocket``, its TLS handshake done on the connection's thread) it is
``SSLWantReadError`` or ``SSLWantWriteError``, and OpenSSL adds three rules
that :class:`TlsIO` keeps:

* one SSL object must not run a read and a write at once from two threads:
  every SSL call runs under the stream's lock (``_lock``, which already
  guards its writes), held for the call only, which never blocks;
* a write that would block must be repeated with the same bytes: the retry
  passes the same length again, which the stream still holds at the front
  of its buffer (it drops bytes only once they are written);
* decrypted bytes can wait inside OpenSSL where the selector cannot see them:
  :meth:`TlsIO.pending` says so, and the stream reads them at once.

A TLS write can need the peer's bytes first (a renegotiation): ``send``
returns 0 with ``write_wants_read`` set, and the stream retries after its next read
instead of waiting for a writability that would come at once, again and again.

Threads: ``recv_into`` and ``pending`` on the loop thread; ``send`` under
the stream's lock, from any thread.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Optional, Union

__all__ = ["SocketIO", "TlsIO", "socket_io"]

Buffer = Union[bytes, bytearray, memoryview]

#: At most this much in one TLS write: the length a write that would block must be retried with.
TLS_WRITE_SIZE = 256 * 1024


class SocketIO:
    """Reads and writes on a plain, non-blocking socket."""

    write_wants_read = False  # a plain socket's write never waits for a read

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv_into(self, buffer: Union[bytearray, memoryview]) -> Optional[int]:
        """Bytes read into ``buffer`` (0: the peer's end of the stream), or None when there is nothing now. Raises OSError when the socket failed."""
        try:
            return self.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return None

    def pending(self) -> bool:
        """Whether bytes were read from the socket that ``recv_into`` has not returned yet."""
        return False

    def send(self, data: Buffer) -> int:
        """Bytes of ``data`` the socket took now (0: none). Requires the stream's lock; raises OSError when the socket failed."""
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0


class TlsIO(SocketIO):
    """Reads and writes on a non-blocking TLS socket, each SSL call under ``lock`` (the stream's)."""

    def __init__(self, sock: ssl.SSLSocket, lock: threading.Lock) -> None:
        super().__init__(sock)
        self.tls = sock
        self.lock = lock
        # Under lock: the length of a write that would block, which its retry must repeat
        # (0: none pending); and whether that write waits for the peer's bytes.
        self._retry = 0
        self.write_wants_read = False

    def recv_into(self, buffer: Union[bytearray, memoryview]) -> Optional[int]:
        with self.lock:
            try:
                return self.sock.recv_into(buffer)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                # WantWrite: OpenSSL must send first (a renegotiation); the stream's writes
                # and the peer's next bytes move it on.
                return None

    def pending(self) -> bool:
        with self.lock:
            return self.tls.pending() > 0

    def send(self, data: Buffer) -> int:
        size = self._retry or min(len(data), TLS_WRITE_SIZE)
        try:
            sent = self.sock.send(memoryview(data)[:size])
        except ssl.SSLWantWriteError:
            self._retry = size
            return 0
        except ssl.SSLWantReadError:
            self._retry, self.write_wants_read = size, True
            return 0
        except (BlockingIOError, InterruptedError):
            self._retry = size
            return 0
        self._retry, self.write_wants_read = 0, False
        return sent


def socket_io(sock: socket.socket, lock: threading.Lock) -> SocketIO:
    """The reads and writes for ``sock``: :class:`TlsIO` for a TLS socket, under ``lock``; else :class:`SocketIO`."""
    if isinstance(sock, ssl.SSLSocket):
        return TlsIO(sock, lock)
    return SocketIO(sock)

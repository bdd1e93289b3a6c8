"""What a :class:`~syncws.reactor.stream.Stream` has written that its socket has not taken yet.

A large message that the socket does not take at once waits here while the
loop flushes it. Copying it into one growing buffer would cost as much as
sending it, and more: the copy lands in fresh memory, a page fault per 4 KiB.
So a large piece whose bytes cannot change (a ``bytes`` object, or a view of
one) waits as a view of the sender's own object, and only small pieces are
copied, into a shared buffer that goes out in one send with its neighbours
(a burst of small frames is one system call, as before).

A piece of a mutable object (a ``bytearray``, a numpy array) is copied, small
or large: the sender may change it once its send has returned, while some of
it still waits.

Not thread-safe: the stream's ``_lock`` guards it, as it guards every write.
"""

from __future__ import annotations

from typing import Callable, Union

__all__ = ["SendBuffer", "SHARE_FROM"]

Buffer = Union[bytes, bytearray, memoryview]

#: Immutable pieces from this size on wait as views of their own object; smaller ones are copied.
SHARE_FROM = 64 * 1024


def _immutable(piece: Buffer) -> bool:
    return isinstance(piece, bytes) or (isinstance(piece, memoryview) and isinstance(piece.obj, bytes))


class SendBuffer:
    """The bytes waiting to be sent, in order: shared views of large immutable pieces and copies of the rest."""

    __slots__ = ("_pieces", "_size")

    def __init__(self) -> None:
        # Each piece is a bytearray of our own (copies, small pieces run together) or a
        # read-only memoryview of a sender's bytes; none is empty. A list, not a deque: it is
        # short (small pieces run together), and an empty deque costs 600 bytes per connection.
        self._pieces: list[Union[bytearray, memoryview]] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def append(self, piece: Buffer) -> None:
        """Add ``piece`` at the end: shared if large and immutable, else copied."""
        size = piece.nbytes if isinstance(piece, memoryview) else len(piece)  # a view may have items of several bytes
        if not size:
            return
        self._size += size
        if size >= SHARE_FROM and _immutable(piece):
            self._pieces.append(memoryview(piece).cast("B"))
            return
        tail = self._pieces[-1] if self._pieces else None
        if isinstance(tail, bytearray):
            tail += piece
        else:
            self._pieces.append(bytearray(piece))

    def send_with(self, send: Callable[[Buffer], int]) -> int:
        """Hand the pieces in order to ``send`` (which returns how many bytes it took) until it takes less than
        a whole piece or nothing is left; drop what it took, and return how much that was.

        ``send`` may raise (OSError): what it took before stays taken.
        """
        total = 0
        pieces = self._pieces
        while pieces:
            head = pieces[0]
            sent = send(head)
            if sent <= 0:
                break
            total += sent
            self._size -= sent
            if sent == len(head):
                del pieces[0]
                continue
            if isinstance(head, bytearray):
                del head[:sent]  # O(1): a bytearray drops its front by moving its start
            else:
                pieces[0] = head[sent:]
            break
        return total

    def clear(self) -> None:
        """Forget every byte waiting (the connection cannot send them any more)."""
        self._pieces.clear()
        self._size = 0

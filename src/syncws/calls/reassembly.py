"""Putting a binary reply back together from its parts: :class:`Transfer` and :class:`ReplyAssembler`.

The format of the parts is :mod:`syncws.callformat`'s. A binary reply is
split between two threads: the connection's reader checks each part's place
(:func:`~syncws.callformat.check_part`) and queues it; the caller, otherwise
idle, checks each part's CRC-32 while the next ones arrive (zlib releases the
GIL, so the two run at once), copies it into the result, allocated once at
the announced size, and lets it go. A transfer holds the result and the
parts still queued, never every part and the result at once.

Where the connection lets it (a :data:`~syncws.payload.Placer`, see
:meth:`Transfer.place`), a large part is read straight into its place in the
result, unmasked there, and never held in memory of its own: the caller then
only checks its CRC-32 there. That saves the part's own memory (a page fault
per 4 KiB of it) and a copy.
"""

from __future__ import annotations

import io
import logging
import threading
from typing import Any, Callable, Optional, Union

from ..exceptions import RequestError, RequestTimeout
from ..protocol.payload import PlacedPayload
from . import callformat

__all__ = ["Transfer", "ReplyAssembler", "Progress", "describe"]

logger = logging.getLogger(__name__)

#: ``progress(bytes_received, total_bytes)``, called on the connection's thread.
Progress = Callable[[int, int], Any]

BytesLike = Union[bytes, bytearray, memoryview]


def describe(exc: BaseException) -> str:
    """An exception as a reason: its message for a ValueError (the checks' own words), else ``Type: message``."""
    return str(exc) if type(exc) is ValueError else f"{type(exc).__name__}: {exc}"


class Transfer:
    """One binary reply in flight: the reader thread :meth:`add`\\ s parts, the caller :meth:`collect`\\ s the value.

    Built on the reader thread from the reply's header (checked with
    :func:`~syncws.callformat.check_binary_header`); the result is allocated
    then, so a header that cannot be taken (a bad array layout: ValueError;
    a size that cannot be allocated: MemoryError) raises at once.
    :meth:`fail` ends it from any thread.
    """

    def __init__(self, header: dict[str, Any], call_id: int, cmd: Any, progress: Optional[Progress] = None) -> None:
        self.header = header
        self.call_id = call_id
        self.cmd = cmd
        self._progress = progress
        self._size: int = header["size"]
        self._assembler = ReplyAssembler(header)  # the caller's once built: only collect touches it
        # Where the next part must fall; the reader thread's alone.
        self._next_index = 0
        self._next_offset = 0
        # Synchronize access to _queue, _complete and _error; _changed (on this
        # lock) is notified whenever one of them changes.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Parts for the caller: (its bytes, or None when they are in place already; its CRC-32 as announced; its length).
        self._queue: list[tuple[Optional[memoryview], int, int]] = []
        self._complete = self._size == 0  # the last part is queued
        self._error: Optional[BaseException] = None

    def place(self, part: callformat.PartHeader, length: int) -> Optional[memoryview]:
        """Where part ``part`` of ``length`` bytes goes in the result, checked as :meth:`add` checks it (reader thread).

        The reader reads it straight there and then hands :meth:`add` a
        :class:`~syncws.payload.PlacedPayload`. ValueError for a part out of
        place; None once the transfer failed.
        """
        if self.failed:
            return None
        callformat.check_part(part, length, self._next_index, self._next_offset, self.header)
        target = self._assembler.target(part.offset, length)
        self._next_index += 1
        self._next_offset += length
        return target

    @property
    def failed(self) -> bool:
        """Whether the transfer ended with an error."""
        with self._changed:
            return self._error is not None

    def add(self, part: callformat.PartHeader, message: BytesLike) -> None:
        """Check a part's place and queue it for the caller (reader thread); ValueError if it is out of place.

        A :class:`~syncws.payload.PlacedPayload` was checked by :meth:`place`
        and is in place already: only its CRC-32 is left to check.
        """
        data: Optional[memoryview]
        if isinstance(message, PlacedPayload):
            data, length = None, message.length - callformat.PART_HEADER.size
            last = part.part + 1 == part.parts
        else:
            data = memoryview(message)[callformat.PART_HEADER.size :]
            length = len(data)
            last = callformat.check_part(part, length, self._next_index, self._next_offset, self.header)
            self._next_index += 1
            self._next_offset += length
        with self._changed:
            if self._error is not None:
                return
            self._queue.append((data, part.crc32, length))
            self._complete = last
            self._changed.notify_all()
        if self._progress is not None:
            try:
                self._progress(self._next_offset, self._size)
            except Exception:
                logger.exception("progress callback of call %d failed", self.call_id)

    def fail(self, error: BaseException) -> bool:
        """End the transfer with ``error``, raised by :meth:`collect`; False if it had failed already. Any thread."""
        with self._changed:
            if self._error is not None:
                return False
            self._error = error
            self._queue = []
            self._changed.notify_all()
        return True

    def collect(self, timeout: Optional[float]) -> dict[str, Any]:
        """Check and copy the parts as they come, and return the finished reply (caller thread).

        ``timeout`` bounds each wait for the next part, so a transfer that
        keeps moving does not time out. Raises RequestTimeout, the error the
        transfer was failed with, or RequestError 502 for a part that fails its
        CRC-32 check or cannot be copied.
        """
        index = 0
        while True:
            parts, complete = self._next_parts(timeout)
            parts.reverse()
            while parts:  # popped one by one: each message is let go once it is copied
                self._copy(*parts.pop(), index=index)
                index += 1
            if complete:
                reply = callformat.binary_reply_fields(self.header)
                try:
                    reply["data"] = self._assembler.value()
                except Exception as exc:  # whatever the parts make, the call ends with a 502
                    raise self._failed(f"damaged binary reply: {describe(exc)}") from None
                return reply

    def _next_parts(self, timeout: Optional[float]) -> tuple[list[tuple[Optional[memoryview], int, int]], bool]:
        """Wait for parts (or the end); take those queued and whether the last is among them (caller thread)."""
        with self._changed:
            if not self._ready():
                self._changed.wait(timeout)
                if not self._ready():
                    raise RequestTimeout(self.call_id, self.cmd, timeout)
            if self._error is not None:
                raise self._error
            parts, self._queue = self._queue, []
            return parts, self._complete

    def _ready(self) -> bool:
        """Whether the caller has something to do. This method requires holding _lock."""
        assert self._lock.locked()
        return bool(self._queue) or self._complete or self._error is not None

    def _copy(self, data: Optional[memoryview], checksum: int, length: int, index: int) -> None:
        """Check a part's CRC-32 and copy it into the result, or check it there when it was placed (caller thread)."""
        if data is not None and callformat.crc32(data) != checksum:
            raise self._failed(f"damaged binary reply: part {index} failed its CRC-32 check")
        try:
            if data is None:
                if self._assembler.take_placed(length) != checksum:
                    raise self._failed(f"damaged binary reply: part {index} failed its CRC-32 check")
            else:
                self._assembler.add(data)
        except RequestError:
            raise
        except Exception as exc:  # whatever the part holds, the call ends with a 502
            raise self._failed(f"damaged binary reply: {describe(exc)}") from None

    def _failed(self, reason: str) -> RequestError:
        """Fail with a 502 RequestError, and return that error for the caller to raise."""
        error = RequestError(502, reason, callformat.binary_reply_fields(self.header))
        self.fail(error)
        return error


class ReplyAssembler:
    """Builds the value of a binary reply from its parts: bytes, or a writable ndarray.

    The result is allocated once, at the size the reply header announced, and
    each part is copied into its place as soon as it is added, so a transfer
    holds the result and the parts not yet added, not every part and then the
    result too. A bytes result is filled in place through ``io.BytesIO``'s
    writable view and handed out without a final copy (see
    ``Connection._read_large``). Not thread-safe: one thread adds and takes
    the value.

    Raises ValueError, at once, for a header whose array description does not
    fit its size, or for an array reply when numpy is not installed.
    """

    def __init__(self, header: dict[str, Any]) -> None:
        self._size: int = header["size"]
        self._array: Optional[tuple[Any, tuple[int, ...]]] = None
        self._holder: Optional[io.BytesIO] = None
        self._buffer: Any = None
        if header.get("dataType") == "ndarray":
            self._array = callformat.array_layout(header, self._size)
            # Uninitialized, aligned memory that the caller may write to: no pass to zero it first.
            self._buffer = callformat.numpy_module().empty(self._size, dtype="u1")
        else:
            self._holder = io.BytesIO(bytes(self._size))
        self._filled = 0

    def add(self, data: BytesLike) -> None:
        """Copy the next part into place; raises ValueError if it runs past the announced size."""
        end = self._filled + len(data)
        if end > self._size:
            raise ValueError("parts run past the announced size")
        # A view only for the copy: an export left open would make the BytesIO
        # complain (BufferError) when an abandoned reply is collected.
        with self._holder.getbuffer() if self._holder is not None else memoryview(self._buffer) as view:
            view[self._filled : end] = data
        self._filled = end

    def target(self, offset: int, length: int) -> memoryview:
        """A writable view of ``length`` bytes of the result from ``offset``, for the reader to fill (reader thread).

        The regions the reader fills and the one the caller works on never
        overlap (parts come in order); the view must be released before
        :meth:`value` (the reader does so when the part is in).
        """
        with self._holder.getbuffer() if self._holder is not None else memoryview(self._buffer) as whole:
            return whole[offset : offset + length].cast("B")

    def take_placed(self, length: int) -> int:
        """Count the next ``length`` bytes, written in place by the reader, as added; return their CRC-32."""
        end = self._filled + length
        if end > self._size:
            raise ValueError("parts run past the announced size")
        with self._holder.getbuffer() if self._holder is not None else memoryview(self._buffer) as whole, whole[self._filled : end] as part:
            checksum = callformat.crc32(part)
        self._filled = end
        return checksum

    def value(self) -> Any:
        """The finished value; raises ValueError if the parts fell short of the announced size."""
        if self._filled != self._size:
            raise ValueError(f"parts hold {self._filled} bytes, not the {self._size} announced")
        if self._holder is not None:
            return self._holder.getvalue()
        assert self._array is not None
        dtype, shape = self._array
        return self._buffer.view(dtype).reshape(shape)

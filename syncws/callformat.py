"""The request/reply message format, with no I/O (written down in docs/callformat.md).

* A request is a JSON text message ``{"cmd": ..., "callId": N, ...}``.
* A reply is a JSON text message ``{"cmd", "callId", "status", "data"}``;
  an error reply has ``"error"`` instead of ``"data"``.
* A reply whose data is bytes (or a numpy array) is a JSON text message with
  ``"dataType": "bytes"`` (or ``"ndarray"`` with ``"dtype"`` and ``"shape"``)
  and ``"size"`` and ``"parts"``, followed by that many binary messages. Each
  starts with a 32-byte header (:data:`PART_HEADER`) and carries one slice of
  the bytes, in order. Nothing is base64-encoded and nothing is pickled.
"""

from __future__ import annotations

import io
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple, Optional, Union

__all__ = [
    "PART_MAGIC",
    "PART_HEADER",
    "PartHeader",
    "encode_part_header",
    "pack_part_header",
    "part_checksums",
    "decode_part_header",
    "binary_reply_header",
    "as_binary",
    "ReplyAssembler",
    "crc32",
]

PART_MAGIC = b"SWSB"
#: magic, callId (u64), part index (u32), number of parts (u32), offset (u64), CRC-32 of the slice (u32); big-endian.
PART_HEADER = struct.Struct("!4sQIIQI")

BytesLike = Union[bytes, bytearray, memoryview]


class PartHeader(NamedTuple):
    """The header of one binary part of a reply."""

    call_id: int
    part: int
    parts: int
    offset: int
    crc32: int


def crc32(data: BytesLike) -> int:
    """CRC-32 of ``data`` (zlib's, in C: several GB/s)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_part_header(call_id: int, index: int, count: int, offset: int, data: BytesLike) -> bytes:
    """The 32-byte header of part ``index`` of ``count``, carrying ``data`` at ``offset``."""
    return pack_part_header(call_id, index, count, offset, crc32(data))


def pack_part_header(call_id: int, index: int, count: int, offset: int, checksum: int) -> bytes:
    """The 32-byte header of a part whose CRC-32 is already known."""
    return PART_HEADER.pack(PART_MAGIC, call_id, index, count, offset, checksum)


def part_checksums(view: memoryview, part_size: int) -> Iterator[int]:
    """The CRC-32 of each ``part_size`` slice of ``view``, in order.

    Each next one is computed on a helper thread while the caller sends the
    current part: zlib releases the GIL, so checking costs little time.
    """
    count = -(-len(view) // part_size)
    if count <= 1:
        if count:
            yield crc32(view)
        return
    ahead = _Checksum(view[:part_size])
    for index in range(count):
        checksum = ahead.result()
        if index + 1 < count:
            ahead = _Checksum(view[(index + 1) * part_size : (index + 2) * part_size])
        yield checksum


class _Checksum:
    """The CRC-32 of a slice, computed on its own short-lived daemon thread."""

    def __init__(self, data: memoryview) -> None:
        self._value = 0
        self._thread = threading.Thread(target=self._compute, args=(data,), name="syncws-crc", daemon=True)
        self._thread.start()

    def _compute(self, data: memoryview) -> None:
        self._value = crc32(data)

    def result(self) -> int:
        self._thread.join()
        return self._value


def decode_part_header(message: BytesLike) -> Optional[PartHeader]:
    """The header of a binary reply part, or None if ``message`` is not one."""
    if len(message) < PART_HEADER.size:
        return None
    magic, call_id, index, count, offset, checksum = PART_HEADER.unpack_from(message)
    if magic != PART_MAGIC:
        return None
    return PartHeader(call_id, index, count, offset, checksum)


def as_binary(value: Any) -> Optional[tuple[memoryview, dict[str, Any]]]:
    """If ``value`` travels as binary, return its bytes and the header fields that describe it."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        view = memoryview(value)
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        return view.cast("B"), {"dataType": "bytes"}
    # An ndarray can only come from a program that imported numpy already; the
    # getattr copes with numpy being half-imported by another thread meanwhile.
    np = sys.modules.get("numpy")
    ndarray = getattr(np, "ndarray", None)
    if ndarray is not None and isinstance(value, ndarray):
        return _array_bytes(np, value)
    return None


def _array_bytes(np: Any, value: Any) -> tuple[memoryview, dict[str, Any]]:
    dtype = value.dtype
    if dtype.hasobject or (dtype.kind == "V" and dtype.fields is None):
        # Object arrays hold Python objects, not data; raw void has no layout to rebuild.
        raise TypeError(f"numpy arrays of dtype {dtype} cannot be sent")
    # C order, keeping the shape (ascontiguousarray would make a 0-d array 1-d).
    array = value if value.flags.c_contiguous else value.copy(order="C")
    raw = array.reshape(-1).view(np.uint8)
    # A structured dtype travels as its field list (numpy's descr), a plain one as its string.
    described = dtype.descr if dtype.fields is not None else dtype.str
    return memoryview(raw), {"dataType": "ndarray", "dtype": described, "shape": list(value.shape)}


def binary_reply_header(cmd: Any, call_id: Any, size: int, parts: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON text message that announces a binary reply."""
    return {"cmd": cmd, "callId": call_id, "status": 200, "size": size, "parts": parts, **fields}


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
            self._array = _array_layout(header, self._size)
            # Uninitialized, aligned memory that the caller may write to: no pass to zero it first.
            self._buffer = _numpy_module().empty(self._size, dtype="u1")
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

    def value(self) -> Any:
        """The finished value; raises ValueError if the parts fell short of the announced size."""
        if self._filled != self._size:
            raise ValueError(f"parts hold {self._filled} bytes, not the {self._size} announced")
        if self._holder is not None:
            return self._holder.getvalue()
        assert self._array is not None
        dtype, shape = self._array
        return self._buffer.view(dtype).reshape(shape)


def _numpy_module() -> Any:
    try:
        import numpy
    except ImportError:
        raise ValueError("the reply is a numpy array, but numpy is not installed") from None
    return numpy


def _array_layout(header: dict[str, Any], size: int) -> tuple[Any, tuple[int, ...]]:
    """The dtype and shape an array reply announces, checked against its size in bytes."""
    np = _numpy_module()
    described = header.get("dtype")
    if isinstance(described, list):  # a structured dtype's fields: [[name, type(, shape)], ...]
        described = [tuple(tuple(x) if isinstance(x, list) else x for x in field) for field in described]
    try:
        dtype = np.dtype(described)
        shape = tuple(int(n) for n in header["shape"])
    except (TypeError, KeyError, OverflowError) as exc:  # OverflowError: a dimension of Infinity
        raise ValueError(f"invalid array description: {exc}") from None
    if dtype.hasobject:
        raise ValueError(f"refused array dtype {dtype}")
    count = 1
    for n in shape:
        if n < 0:
            raise ValueError(f"invalid array shape {shape}")
        count *= n
    if count * dtype.itemsize != size:
        raise ValueError(f"an array of {shape} {dtype} does not take {size} bytes")
    return dtype, shape

"""The request/reply message format, with no I/O (written down in docs/protocol.md).

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

import struct
import zlib
from typing import Any, NamedTuple, Optional, Union

try:  # optional: numpy arrays travel as raw bytes with their dtype and shape
    import numpy as _np
except ImportError:  # pragma: no cover - depends on the environment
    _np = None  # type: ignore[assignment]

__all__ = [
    "PART_MAGIC",
    "PART_HEADER",
    "PartHeader",
    "encode_part_header",
    "decode_part_header",
    "binary_reply_header",
    "as_binary",
    "from_binary",
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
    return PART_HEADER.pack(PART_MAGIC, call_id, index, count, offset, crc32(data))


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
        view = memoryview(value).cast("B")
        return view, {"dataType": "bytes"}
    if _np is not None and isinstance(value, _np.ndarray):
        if value.dtype.hasobject:
            return None  # object arrays hold Python objects, not data: refuse them
        array = _np.ascontiguousarray(value)
        return array.data.cast("B"), {"dataType": "ndarray", "dtype": array.dtype.str, "shape": list(array.shape)}
    return None


def binary_reply_header(cmd: Any, call_id: Any, size: int, parts: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON text message that announces a binary reply."""
    return {"cmd": cmd, "callId": call_id, "status": 200, "size": size, "parts": parts, **fields}


def from_binary(data: bytearray, header: dict[str, Any]) -> Any:
    """Turn the received bytes back into the value the peer returned: bytes, or a
    (writable) ndarray that shares ``data``'s memory."""
    if header.get("dataType") != "ndarray":
        return bytes(data)
    if _np is None:
        raise ValueError("the reply is a numpy array, but numpy is not installed")
    dtype = _np.dtype(header["dtype"])
    if dtype.hasobject:
        raise ValueError("object arrays are refused")
    shape = tuple(int(n) for n in header["shape"])
    return _np.frombuffer(data, dtype=dtype).reshape(shape)

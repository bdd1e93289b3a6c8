"""The request/reply wire format, both ways, with no I/O: the reference implementation of docs/protocol.md.

* Calls go both ways on one connection, each side numbering its own. A
  request is a JSON text message ``{"cmd": ..., "callId": N, ...}`` with no
  ``status`` (:func:`check_request`, :func:`encode_request`,
  :func:`parse_request`); a cancel ``{"cancel": N}`` says that the caller of
  call N gave up on it (:func:`encode_cancel`); :func:`parse_message` tells a
  request, a reply and a cancel apart.
* A reply is a JSON text message ``{"cmd", "callId", "status", "data"}``;
  an error reply has ``"error"`` instead of ``"data"`` (:func:`encode_result`,
  :func:`error_reply`, :func:`parse_reply`, :func:`check_reply_status`).
* A reply whose data is bytes (or a numpy array) is a JSON text message with
  ``"dataType": "bytes"`` (or ``"ndarray"`` with ``"dtype"`` and ``"shape"``)
  and ``"size"`` and ``"parts"`` (:func:`binary_reply_header`,
  :func:`check_binary_header`, :func:`array_layout`), followed by that many
  binary messages. Each starts with a 32-byte header (:data:`PART_HEADER`,
  :func:`pack_part_header`, :func:`decode_part_header`) and carries one slice
  of the bytes, in order (:func:`check_part`). Nothing is base64-encoded and
  nothing is pickled. Putting the parts back together is
  :mod:`syncws.reassembly`'s work.
* The ``/call`` gateway's simpler variant for ``syncws call`` is
  :mod:`syncws.gateway`'s.

Every parser raises ValueError (or TypeError for a request of the wrong
type) with a reason fit for a log line or an error reply.
"""

from __future__ import annotations

import enum
import json
import re
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple, Optional, Union

from ..exceptions import RequestError

__all__ = [
    "Kind",
    "CANCEL_FIELD",
    "CONN_FIELD",
    "LINK_FIELD",
    "PART_MAGIC",
    "PART_HEADER",
    "BINARY_TYPES",
    "PartHeader",
    "RefusedRequest",
    "check_request",
    "encode_request",
    "parse_request",
    "parse_message",
    "encode_cancel",
    "REQUEST",
    "REPLY",
    "CANCEL",
    "error_reply",
    "encode_result",
    "parse_reply",
    "reply_call_id",
    "is_refusal",
    "is_binary_header",
    "check_reply_status",
    "binary_reply_header",
    "binary_reply_fields",
    "encode_binary_reply",
    "binary_parts",
    "check_binary_header",
    "check_part",
    "as_binary",
    "array_layout",
    "numpy_module",
    "encode_part_header",
    "pack_part_header",
    "part_checksums",
    "decode_part_header",
    "crc32",
]

#: The field of a cancel message: ``{"cancel": N}``.
CANCEL_FIELD = "cancel"
#: The request field that names the connection a call on a node link is for, and
#: the reply field that carries what only a link says (progress, a closed peer).
CONN_FIELD = "_syncwsConn"
LINK_FIELD = "_syncwsLink"

PART_MAGIC = b"SWSB"
#: magic, callId (u64), part index (u32), number of parts (u32), offset (u64), CRC-32 of the slice (u32); big-endian.
PART_HEADER = struct.Struct("!4sQIIQI")
#: The ``dataType`` values of a reply whose data follows in binary parts.
BINARY_TYPES = ("bytes", "ndarray")
# The fields of a binary reply header that describe its bytes, not the call.
_BINARY_FIELDS = ("size", "parts", "dataType", "dtype", "shape")

BytesLike = Union[bytes, bytearray, memoryview]

# The callId at the very end of a request that did not parse: where
# encode_request puts it, so that a caller whose request nests too deep for
# json.loads still hears back at once.
_CALL_ID_AT_END = re.compile(r'"callId"\s*:\s*(\d{1,19})\s*\}\s*$')


# ---------------------------------------------------------------------- requests


class RefusedRequest(ValueError):
    """A message that is not a request: ``reason`` says why; ``cmd`` and ``call_id`` are what could be read.

    ``answer`` is False for a message that looks like a reply (a ``status``
    and no string ``cmd``): it must never be answered, so that two peers
    cannot keep answering each other's answers.
    """

    def __init__(self, reason: str, cmd: Any = None, call_id: Any = None, answer: bool = True, message: Optional[dict[str, Any]] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cmd = cmd
        self.call_id = call_id
        self.answer = answer
        #: The JSON object refused, when it was one.
        self.message = message


def check_request(msg: Any) -> None:
    """Raise TypeError or ValueError unless ``msg`` is a request: a dict with a str ``cmd`` and no ``status``.

    A ``status`` would make the other side take it for a reply.
    """
    if not isinstance(msg, dict):
        raise TypeError(f"a request must be a dict with a 'cmd', not {type(msg).__name__}")
    if "cmd" not in msg:
        raise ValueError("a request must have a 'cmd'")
    if not isinstance(msg["cmd"], str):
        raise TypeError(f"a request's 'cmd' must be a str, not {type(msg['cmd']).__name__}")
    if "status" in msg:
        raise ValueError("a request must not have a 'status': that field marks a reply (docs/protocol.md)")


def encode_request(msg: dict[str, Any], call_id: int) -> str:
    """The JSON text of request ``msg`` (checked already) as call ``call_id``; the callId goes last."""
    if "callId" in msg:
        return json.dumps(dict(msg, callId=call_id))
    # The text json.dumps would give the copy with the callId added, without the copy (msg has a cmd: never empty).
    return f'{json.dumps(msg)[:-1]}, "callId": {int(call_id)}}}'


class Kind(enum.Enum):
    """What a text message of the call format is."""

    REQUEST = "request"  # a str "cmd", no "status": answer it
    REPLY = "reply"  # a "status": the answer to one of the receiver's own calls
    CANCEL = "cancel"  # {"cancel": N}: the caller of call N gave up on it


#: The kinds as module constants, for the code that looks at every message: an Enum member
#: looked up on its class costs about 80 ns on Python 3.11, a global 13.
REQUEST, REPLY, CANCEL = Kind.REQUEST, Kind.REPLY, Kind.CANCEL


def parse_message(message: Union[str, bytes]) -> tuple[Kind, dict[str, Any]]:
    """What a message is, and the JSON object it carries; RefusedRequest for anything else.

    A JSON object with a ``status`` is a reply; one with a str ``cmd`` (and
    no ``status``) a request; ``{"cancel": N}`` (N an int, no ``cmd``, no
    ``status``) a cancel. RefusedRequest carries what could be read: a
    message meant as a request (a ``callId`` or a ``cmd`` that is not a
    string, text that is not JSON) is to be answered with 400; a cancel
    whose N is not an int is not (``answer`` False).
    """
    if not isinstance(message, str):
        raise RefusedRequest(f"a binary message ({len(message)} bytes) is not a request")
    try:
        parsed = json.loads(message)
    except RecursionError:
        raise RefusedRequest(f"request nested too deep to parse ({len(message)} characters)", call_id=_call_id_at_end(message)) from None
    except ValueError as exc:
        reason = f"request that is not JSON ({len(message)} characters): {str(exc)[:200]}"
        raise RefusedRequest(reason, call_id=_call_id_at_end(message)) from None
    if not isinstance(parsed, dict):
        raise RefusedRequest(f"a request must be a JSON object, not {type(parsed).__name__}")
    if "status" in parsed:
        return REPLY, parsed
    cmd = parsed.get("cmd")
    if isinstance(cmd, str):
        return REQUEST, parsed
    if "cmd" not in parsed and CANCEL_FIELD in parsed:
        if not _is_call_id(parsed[CANCEL_FIELD]):
            raise RefusedRequest(f"cancel of an invalid callId {str(parsed[CANCEL_FIELD])[:50]}", answer=False)
        return CANCEL, parsed
    problem = "has no cmd" if "cmd" not in parsed else f"has a cmd that is not a string ({type(cmd).__name__})"
    raise RefusedRequest(f"request {problem}", cmd, parsed.get("callId"), message=parsed)


def parse_request(message: Union[str, bytes]) -> dict[str, Any]:
    """The request in a message, or RefusedRequest with what could be read of it (a reply or a cancel: not answered)."""
    kind, parsed = parse_message(message)
    if kind is not REQUEST:
        raise RefusedRequest(f"a {kind.value} is not a request" if kind is Kind.CANCEL else "a reply-like message without a cmd", answer=False)
    return parsed


def encode_cancel(call_id: int, fields: Optional[dict[str, Any]] = None) -> str:
    """The JSON text that tells the other side its answer to call ``call_id`` is no longer awaited.

    ``fields`` go along: on a node link, the connection the call was for (``CONN_FIELD``).
    """
    return json.dumps({CANCEL_FIELD: call_id, **fields} if fields else {CANCEL_FIELD: call_id})


def _is_call_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _call_id_at_end(message: str) -> Optional[int]:
    """The callId at the end of a request that did not parse, or None."""
    match = _CALL_ID_AT_END.search(message[-64:])
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------- replies


def error_reply(cmd: Any, call_id: Any, status: int, error: str) -> dict[str, Any]:
    """An error reply."""
    return {"cmd": cmd, "callId": call_id, "status": status, "error": error}


def encode_result(cmd: Any, call_id: Any, result: Any) -> str:
    """The JSON text of a successful reply carrying ``result`` (no ``data`` for None).

    A result that is not JSON-serializable becomes a 500 error reply, so that
    the caller still hears of it.
    """
    reply: dict[str, Any] = {"cmd": cmd, "callId": call_id, "status": 200}
    if result is not None:
        reply["data"] = result
    try:
        return json.dumps(reply)
    except (TypeError, ValueError) as exc:
        return json.dumps(error_reply(cmd, call_id, 500, f"TypeError: result is not JSON-serializable: {exc}"))


def parse_reply(message: str) -> dict[str, Any]:
    """The reply in a text message; ValueError if it is not a JSON object."""
    try:
        reply = json.loads(message)
    except (ValueError, RecursionError):
        raise ValueError(f"reply that is not JSON dropped ({len(message)} characters)") from None
    if not isinstance(reply, dict):
        raise ValueError("reply that is not a JSON object dropped")
    return reply


def reply_call_id(reply: dict[str, Any]) -> Optional[int]:
    """The reply's callId when it is an int (not a bool), else None."""
    call_id = reply.get("callId")
    return call_id if _is_call_id(call_id) else None


def is_refusal(reply: dict[str, Any]) -> bool:
    """True for a peer's answer to a message it could not take and whose callId it could not read."""
    return reply.get("callId") is None and reply.get("status") != 200 and "error" in reply


def is_binary_header(reply: dict[str, Any]) -> bool:
    """True if binary parts follow this reply."""
    return reply.get("dataType") in BINARY_TYPES and reply.get("status") == 200


def check_reply_status(reply: dict[str, Any]) -> dict[str, Any]:
    """Return ``reply`` if its status is 200, else raise RequestError (status 500 when it is not an int)."""
    status = reply.get("status")
    if status != 200:
        raise RequestError(status if isinstance(status, int) else 500, str(reply.get("error", "")), reply)
    return reply


# ---------------------------------------------------------------------- binary replies


def binary_reply_header(cmd: Any, call_id: Any, size: int, parts: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The JSON text message that announces a binary reply."""
    return {"cmd": cmd, "callId": call_id, "status": 200, "size": size, "parts": parts, **fields}


def binary_reply_fields(header: dict[str, Any]) -> dict[str, Any]:
    """The fields of a binary reply header that the finished reply keeps (its ``data`` is added)."""
    return {k: v for k, v in header.items() if k not in _BINARY_FIELDS}


def encode_binary_reply(cmd: Any, call_id: Any, view: memoryview, fields: dict[str, Any], part_size: int) -> tuple[str, Iterator[tuple[bytes, memoryview]]]:
    """A binary reply (see :func:`as_binary` for ``view`` and ``fields``): its header's JSON text, and its parts."""
    header = binary_reply_header(cmd, call_id, len(view), -(-len(view) // part_size), fields)
    return json.dumps(header), binary_parts(call_id, view, part_size)


def binary_parts(call_id: Any, view: memoryview, part_size: int) -> Iterator[tuple[bytes, memoryview]]:
    """The parts of a binary reply, in order: (32-byte header, slice), each slice's CRC-32 computed ahead."""
    count = -(-len(view) // part_size)
    for index, checksum in enumerate(part_checksums(view, part_size)):
        offset = index * part_size
        yield pack_part_header(call_id, index, count, offset, checksum), view[offset : offset + part_size]


def check_binary_header(header: dict[str, Any], max_size: int) -> None:
    """Raise ValueError unless ``size`` and ``parts`` are valid and ``size`` is at most ``max_size``."""
    size, parts = header.get("size"), header.get("parts")
    if not isinstance(size, int) or not isinstance(parts, int) or size < 0 or parts < 0 or (parts == 0) != (size == 0):
        raise ValueError(f"invalid size {size!r} or parts {parts!r}")
    if size > max_size:
        raise ValueError(f"reply of {size} bytes exceeds max_reply_size {max_size}")


def check_part(part: PartHeader, length: int, index: int, offset: int, header: dict[str, Any]) -> bool:
    """Check that a part of ``length`` bytes is part ``index`` at ``offset`` of the reply ``header`` announced.

    Returns True for the last part; raises ValueError for a part out of
    order, one that does not follow on or runs past the size, and a last part
    that leaves the size short.
    """
    size, parts = header["size"], header["parts"]
    if part.part != index or part.parts != parts:
        raise ValueError(f"part {part.part}/{part.parts} out of order (expected {index}/{parts})")
    end = part.offset + length
    if part.offset != offset or end > size:
        raise ValueError(f"part {part.part} at offset {part.offset} does not follow on (expected {offset}) or runs past {size}")
    last = part.part + 1 == part.parts
    if last and end != size:
        raise ValueError("parts do not add up to the announced size")
    return last


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


def numpy_module() -> Any:
    """numpy, or ValueError when it is not installed (an array reply cannot be taken then)."""
    try:
        import numpy
    except ImportError:
        raise ValueError("the reply is a numpy array, but numpy is not installed") from None
    return numpy


def array_layout(header: dict[str, Any], size: int) -> tuple[Any, tuple[int, ...]]:
    """The dtype and shape an array reply announces, checked against its size in bytes (ValueError if refused)."""
    np = numpy_module()
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


# ---------------------------------------------------------------------- part headers


class PartHeader(NamedTuple):
    """The header of one binary part of a reply."""

    call_id: int
    part: int
    parts: int
    offset: int
    crc32: int


def crc32(data: BytesLike) -> int:
    """CRC-32 of ``data`` (zlib's, in C: several GB/s; it releases the GIL)."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_part_header(call_id: int, index: int, count: int, offset: int, data: BytesLike) -> bytes:
    """The 32-byte header of part ``index`` of ``count``, carrying ``data`` at ``offset``."""
    return pack_part_header(call_id, index, count, offset, crc32(data))


def pack_part_header(call_id: int, index: int, count: int, offset: int, checksum: int) -> bytes:
    """The 32-byte header of a part whose CRC-32 is already known."""
    return PART_HEADER.pack(PART_MAGIC, call_id, index, count, offset, checksum)


def decode_part_header(message: BytesLike) -> Optional[PartHeader]:
    """The header of a binary reply part, or None if ``message`` is not one."""
    if len(message) < PART_HEADER.size:
        return None
    magic, call_id, index, count, offset, checksum = PART_HEADER.unpack_from(message)
    if magic != PART_MAGIC:
        return None
    return PartHeader(call_id, index, count, offset, checksum)


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

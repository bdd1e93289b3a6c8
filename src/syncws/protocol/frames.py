"""Websocket frames (RFC 6455 section 5): encoding, header checks and masking, with no I/O.

Everything here is a pure function of its arguments, so it can be tested alone
and shared by the server's and the client's connections. Reading bytes off a
socket is :mod:`syncws.connection`'s job; it calls :func:`parse_header` and
:func:`check_header` on what it read.

Masking is the hot loop of a websocket. With numpy installed it runs as one
vectorised XOR (about 10 GB/s). Without it, a payload of up to 1 KiB is one
big-integer XOR; a larger one goes through ``bytes.translate`` with a
256-byte XOR table per key byte, one lane of every fourth byte at a time
(a strided slice of a bytearray, translated, assigned back): every step is a
C loop, about 0.8 to 0.9 GB/s, half again as fast as big-integer XOR over
slices (docs/benchmarks.md).
"""

from __future__ import annotations

import enum
import importlib.util
import os
import struct
from collections import deque
from typing import Any, NamedTuple, Optional, Union

from ..exceptions import ProtocolError

__all__ = [
    "OP_CONTINUATION",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "RSV1",
    "DATA_OPCODES",
    "CONTROL_OPCODES",
    "FrameHeader",
    "parse_header",
    "check_header",
    "encode_frame",
    "encode_header",
    "apply_mask",
    "encode_close",
    "parse_close",
    "is_valid_close_code",
    "truncate_utf8",
    "HAVE_NUMPY",
    "load_accelerator",
    "mask_into",
    "MaskKeys",
    "mask_keys",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
RSV1 = 0x40  #: the first byte's bit that marks a message compressed with permessage-deflate (RFC 7692 section 6)

DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# numpy is an optional accelerator. It takes a third of a second to import: too
# much for every program that imports syncws (a --help, say), so it is imported
# when the first connection opens (see load_accelerator), before any transfer.
# SYNCWS_NO_NUMPY=1 turns it off, to measure or test the pure-Python path.
HAVE_NUMPY = importlib.util.find_spec("numpy") is not None and not os.environ.get("SYNCWS_NO_NUMPY")
_np: Any = None


def load_accelerator() -> None:
    """Import numpy now, if installed, so that no transfer waits for it. Safe from any thread."""
    _numpy()


def _numpy() -> Any:
    global _np
    if _np is None and HAVE_NUMPY:
        import numpy

        _np = numpy
    return _np


Buffer = Union[bytes, bytearray, memoryview]

_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack
_MASK_CHUNK = 1 << 10  # up to this, one big-integer XOR; beyond, translate lanes (faster from about 1 KiB)
_LANE_CHUNK = 1 << 18  # bytes per chunk of a translated memoryview (a multiple of 4)
_XOR_TABLES: Optional[list[bytes]] = None


class FrameHeader(NamedTuple):
    """The first two bytes of a frame, taken apart. ``length_code`` is 0-125, or 126/127
    when a 16- or 64-bit extended length follows."""

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length_code: int


def parse_header(b1: int, b2: int) -> FrameHeader:
    """Split the first two bytes of a frame into their fields."""
    return FrameHeader(bool(b1 & 0x80), b1 & 0x70, b1 & 0x0F, bool(b2 & 0x80), b2 & 0x7F)


def check_header(header: FrameHeader, expect_masked: bool, allowed_rsv: int = 0) -> None:
    """Raise :class:`ProtocolError` (close 1002) if the header breaks RFC 6455 section 5.

    ``expect_masked`` is True on a server (clients must mask, section 5.1) and
    False on a client (servers must not). ``allowed_rsv`` holds the RSV bits a
    negotiated extension defines (``RSV1`` for permessage-deflate); they are
    allowed on the first frame of a text or binary message only (RFC 7692
    section 6), any other RSV bit is an error (section 5.2).
    """
    if header.rsv and (header.rsv & ~allowed_rsv or header.opcode not in (OP_TEXT, OP_BINARY)):
        raise ProtocolError(_rsv_error(header, allowed_rsv))
    if header.opcode not in DATA_OPCODES and header.opcode not in CONTROL_OPCODES:
        raise ProtocolError(f"reserved opcode {header.opcode:#x}")
    if header.masked != expect_masked:
        raise ProtocolError("frame from client is not masked" if expect_masked else "frame from server is masked")
    if header.opcode in CONTROL_OPCODES:
        # Section 5.5: control frames are never fragmented and carry at most 125 bytes.
        if not header.fin:
            raise ProtocolError("fragmented control frame")
        if header.length_code > 125:
            raise ProtocolError("control frame payload longer than 125 bytes")


def _rsv_error(header: FrameHeader, allowed_rsv: int) -> str:
    if not allowed_rsv:
        return "reserved bits set without a negotiated extension"
    if header.rsv & ~allowed_rsv:
        return "reserved bits set that no negotiated extension defines"
    return "compressed bit set on a frame other than a message's first (a continuation or control frame)"


def encode_header(opcode: int, length: int, fin: bool = True, mask_key: Optional[bytes] = None, rsv: int = 0) -> bytes:
    """Build a frame header for a payload of ``length`` bytes (with the mask key, if any; ``rsv``: RSV1 for a compressed message)."""
    b1 = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    if length < 126:
        header = bytes((b1, mask_bit | length))
    elif length < 65536:
        header = _PACK_16(b1, mask_bit | 126, length)
    else:
        header = _PACK_64(b1, mask_bit | 127, length)
    return header + mask_key if mask_key is not None else header


def encode_frame(opcode: int, payload: Buffer, fin: bool = True, mask_key: Optional[bytes] = None) -> bytes:
    """Encode one whole frame as bytes. Clients pass a fresh 4-byte ``mask_key``."""
    if mask_key is None:
        return encode_header(opcode, len(payload), fin) + payload
    masked = bytearray(payload)
    apply_mask(masked, mask_key)
    return encode_header(opcode, len(payload), fin, mask_key) + masked


class MaskKeys:
    """Fresh mask keys from the system's random source, 4 bytes each, read 4 KiB at a time. Safe from any thread.

    RFC 6455 (section 5.3) wants each frame's key unpredictable: these come
    from ``os.urandom`` as before, but one call serves 1,024 frames. A call
    per frame released and re-took the GIL each time, which with many
    threads sending made every small frame wait its turn for the GIL again.
    """

    _BATCH = 4096

    def __init__(self) -> None:
        # No lock: deque.popleft and deque.extend are atomic, and two threads that
        # find it empty at once both refill it, which only wastes a few random bytes.
        self._keys: deque[bytes] = deque()

    def next(self) -> bytes:
        """The next 4-byte key."""
        try:
            return self._keys.popleft()
        except IndexError:
            pool = os.urandom(self._BATCH)
            self._keys.extend(pool[i : i + 4] for i in range(4, self._BATCH, 4))
            return pool[:4]


#: The process's mask keys (see :class:`MaskKeys`).
mask_keys = MaskKeys()


def key_at(mask_key: bytes, offset: int) -> bytes:
    """The mask key rotated for a stretch of payload that starts at byte ``offset`` of its frame."""
    shift = offset % 4
    return mask_key[shift:] + mask_key[:shift] if shift else mask_key


def masked(data: Buffer, mask_key: bytes) -> bytes:
    """``data`` XOR the repeating ``mask_key``, as new bytes: one big-integer XOR, the fastest way for small payloads."""
    n = len(data)
    key = int.from_bytes((mask_key * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


def apply_mask(data: Union[bytearray, memoryview], mask_key: bytes) -> None:
    """XOR ``data`` (a bytearray or writable byte memoryview) in place with the repeating 4-byte ``mask_key`` (masking and unmasking alike)."""
    n = len(data)
    if n == 0:
        return
    if n >= 256 and HAVE_NUMPY:
        _apply_mask_numpy(data, mask_key)
    elif n <= _MASK_CHUNK:
        data[:] = masked(data, mask_key)
    else:
        _mask_lanes(data, data, mask_key)


def mask_into(target: memoryview, source: Union[bytes, bytearray, memoryview], mask_key: bytes) -> None:
    """Write ``source`` XOR the mask into ``target`` (same length): a copy and a mask in one pass."""
    n = len(source)
    if n >= 256 and HAVE_NUMPY:
        np = _numpy()
        body = n - n % 4
        key = np.frombuffer(mask_key, dtype=np.uint32)[0]
        np.bitwise_xor(np.frombuffer(source, dtype=np.uint32, count=body >> 2), key, out=np.frombuffer(target, dtype=np.uint32, count=body >> 2))
        for i in range(body, n):
            target[i] = source[i] ^ mask_key[i - body]
    elif n <= _MASK_CHUNK:
        target[:] = masked(source, mask_key)
    else:
        _mask_lanes(target, source, mask_key)


def _mask_lanes(target: Union[bytearray, memoryview], source: Union[bytes, bytearray, memoryview], mask_key: bytes) -> None:
    """``target[:] = source`` XOR the mask, without numpy: four ``bytes.translate`` lanes (``target`` may be ``source``).

    Byte ``i`` of a payload is XORed with ``mask_key[i % 4]``, so the bytes
    of each lane (every fourth byte) share one table. Strided slices are fast
    on a bytearray and slow on a memoryview, and four strided passes over a
    large buffer miss the cache; so the payload goes through in 256 KiB
    bytearray chunks (a multiple of 4: the key lines up the same way in
    each), copied in and out: about 0.8 GB/s here, against 0.6 translating a
    16 MiB bytearray in place and 0.55 for big-integer XOR over slices.
    """
    tables = [_xor_table(k) for k in mask_key]
    view, src = memoryview(target), memoryview(source)
    for start in range(0, len(src), _LANE_CHUNK):
        chunk = bytearray(src[start : start + _LANE_CHUNK])
        for lane in range(4):
            chunk[lane::4] = chunk[lane::4].translate(tables[lane])
        view[start : start + len(chunk)] = chunk


def _xor_table(key_byte: int) -> bytes:
    """The ``bytes.translate`` table that XORs every byte with ``key_byte`` (all 256 made once, 64 KiB)."""
    global _XOR_TABLES
    if _XOR_TABLES is None:  # two threads may both make them: the same tables, so no lock is needed
        # Big-integer XOR makes all 256 in a quarter of a millisecond, a tenth of
        # what a generator per table takes: the first large frame of a process waits for this.
        identity = bytes(range(256))
        _XOR_TABLES = [masked(identity, bytes((k, k, k, k))) for k in range(256)]
    return _XOR_TABLES[key_byte]


def _apply_mask_numpy(data: Union[bytearray, memoryview], mask_key: bytes) -> None:
    np = _numpy()
    n = len(data)
    body = n - n % 4
    words = np.frombuffer(data, dtype=np.uint32, count=body >> 2)
    np.bitwise_xor(words, np.frombuffer(mask_key, dtype=np.uint32)[0], out=words)
    for i in range(body, n):
        data[i] ^= mask_key[i - body]


def is_valid_close_code(code: int) -> bool:
    """True for a close code a peer may send (RFC 6455 section 7.4 and the IANA registry)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


def encode_close(code: Optional[int] = None, reason: str = "") -> bytes:
    """The payload of a close frame: empty when ``code`` is None, else the code and the
    reason, cut (at a character boundary) to fit the 125-byte control frame limit."""
    if code is None:
        return b""
    return struct.pack("!H", code) + truncate_utf8(reason, 123)


def parse_close(payload: bytes) -> tuple[int, str]:
    """Read a received close frame's payload: ``(code, reason)``, with 1005 when there is no code.

    Raises :class:`ProtocolError` for a one-byte payload or an invalid code (1002)
    and for a reason that is not UTF-8 (1007), as section 7.1.5 and 8.1 require.
    """
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a one-byte payload")
    (code,) = struct.unpack("!H", payload[:2])
    if not is_valid_close_code(code):
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not valid UTF-8", 1007) from None
    return code, reason


def truncate_utf8(text: str, limit: int) -> bytes:
    """Encode ``text`` as UTF-8 and cut it to at most ``limit`` bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


class CloseCode(enum.IntEnum):
    """Close codes (RFC 6455 section 7.4.1 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  #: never sent: a close frame came without a code
    ABNORMAL_CLOSURE = 1006  #: never sent: the connection ended without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014

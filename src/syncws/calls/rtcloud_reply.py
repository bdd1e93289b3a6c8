"""Reading rt-cloud's replies, without I/O: parts put back together, and a restricted unpickler.

An rt-cloud peer answers a request with one or more JSON messages (parts of
10 MiB, base64, zlib-compressed over 1 MiB, each with its MD5; the whole
with its own); ``RTCLOUD-WIRE.md`` describes them. One
:class:`ReplyAssembler` per pending call takes each message of that call and
returns the whole reply once every part arrived and checked, decoded by its
``dataSerialization``.

Pickle is read only through :func:`restricted_loads`, which refuses every
global outside a short allowlist (:class:`RefusedPickle`) unless the
server's owner opts in with ``allow_pickle=True``.

:class:`RtcloudCall` is a server's pending call to such a peer: its
messages go through its assembler, and the whole reply finishes it.

The requests, and a peer's replies, are written by
:mod:`syncws.calls.rtcloud_wire`, whose helpers this module shares (the
import goes this way only). Pure computation: safe from any thread, with one
:class:`ReplyAssembler` used by one thread at a time.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import pickle
import zlib
from typing import Any, Callable, Optional, Union

from ..exceptions import RequestError, SyncWSError
from . import callformat
from .calls import PendingCall
from .reassembly import Progress, describe
from .rtcloud_wire import _Buffer, _md5

__all__ = [
    "DEFAULT_MAX_SIZE",
    "RefusedPickle",
    "ReplyAssembler",
    "RtcloudCall",
    "restricted_loads",
]

logger = logging.getLogger(__name__)

#: The default bound on the size of one assembled reply.
DEFAULT_MAX_SIZE = 256 * 2**20

# The fields that describe a part of a reply, dropped from the assembled reply.
_PART_FIELDS = frozenset({"numParts", "partId", "multipart", "fileSize", "fileHash", "dataSize", "hash", "compressed"})

# The globals a pickled reply may name: what Python needs for numbers,
# containers and bytes, and what numpy needs for arrays, dtypes and scalars.
# Protocols below 3 name the builtins module "__builtin__"; numpy 1 names its
# core "numpy.core", numpy 2 "numpy._core" (and still reads the old name).
# "_frombuffer" is numpy's protocol-5 path for contiguous arrays. Protocol 2
# pickles of bytes (through "_codecs.encode") stay refused: rt-cloud's peers
# run Python 3, whose default protocol is 3 or higher.
_SAFE_BUILTINS = ("complex", "set", "frozenset", "bytearray")
_SAFE_GLOBALS = frozenset(
    [(module, name) for module in ("builtins", "__builtin__") for name in _SAFE_BUILTINS]
    + [(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")]
    + [("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
)


class RefusedPickle(SyncWSError, pickle.UnpicklingError):
    """A pickle named a global outside the allowlist; ``module`` and ``name`` say which."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"refused to unpickle {module}.{name} (allow_pickle=True lets the peer run code on this server)")
        self.module = module
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_SAFE_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_GLOBALS:
            raise RefusedPickle(module, name)
        return super().find_class(module, name)


class _BufferReader:
    """A read-only file over a buffer, so that unpickling a bytearray does not copy it.

    (``io.BytesIO`` copies a bytearray it is given; this hands out slices.)
    """

    def __init__(self, data: _Buffer) -> None:
        self._data = data if isinstance(data, (bytes, bytearray)) else memoryview(data).tobytes()
        self._view = memoryview(self._data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else min(self._pos + size, len(self._view))
        chunk = self._view[self._pos : end].tobytes()
        self._pos = end
        return chunk

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        count = min(len(target), len(self._view) - self._pos)
        target[:count] = self._view[self._pos : self._pos + count]
        self._pos += count
        return count

    def readline(self) -> bytes:
        end = self._data.find(b"\n", self._pos)
        return self.read(len(self._data) - self._pos if end < 0 else end + 1 - self._pos)


def restricted_loads(data: _Buffer, allow_pickle: bool = False) -> Any:
    """Unpickle ``data``, refusing any global outside the allowlist with :class:`RefusedPickle`.

    Allowed: ``None``, booleans, numbers (``complex`` too), strings, bytes,
    ``bytearray``, lists, tuples, dicts, sets, frozensets, and numpy arrays,
    dtypes and scalars. ``allow_pickle=True`` loads anything with plain
    :func:`pickle.loads`, which lets whoever wrote ``data`` run code here.
    Other damage raises :class:`pickle.UnpicklingError` (or the error the
    pickle module raises for it).
    """
    if allow_pickle:
        return pickle.loads(data)
    return _RestrictedUnpickler(_BufferReader(data)).load()


class ReplyAssembler:
    """Puts the reply messages of one rt-cloud call back together, checked and decoded.

    Create one per pending call and :meth:`feed` it each parsed JSON reply
    message of that call (the integration matches ``callId``). Parts may come
    in any order. ``max_size`` bounds the assembled data, before and while it
    is decompressed; ``allow_pickle`` is passed to :func:`restricted_loads`.
    Used by one thread at a time (the connection's reader).
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, *, allow_pickle: bool = False) -> None:
        self.max_size = max_size
        self.allow_pickle = allow_pickle
        self._finished = False
        self._call_id: Any = None
        self._num_parts = 0
        self._file_size = 0
        self._file_hash = ""
        self._part_size: Optional[int] = None  # the size of every part but the last
        self._seen = bytearray()  # one flag per part: a bytearray, so a huge numParts costs bytes, not objects
        self._received = 0
        self._bytes_received = 0
        self._buffer: Optional[bytearray] = None
        self._single: Optional[bytes] = None

    @property
    def progress(self) -> tuple[int, int]:
        """``(bytes received, total bytes)`` of a reply in parts so far (``(0, 0)`` before its first part)."""
        return self._bytes_received, self._file_size

    def feed(self, reply: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Take one reply message; return the whole reply once complete, else None.

        The whole reply is the last message's fields without the part fields,
        with ``data`` decoded by ``dataSerialization`` (``bytes``: bytes, or a
        bytearray when joined from several parts, to spare a copy; ``json``:
        the value; ``pickle``: the restricted load). A reply without part
        fields (rt-cloud's subject page) has ``data`` as base64 of JSON text;
        without ``data`` it is returned as it is.

        Raises :class:`RequestError`: with the peer's status and ``error``
        when the status is not 200, and with status 502 and what was wrong
        when a message is damaged, inconsistent or too big; the assembler is
        finished after either, or after it returned the reply.
        """
        if self._finished:
            raise self._damaged(reply, "a reply message came after the call was already complete or failed")
        try:
            self._check_status(reply)
            self._check_call_id(reply)
            if "numParts" not in reply and "partId" not in reply:
                return self._whole(reply)
            return self._part(reply)
        except BaseException:
            self._finished = True
            self._buffer = self._single = None
            raise

    # -- one message

    def _check_status(self, reply: dict[str, Any]) -> None:
        """Raise the peer's error for a status other than 200."""
        status = reply.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise self._damaged(reply, f"the reply's status is {status!r}, not a number")
        if status == 200:
            return
        error = reply.get("error")
        if error is None and isinstance(reply.get("data"), str):
            # The subject page puts its error text in data, as base64 of JSON.
            try:
                error = json.loads(base64.b64decode(reply["data"], validate=True).decode("latin-1"))
            except (binascii.Error, ValueError):
                error = reply["data"]
        raise RequestError(status, str(error), _without_data(reply))

    def _check_call_id(self, reply: dict[str, Any]) -> None:
        """Refuse a message of another call than the first message's."""
        call_id = reply.get("callId")
        if self._call_id is None:
            self._call_id = call_id
        elif call_id != self._call_id:
            raise self._damaged(reply, f"a part of callId {call_id!r} came to the assembler of callId {self._call_id!r}")

    def _whole(self, reply: dict[str, Any]) -> dict[str, Any]:
        """Decode a reply that came in one message without part fields."""
        if self._num_parts:
            raise self._damaged(reply, "a message without part fields came after parts of the same call")
        self._finished = True
        if "data" not in reply:
            return dict(reply)
        encoded = self._str_field(reply, "data")
        if len(encoded) // 4 * 3 > self.max_size:
            raise self._damaged(reply, f"its data exceeds the limit of {self.max_size} bytes")
        data = self._decode_part(reply, encoded, self.max_size, "the reply", exact=False)
        if "hash" in reply and _md5(data) != reply["hash"]:
            raise self._damaged(reply, "the data does not match its hash")
        serialization = reply.get("dataSerialization", "json")
        if serialization == "json":
            # The subject page sends btoa(JSON.stringify(result)): btoa writes each
            # character as one byte, so the bytes are Latin-1, not UTF-8.
            return self._complete(reply, data.decode("latin-1"), serialization)
        return self._complete(reply, data, serialization)

    def _part(self, reply: dict[str, Any]) -> Optional[dict[str, Any]]:
        """Check, decode and place one part; return the whole reply after the last."""
        part_id, data_size = self._check_part_fields(reply)
        offset = self._place(reply, part_id, data_size)
        data = self._decode_part(reply, self._str_field(reply, "data"), data_size, f"part {part_id}", exact=True)
        if _md5(data) != self._str_field(reply, "hash"):
            raise self._damaged(reply, f"part {part_id} does not match its hash")
        self._seen[part_id - 1] = 1
        self._received += 1
        self._bytes_received += data_size
        if self._num_parts == 1:
            self._single = data
        else:
            assert self._buffer is not None
            self._buffer[offset : offset + data_size] = data
        if self._received < self._num_parts:
            return None
        whole: Union[bytes, bytearray]
        if self._single is not None:
            whole = self._single
        else:
            assert self._buffer is not None
            whole = self._buffer
        if _md5(whole) != self._file_hash:
            raise self._damaged(reply, f"the data of its {self._num_parts} part(s) does not match fileHash")
        self._finished = True
        self._buffer = self._single = None
        # rt-cloud's server too hands a part reply without dataSerialization over as raw bytes.
        return self._complete(reply, whole, reply.get("dataSerialization", "bytes"))

    def _check_part_fields(self, reply: dict[str, Any]) -> tuple[int, int]:
        """Check a part's fields against each other and the first part's; return partId and dataSize."""
        num_parts = self._int_field(reply, "numParts")
        file_size = self._int_field(reply, "fileSize")
        file_hash = self._str_field(reply, "fileHash")
        if not self._num_parts:
            self._start(reply, num_parts, file_size, file_hash)
        elif (num_parts, file_size, file_hash) != (self._num_parts, self._file_size, self._file_hash):
            raise self._damaged(
                reply,
                f"numParts, fileSize or fileHash changed from {self._num_parts}, {self._file_size}, {self._file_hash} to {num_parts}, {file_size}, {file_hash}",
            )
        part_id = self._int_field(reply, "partId")
        if not 1 <= part_id <= num_parts:
            raise self._damaged(reply, f"partId {part_id} is outside 1..{num_parts}")
        if self._seen[part_id - 1]:
            raise self._damaged(reply, f"part {part_id} came twice")
        data_size = self._int_field(reply, "dataSize")
        if not 0 <= data_size <= file_size:
            raise self._damaged(reply, f"part {part_id} claims {data_size} bytes of a file of {file_size}")
        return part_id, data_size

    def _start(self, reply: dict[str, Any], num_parts: int, file_size: int, file_hash: str) -> None:
        """Take the file's description from its first part and allocate its buffer."""
        if not 0 <= file_size <= self.max_size:
            raise self._damaged(reply, f"fileSize {file_size} exceeds the limit of {self.max_size} bytes")
        # Every part holds at least one byte (an empty result is one empty part),
        # which also bounds the flags below by the file's size.
        if num_parts < 1 or num_parts > max(file_size, 1):
            raise self._damaged(reply, f"numParts {num_parts} cannot hold fileSize {file_size}")
        self._num_parts, self._file_size, self._file_hash = num_parts, file_size, file_hash
        self._seen = bytearray(num_parts)
        if num_parts > 1:
            self._buffer = bytearray(file_size)

    def _place(self, reply: dict[str, Any], part_id: int, data_size: int) -> int:
        """Return the offset of part ``part_id`` in the file, checking its size against the others.

        Every part but the last has the same size P, and the last the rest,
        1..P bytes. P is learnt from the first part to arrive, so the parts may
        come in any order and each one's place is known when it arrives.
        """
        count, size = self._num_parts, self._file_size
        if count == 1:
            if data_size != size:
                raise self._damaged(reply, f"the only part claims {data_size} bytes of a file of {size}")
            return 0
        last = part_id == count
        if self._part_size is None:
            part_size = (size - data_size) // (count - 1) if last else data_size
            if part_size < 1 or (last and part_size * (count - 1) != size - data_size):
                raise self._damaged(reply, f"part {part_id} of {data_size} bytes does not fit {count} parts of fileSize {size}")
            if not (count - 1) * part_size < size <= count * part_size:
                raise self._damaged(reply, f"{count} parts of {part_size} bytes cannot make fileSize {size}")
            self._part_size = part_size
        expected = size - (count - 1) * self._part_size if last else self._part_size
        if data_size != expected:
            raise self._damaged(reply, f"part {part_id} claims {data_size} bytes where {expected} belong")
        return (part_id - 1) * self._part_size

    def _decode_part(self, reply: dict[str, Any], encoded: str, size: int, what: str, *, exact: bool) -> bytes:
        """Return the bytes of base64 ``encoded``, decompressed if marked, of ``size`` bytes (at most, unless ``exact``)."""
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self._damaged(reply, f"{what} is not valid base64: {exc}") from exc
        compressed = reply.get("compressed", False)
        if not isinstance(compressed, bool):
            raise self._damaged(reply, f"compressed is {compressed!r}, not a boolean")
        data = _inflate(raw, size, what, lambda text: self._damaged(reply, text)) if compressed else raw
        if len(data) > size or (exact and len(data) != size):
            raise self._damaged(reply, f"{what} holds {len(data)} bytes, not the {size} it claims")
        return data

    def _complete(self, reply: dict[str, Any], data: Union[str, bytes, bytearray], serialization: Any) -> dict[str, Any]:
        """Return the last message's fields without the part fields, with ``data`` decoded."""
        result = {key: value for key, value in reply.items() if key not in _PART_FIELDS and key != "data"}
        result["data"] = self._deserialize(reply, data, serialization)
        logger.debug("callId %s: reply of %d parts assembled", self._call_id, max(self._num_parts, 1))
        return result

    def _deserialize(self, reply: dict[str, Any], data: Union[str, bytes, bytearray], serialization: Any) -> Any:
        """Decode the joined data by ``serialization`` (the reply's ``dataSerialization``)."""
        if serialization == "bytes":
            return data
        if serialization == "json":
            try:
                return json.loads(data)
            except ValueError as exc:
                raise self._damaged(reply, f"its data is not valid JSON: {exc}") from exc
        if serialization == "pickle" and not isinstance(data, str):
            return self._unpickle(reply, data)
        raise self._damaged(reply, f"unknown dataSerialization {serialization!r}")

    def _unpickle(self, reply: dict[str, Any], data: Union[bytes, bytearray]) -> Any:
        """Unpickle the data under this assembler's pickle policy, as RequestError on failure."""
        try:
            return restricted_loads(data, self.allow_pickle)
        except RefusedPickle as exc:
            logger.warning("callId %s: %s", self._call_id, exc)
            raise self._damaged(reply, str(exc)) from exc
        except Exception as exc:
            # Unpickling damaged data can raise nearly anything (EOFError, TypeError, ...).
            raise self._damaged(reply, f"its data is not a valid pickle: {type(exc).__name__}: {exc}") from exc

    def _int_field(self, reply: dict[str, Any], key: str) -> int:
        """Return ``reply[key]``, which must be a number."""
        value = reply.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._damaged(reply, f"its field {key!r} is {value!r}, not a number")
        return value

    def _str_field(self, reply: dict[str, Any], key: str) -> str:
        """Return ``reply[key]``, which must be text."""
        value = reply.get(key)
        if not isinstance(value, str):
            raise self._damaged(reply, f"its field {key!r} is {value!r}, not text")
        return value

    def _damaged(self, reply: dict[str, Any], text: str) -> RequestError:
        """Return the error for a damaged reply: status 502, ``text`` saying what was wrong."""
        return RequestError(502, f"damaged reply from the peer: {text}", _without_data(reply))


def _inflate(raw: bytes, size: int, what: str, damaged: Callable[[str], RequestError]) -> bytes:
    """Decompress zlib ``raw`` into at most ``size`` bytes, without ever producing more.

    ``max_length`` stops zlib one byte past the claim, so a bomb costs at most
    ``size + 1`` bytes of memory. ``damaged(text)`` makes the error to raise.
    """
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(raw, size + 1)
    except zlib.error as exc:
        raise damaged(f"{what} is not valid zlib data: {exc}") from exc
    if len(data) > size:
        raise damaged(f"{what} decompresses to more than the {size} bytes it claims")
    # Below max_length zlib consumed all the input, so a stream without its end is truncated.
    if not inflater.eof or inflater.unused_data:
        raise damaged(f"{what} is a truncated zlib stream or has bytes after its end")
    return data


def _without_data(reply: dict[str, Any]) -> dict[str, Any]:
    """Return ``reply`` without its (possibly large) ``data``, for an exception to carry."""
    return {key: value for key, value in reply.items() if key != "data"}


class RtcloudCall(PendingCall):
    """A call to an rt-cloud peer: each reply message goes through its :class:`ReplyAssembler`.

    The whole reply finishes the call, so a caller's timeout covers every
    part of it. The peer's error (status 400), a damaged or inconsistent
    part, a refused pickle: each fails the call with its RequestError and
    nothing else. The connection's reader thread feeds it; ``progress``, if
    any, hears ``(bytes received, total)`` after each part of a reply in parts.
    """

    __slots__ = ("assembler",)

    def __init__(self, call_id: int, cmd: Any, conn: object, progress: Optional[Progress], waiting: bool, assembler: ReplyAssembler) -> None:
        super().__init__(call_id, cmd, conn, progress, waiting)
        self.assembler = assembler

    def take_reply(self, reply: dict[str, Any], via_link: bool, max_reply_size: int) -> bool:
        """Feed one reply message; finish the call with the whole reply, or fail it with what was wrong (reader thread)."""
        if self.done():
            return False  # failed already: the rest of its parts change nothing
        try:
            whole = self.assembler.feed(reply)
        except RequestError as exc:
            self.fail(exc)
            return False
        except Exception as exc:  # MemoryError for an absurd fileSize, and whatever else: never a hang
            self.fail(RequestError(502, f"damaged reply: {describe(exc)}", {"cmd": self.cmd, "callId": self.call_id, "status": 502}))
            return False
        if whole is not None:
            self.set_result(whole)
        elif self.progress is not None:
            received, total = self.assembler.progress
            try:
                self.progress(received, total)
            except Exception:
                logger.exception("progress callback of call %d failed", self.call_id)
        return False  # the caller forgets it once it has the outcome

    def take_part(self, part: callformat.PartHeader, message: bytes) -> bool:
        """rt-cloud's peers send no binary messages: one that looks like a part of this call fails it with 502."""
        self.fail(RequestError(502, "damaged reply: a binary message came from an rt-cloud peer", {"cmd": self.cmd, "callId": self.call_id, "status": 502}))
        return False

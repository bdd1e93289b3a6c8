"""rt-cloud's RPC requests and its peers' replies, without I/O.

rt-cloud (``rtCommon``) has peers deployed at sites that will not change them
at once, so syncws must speak their format exactly (``RTCLOUD-WIRE.md``
describes it). This module turns dicts into JSON text and back; the
connection code sends and receives them.

- :func:`encode_request` writes a request (the server side, asking an
  rt-cloud peer), with ``bytes`` arguments in base64 the way rt-cloud's peer
  expects them; :func:`decode_request` restores them (the peer side);
- :func:`encode_result` and :func:`encode_error` write a peer's reply
  messages, in parts of :data:`PART_SIZE`, never pickled.

Reading replies (their assembly from parts and the restricted unpickler) is
:mod:`syncws.calls.rtcloud_reply`, which imports this module's helpers; this
module imports nothing of it.

Everything here is pure computation on its arguments: safe from any thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import zlib
from typing import Any, Union

__all__ = [
    "COMPRESS_THRESHOLD",
    "PART_SIZE",
    "decode_request",
    "encode_error",
    "encode_request",
    "encode_result",
]

#: Bytes of serialized data per reply message, as rt-cloud's peers cut them.
PART_SIZE = 10 * 2**20

#: A result serialized to more bytes than this has every part zlib-compressed.
COMPRESS_THRESHOLD = 2**20

# What a reply echoes of its request: everything but the call's payload.
_REQUEST_PAYLOAD_FIELDS = frozenset({"data", "args", "kwargs", "encodedByteArgs", "encodedByteKwargs"})

_BYTES_TYPES = (bytes, bytearray, memoryview)

# Exactly these types are sent as JSON (rt-cloud checks the exact type too, so a
# subclass such as an IntEnum or a numpy float64 is not JSON to it either).
_JSON_TYPES = (int, float, str, list, dict, tuple, bool, type(None))

_ARG_TAG = "encodedBytes_{}"

_Buffer = Union[bytes, bytearray, memoryview]


# ----------------------------------------------------------------- requests


def encode_request(msg: dict[str, Any], call_id: int) -> str:
    """Return the JSON text of request ``msg`` with ``callId`` set to ``call_id``.

    Positional ``bytes``-like arguments become ``"encodedBytes_<i>"`` with
    their base64 under that key and ``encodedByteArgs`` listing them;
    ``bytes``-like keyword arguments become their base64 in place, listed in
    ``encodedByteKwargs``. ``msg`` itself is left as it was. Numpy scalars in
    the arguments are sent as the Python numbers they hold, as rt-cloud's
    server does. Raises :class:`TypeError` for a value JSON cannot carry.
    """
    out = dict(msg)
    out["callId"] = call_id
    if msg.get("args"):
        args = list(msg["args"])
        indices = [i for i, arg in enumerate(args) if isinstance(arg, _BYTES_TYPES)]
        for i in indices:
            tag = _ARG_TAG.format(i)
            out[tag] = _b64encode(args[i])
            args[i] = tag
        out["args"] = args
        if indices:
            out["encodedByteArgs"] = indices
    if msg.get("kwargs"):
        kwargs = dict(msg["kwargs"])
        keys = [key for key, value in kwargs.items() if isinstance(value, _BYTES_TYPES)]
        for key in keys:
            kwargs[key] = _b64encode(kwargs[key])
        out["kwargs"] = kwargs
        if keys:
            out["encodedByteKwargs"] = keys
    return json.dumps(out, default=_numpy_scalar)


def decode_request(msg: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the parsed request ``msg`` with its base64 ``bytes`` arguments restored.

    The inverse of :func:`encode_request`, for the peer side: ``args`` comes
    back as a list, the ``encodedBytes_<i>``, ``encodedByteArgs`` and
    ``encodedByteKwargs`` fields are gone. Raises :class:`ValueError` for an
    encoding that does not add up (a tag in the wrong place, a missing key,
    invalid base64).
    """
    out = dict(msg)
    indices = out.pop("encodedByteArgs", None)
    if indices is not None:
        out["args"] = _decode_byte_args(out, indices)
    keys = out.pop("encodedByteKwargs", None)
    if keys is not None:
        out["kwargs"] = _decode_byte_kwargs(out.get("kwargs"), keys)
    return out


def _decode_byte_args(out: dict[str, Any], indices: Any) -> list[Any]:
    """Restore the listed positional arguments of ``out``, popping their tags from it."""
    args = out.get("args")
    if not isinstance(indices, list) or not isinstance(args, list):
        raise ValueError("encodedByteArgs needs a list of indices and a list of args")
    args = list(args)
    for i in indices:
        if not _is_int(i) or not 0 <= i < len(args):
            raise ValueError(f"encodedByteArgs names argument {i!r}, which does not exist")
        tag = _ARG_TAG.format(i)
        # A repeated index finds bytes here, not the tag, and is refused too.
        if args[i] != tag or tag not in out:
            raise ValueError(f"argument {i} is not the tag {tag!r} with its data beside it")
        args[i] = _b64decode(out.pop(tag), f"argument {i}")
    return args


def _decode_byte_kwargs(kwargs: Any, keys: Any) -> dict[str, Any]:
    """Return a copy of ``kwargs`` with the values named in ``keys`` decoded from base64."""
    if not isinstance(keys, list) or not isinstance(kwargs, dict):
        raise ValueError("encodedByteKwargs needs a list of keys and a dict of kwargs")
    decoded: dict[str, Any] = dict(kwargs)
    for key in keys:
        # A repeated key finds bytes here, not a str, and is refused too.
        if not isinstance(key, str) or not isinstance(decoded.get(key), str):
            raise ValueError(f"encodedByteKwargs names {key!r}, which is not a base64 keyword argument")
        decoded[key] = _b64decode(decoded[key], f"keyword argument {key!r}")
    return decoded


# --------------------------------------------------------------- peer side


def encode_result(request: dict[str, Any], result: Any) -> list[str]:
    """Return the reply messages that carry ``result`` of ``request``, in rt-cloud's format.

    ``bytes``, ``bytearray`` and ``memoryview`` go as ``"bytes"``; ``None``,
    ``bool``, ``int``, ``float``, ``str``, ``list``, ``dict`` and ``tuple``
    (exactly those types) as ``"json"``. rt-cloud's own peer pickles ``None``
    and booleans; this side never pickles, and rt-cloud's server reads them
    fine as JSON: its ``handleRPCRequest`` does ``json.loads`` on the data of
    a ``"json"`` reply, which gives ``None`` for ``null`` and ``True`` for
    ``true``. Anything else raises :class:`TypeError` (answer it with
    :func:`encode_error`).

    The data is cut in parts of :data:`PART_SIZE` bytes, every part
    zlib-compressed when the data is over :data:`COMPRESS_THRESHOLD` bytes.
    Empty data is sent as one empty part: rt-cloud's peer sends no message at
    all (its caller can only time out), while rt-cloud's server completes a
    call on a message with ``data`` whose ``numParts`` is reached, and its
    ``unpackDataMessage`` returns ``b""`` for that part.
    """
    reply = _echo(request)
    view, reply["dataSerialization"] = _serialize(result)
    size = len(view)
    num_parts = max(1, math.ceil(size / PART_SIZE))
    compress = size > COMPRESS_THRESHOLD
    reply.update(status=200, fileSize=size, fileHash=_md5(view), numParts=num_parts)
    if num_parts > 1:
        reply["multipart"] = True
    messages = []
    for part_id in range(1, num_parts + 1):
        part = view[(part_id - 1) * PART_SIZE : part_id * PART_SIZE]
        message = dict(reply, partId=part_id, hash=_md5(part))
        if compress:
            message["compressed"] = True
        message["data"] = _b64encode(zlib.compress(part) if compress else part)
        message["dataSize"] = len(part)
        messages.append(json.dumps(message))
    return messages


def encode_error(request: dict[str, Any], text: str) -> str:
    """Return the status-400 reply to ``request`` with ``error`` as rt-cloud's peer writes it."""
    reply = _echo(request)
    reply.update(status=400, error=f"RPC Exception: {request.get('cmd', 'unknown')}: {text}")
    return json.dumps(reply)


def _echo(request: dict[str, Any]) -> dict[str, Any]:
    """Return what a reply repeats of its request: all but the call's payload.

    The ``encodedBytes_<i>`` fields go too, so that a request passed before
    :func:`decode_request` does not send its bytes arguments back.
    """
    return {key: value for key, value in request.items() if key not in _REQUEST_PAYLOAD_FIELDS and not key.startswith("encodedBytes_")}


def _serialize(result: Any) -> tuple[memoryview, str]:
    """Return the serialized bytes of ``result`` and their ``dataSerialization``."""
    if type(result) in _BYTES_TYPES:
        return _byte_view(result), "bytes"
    if type(result) not in _JSON_TYPES:
        kind = type(result)
        raise TypeError(
            f"cannot send a result of type {kind.__module__}.{kind.__qualname__} to an rt-cloud server: "
            "only bytes and JSON values (None, bool, int, float, str, list, dict, tuple) are sent, never pickle"
        )
    try:
        # json.dumps as rt-cloud's peer calls it, so NaN and Infinity go as it sends them.
        return memoryview(json.dumps(result).encode()), "json"
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot send the result as JSON to an rt-cloud server: {exc}") from exc


# ------------------------------------------------------------------ helpers


def _byte_view(data: _Buffer) -> memoryview:
    """Return a flat byte view of ``data``, copying only a non-contiguous memoryview."""
    view = memoryview(data)
    if not view.c_contiguous:
        return memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _b64encode(data: _Buffer) -> str:
    """Return the base64 text of ``data``."""
    return base64.b64encode(_byte_view(data)).decode("ascii")


def _b64decode(value: Any, what: str) -> bytes:
    """Return the bytes of base64 text ``value``, or raise ValueError naming ``what``."""
    if not isinstance(value, str):
        raise ValueError(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64: {exc}") from exc


def _md5(data: _Buffer) -> str:
    """Return the MD5 hex digest of ``data``: rt-cloud's integrity check, not a security measure."""
    # usedforsecurity=False keeps MD5 available on FIPS-restricted systems.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _is_int(value: Any) -> bool:
    """Return True for an int that is not a bool (JSON true is no number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _numpy_scalar(value: Any) -> Any:
    """Return the Python number in a numpy scalar, for :func:`json.dumps`; refuse anything else.

    rt-cloud's server converts numpy scalars in arguments the same way
    (``npToPy``), so code moving from it may pass them. Numpy is not imported
    for this: a numpy scalar is recognised by its module and ``item``.
    """
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == () and hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

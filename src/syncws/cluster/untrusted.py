"""What a cluster reads from Redis, checked as untrusted input: sends on the channel, presence records, node info, the token.

Anyone who can write to the cluster's Redis can put anything on its channel
and in its keys, and a buggy or older member can too. Every byte read from
there goes through this module before a node acts on it, and what it
refuses is dropped by the reader (with a rate-limited warning), never
allowed to end a thread or fail a call for everyone.

Each reader raises :class:`Unreadable` (a ValueError) with a short reason,
and nothing else: a header nested deeper than the JSON parser goes
(RecursionError), bytes that are not UTF-8, a close code that does not fit
a close frame (struct.error), numbers too large to parse (ValueError,
OverflowError) all become ``Unreadable``. The limits:

* JSON (an envelope's header, a presence record): at most
  :data:`MAX_JSON` bytes of UTF-8; only known fields of scalar types are
  read, so nesting is never walked.
* names (endpoints): 1 to :data:`MAX_NAME` characters; node and
  connection ids: 1 to :data:`MAX_ID` printable characters.
* a presence change: an endpoint name and no payload.
* a close-all: both a code a close frame may carry (1000-1003, 1007-1014,
  3000-4999) and a reason of at most :data:`MAX_REASON` bytes of UTF-8, and
  no endpoint name.
* a text send: valid UTF-8; any send: at most the node's ``max_send_size``.
* a link URL: ``ws://`` or ``wss://``, printable ASCII, with a host, at most
  :data:`MAX_URL` characters; the token: :data:`TOKEN_MIN` to
  :data:`TOKEN_MAX` characters of the URL-safe alphabet (so never empty).

Pure functions, no I/O: safe from any thread.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any, NamedTuple, Optional, Union
from urllib.parse import urlsplit

from ..protocol.frames import is_valid_close_code

__all__ = [
    "Unreadable",
    "TEXT",
    "BINARY",
    "CLOSE_ALL",
    "PRESENCE",
    "encode_envelope",
    "decode_envelope",
    "Send",
    "read_send",
    "check_name",
    "check_close",
    "read_id",
    "read_record",
    "read_url",
    "read_token",
    "valid_token",
]

MAX_JSON = 4096  #: bytes of an envelope's JSON header or of one presence record
MAX_NAME = 256  #: characters of an endpoint name
MAX_ID = 64  #: characters of a node or connection id (ours are 12 and about 20)
MAX_REASON = 123  #: bytes of a close reason: a close frame carries 125 bytes, 2 of them the code
MAX_URL = 2048  #: characters of a node's link URL
TOKEN_MIN, TOKEN_MAX = 16, 256  #: characters of a usable cluster token (ours: 43)
#: The latest ``opened`` a record may claim (the year 5138): a later one would always be "newest".
MAX_OPENED = 1e11

_ENVELOPE = struct.Struct("!4sBI")  # magic, kind, header length; then the JSON header, then the payload
_MAGIC = b"SWC1"
TEXT, BINARY, CLOSE_ALL = 1, 2, 3
#: "The connections of this name changed on a node": no payload; drops the name's cached presence on every node.
PRESENCE = 4
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/=]+")

Data = Union[bytes, bytearray, memoryview]


class Unreadable(ValueError):
    """What was read from the cluster's Redis is not what a member writes; the reason says what is wrong."""


def _json(data: Data, what: str) -> Any:
    """Parse at most MAX_JSON bytes of UTF-8 JSON; Unreadable for anything else."""
    if len(data) > MAX_JSON:
        raise Unreadable(f"{what} of {len(data)} bytes, over the limit of {MAX_JSON}")
    try:
        return json.loads(bytes(data).decode("utf-8"))
    except UnicodeDecodeError:
        raise Unreadable(f"{what} is not UTF-8") from None
    except RecursionError:
        raise Unreadable(f"{what} is nested too deep") from None
    except ValueError as exc:  # not JSON, or an integer too long to parse
        raise Unreadable(f"{what} is not JSON: {str(exc)[:100]}") from None


def _utf8_size(text: str, what: str) -> int:
    """The UTF-8 size of ``text``; Unreadable when it cannot be encoded (a lone surrogate from JSON's ``\\ud800``)."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise Unreadable(f"{what} is not valid Unicode") from None


def check_name(name: Any) -> str:
    """An endpoint name: a str of 1 to MAX_NAME characters, valid Unicode."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        raise Unreadable(f"an endpoint name must be a string of 1 to {MAX_NAME} characters")
    _utf8_size(name, "the endpoint name")
    return name


def check_close(code: Any, reason: Any) -> tuple[int, str]:
    """A close-all's code and reason, as a close frame can carry them."""
    if type(code) is not int or not is_valid_close_code(code):
        raise Unreadable(f"close code {str(code)[:20]} is not one a close frame may carry")
    if not isinstance(reason, str) or _utf8_size(reason, "the close reason") > MAX_REASON:
        raise Unreadable(f"a close reason must be a string of at most {MAX_REASON} bytes of UTF-8")
    return code, reason


def encode_envelope(kind: int, header: dict[str, Any], payload: Data = b"") -> bytes:
    """A pub/sub message: a fixed header, a small JSON header and the payload as it is (the sender's thread)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_JSON:
        raise ValueError(f"a cluster send's header takes at most {MAX_JSON} bytes of JSON, not {len(head)}")
    return _ENVELOPE.pack(_MAGIC, kind, len(head)) + head + bytes(payload)


def decode_envelope(data: Any, max_payload: Optional[int] = None) -> tuple[int, dict[str, Any], memoryview]:
    """The kind, header and payload of a message read on the cluster's channel, the header checked.

    The header comes back with the fields of its kind only: ``{"name"}`` for
    text, binary and a presence change, ``{"code", "reason"}`` for a close-all. Unreadable for
    anything else, including a payload over ``max_payload`` bytes (a text
    payload's UTF-8 is checked by :func:`read_send`, which decodes it).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise Unreadable(f"a {type(data).__name__} is not an envelope")
    if len(data) < _ENVELOPE.size:
        raise Unreadable("message shorter than an envelope")
    magic, kind, length = _ENVELOPE.unpack_from(data)
    if magic != _MAGIC or length > len(data) - _ENVELOPE.size:
        raise Unreadable("not a syncws cluster envelope")
    view = memoryview(data)
    header = _json(view[_ENVELOPE.size : _ENVELOPE.size + length], "envelope header")
    if not isinstance(header, dict):
        raise Unreadable("envelope header is not an object")
    payload = view[_ENVELOPE.size + length :]
    if max_payload is not None and len(payload) > max_payload:
        raise Unreadable(f"payload of {len(payload)} bytes, over max_send_size={max_payload}")
    if kind == CLOSE_ALL:  # both fields, as every member writes them: a send with a flipped kind byte is no close-all
        if "code" not in header or "reason" not in header or "name" in header:
            raise Unreadable("a close-all carries a code and a reason, and no name")
        code, reason = check_close(header["code"], header["reason"])
        return kind, {"code": code, "reason": reason}, payload
    if kind == PRESENCE and len(payload):
        raise Unreadable("a presence change carries no payload")
    if kind not in (TEXT, BINARY, PRESENCE):
        raise Unreadable(f"unknown envelope kind {kind}")
    return kind, {"name": check_name(header.get("name"))}, payload


class Send(NamedTuple):
    """One message read on the cluster's channel, checked: a send (``name``, ``message``), a presence change or a close-all (``code``, ``reason``)."""

    kind: int
    name: str
    message: Union[str, bytes]
    code: int
    reason: str


def read_send(data: Any, max_payload: Optional[int] = None) -> Send:
    """A message read on the cluster's channel, decoded once: a text send's payload as str (valid UTF-8), a binary one's as bytes."""
    kind, header, payload = decode_envelope(data, max_payload)
    if kind == CLOSE_ALL:
        return Send(kind, "", b"", header["code"], header["reason"])
    if kind == BINARY:
        return Send(kind, header["name"], bytes(payload), 0, "")
    if kind == PRESENCE:
        return Send(kind, header["name"], b"", 0, "")
    try:
        return Send(kind, header["name"], str(payload, "utf-8"), 0, "")
    except UnicodeDecodeError:
        raise Unreadable("a text send that is not UTF-8") from None


def read_id(raw: Any, what: str = "id") -> str:
    """A node or connection id read from Redis: 1 to MAX_ID printable characters."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise Unreadable(f"a {what} that is not UTF-8") from None
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_ID or not raw.isprintable():
        raise Unreadable(f"a {what} must be 1 to {MAX_ID} printable characters")
    return raw


def read_record(node: Any, conn_id: Any, text: Any) -> tuple[str, str, str, tuple[str, int], float]:
    """One presence record: ``(node, id, name, (host, port), opened)``, every field checked."""
    node_id, record_id = read_id(node, "node id"), read_id(conn_id, "connection id")
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    if not isinstance(text, (bytes, bytearray)):
        raise Unreadable("a presence record must be JSON text")
    record = _json(text, "presence record")
    if not isinstance(record, dict):
        raise Unreadable("a presence record is not an object")
    name = check_name(record.get("name"))
    address, opened = record.get("address"), record.get("opened")
    if not (isinstance(address, list) and len(address) == 2):
        raise Unreadable("a presence record's address must be [host, port]")
    host, port = address
    if not isinstance(host, str) or len(host) > 255 or not host.isprintable() or type(port) is not int or not 0 <= port <= 65535:
        raise Unreadable("a presence record's address must be a printable host and a port")
    if not isinstance(opened, (int, float)) or isinstance(opened, bool) or not (math.isfinite(opened) and 0 <= opened <= MAX_OPENED):
        raise Unreadable("a presence record's opened must be a time")
    return node_id, record_id, name, (host, port), float(opened)


def read_url(raw: Any) -> str:
    """A node's link URL from its ``node:<id>`` hash: ws:// or wss://, with a host."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("ascii", "replace")
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_URL or not raw.isascii() or not raw.isprintable() or " " in raw:
        raise Unreadable("a link URL must be printable ASCII without spaces")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - parsing the port raises ValueError for a bad one
    except ValueError:
        raise Unreadable("a link URL that cannot be parsed") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise Unreadable("a link URL must be ws:// or wss:// with a host")
    return raw


def valid_token(token: Any) -> bool:
    """True for a usable cluster token: TOKEN_MIN to TOKEN_MAX characters of the URL-safe alphabet (never empty)."""
    return isinstance(token, str) and TOKEN_MIN <= len(token) <= TOKEN_MAX and _TOKEN.fullmatch(token) is not None


def read_token(raw: Any) -> str:
    """The cluster token read from Redis; Unreadable when it is missing, empty or not a usable token."""
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("ascii", "replace")
    if not valid_token(raw):
        raise Unreadable(f"the cluster token in Redis is not usable ({TOKEN_MIN} to {TOKEN_MAX} URL-safe characters)")
    assert isinstance(raw, str)
    return raw

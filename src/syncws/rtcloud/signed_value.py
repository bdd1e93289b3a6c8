"""Tornado's signed values (version 2), the format of rt-cloud's ``login`` cookie, without Tornado.

rt-cloud's web server signs the user's name with ``tornado.web.create_signed_value``
and reads it back with ``get_secure_cookie("login")``. A syncws server that
shares its ``cookie_secret`` must accept the cookies that server made, and
make cookies it accepts, so these two functions write and read exactly
Tornado's version 2::

    2|1:0|<len>:<timestamp>|<len>:<name>|<len>:<base64 value>|<hex HMAC-SHA256>

Each field is ``<decimal length>:<text>``; the signature is the HMAC-SHA256,
keyed with the secret, of everything before it, its final ``|`` included. The
timestamp is whole seconds since the epoch.

Reading is stricter than Tornado's: any departure from what Tornado writes (a
leading zero, a sign, a key version other than 0, invalid base64) is refused,
and so is a timestamp from the future beyond :data:`MAX_CLOCK_SKEW`, which
Tornado does not check for version 2. Pure functions: safe from any thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
from typing import Optional, Union

__all__ = ["MAX_CLOCK_SKEW", "create_signed_value", "decode_signed_value"]

logger = logging.getLogger(__name__)

#: Seconds a timestamp may lie ahead of this clock. Tornado checks no future bound for
#: version 2, so a cookie signed by a machine whose clock is far ahead would outlive its
#: age limit; a few minutes cover the drift of machines kept in time by NTP.
MAX_CLOCK_SKEW = 300.0

# Decimal numbers as Tornado writes them: no sign, no leading zero. The digit counts are
# capped so that int() never meets a huge number (Python refuses over 4300 digits).
_LENGTH = rb"(?:0|[1-9][0-9]{0,8})"
_PREFIX = re.compile(rb"2\|1:0\|(" + _LENGTH + rb"):")
_FIELD_LENGTH = re.compile(rb"(" + _LENGTH + rb"):")
_SIGNATURE = re.compile(rb"[0-9a-f]{64}")
_TIMESTAMP = re.compile(rb"0|[1-9][0-9]{0,19}")


def create_signed_value(secret: Union[str, bytes], name: str, value: Union[str, bytes], *, now: Optional[float] = None) -> bytes:
    """Return ``value`` signed under ``name`` with ``secret``, as ``tornado.web.create_signed_value`` does (version 2).

    ``now`` is the signing time in seconds since the epoch (default: the
    current time). Raises :class:`ValueError` for a name that is not ASCII:
    Tornado counts a name's length in characters but writes it in UTF-8, so
    it could not read back such a cookie of its own.
    """
    if not name.isascii():
        raise ValueError(f"signed value name {name!r} is not ASCII")
    timestamp = int(time.time() if now is None else now)
    if timestamp < 0:
        raise ValueError(f"cannot sign at a time before the epoch: {timestamp}")
    encoded = base64.b64encode(_utf8(value))
    fields = [str(timestamp).encode(), name.encode(), encoded]
    to_sign = b"2|1:0|" + b"".join(b"%d:%s|" % (len(field), field) for field in fields)
    return to_sign + _signature(secret, to_sign)


def decode_signed_value(
    secret: Union[str, bytes],
    name: str,
    value: Union[str, bytes, None],
    *,
    max_age_days: float = 0.5,
    now: Optional[float] = None,
) -> Optional[bytes]:
    """Return the value signed in ``value`` under ``name`` with ``secret``, or None if it is not one.

    None for a value that is missing, malformed, signed under another name or
    with another secret, older than ``max_age_days`` (rt-cloud's login lasts
    0.5 day), or dated more than :data:`MAX_CLOCK_SKEW` seconds after ``now``
    (default: the current time).
    """
    if not value:
        return None
    raw = _utf8(value) if isinstance(value, bytes) or value.isascii() else b""
    fields = _split(raw)
    if fields is None:
        return None
    timestamp, signed_name, encoded, signature = fields
    if not hmac.compare_digest(signature, _signature(secret, raw[: -len(signature)])):
        return None
    if signed_name != name.encode("utf-8"):
        return None
    current = time.time() if now is None else now
    age = current - int(timestamp)
    if age > max_age_days * 86400 or age < -MAX_CLOCK_SKEW:
        logger.debug("signed value %r dated %s is outside its validity at %s", name, timestamp.decode(), current)
        return None
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return None


def _split(raw: bytes) -> Optional[tuple[bytes, bytes, bytes, bytes]]:
    """Return the timestamp, name, base64 value and signature fields of ``raw``, or None if malformed."""
    match = _PREFIX.match(raw)
    if match is None:
        return None
    fields = []
    length, position = int(match.group(1)), match.end()
    for index in range(3):
        end = position + length
        if raw[end : end + 1] != b"|":
            return None
        fields.append(raw[position:end])
        position = end + 1
        if index < 2:
            match = _FIELD_LENGTH.match(raw, position)
            if match is None:
                return None
            length, position = int(match.group(1)), match.end()
    signature = raw[position:]
    if _TIMESTAMP.fullmatch(fields[0]) is None or _SIGNATURE.fullmatch(signature) is None:
        return None
    return fields[0], fields[1], fields[2], signature


def _signature(secret: Union[str, bytes], to_sign: bytes) -> bytes:
    """Return the hex HMAC-SHA256 of ``to_sign`` keyed with ``secret``, as ASCII bytes."""
    return hmac.new(_utf8(secret), to_sign, hashlib.sha256).hexdigest().encode("ascii")


def _utf8(text: Union[str, bytes]) -> bytes:
    """Return ``text`` as bytes, encoding a str in UTF-8 (as Tornado's ``utf8`` does)."""
    return text.encode("utf-8") if isinstance(text, str) else text

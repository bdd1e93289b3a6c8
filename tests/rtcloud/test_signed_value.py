"""Tests of Tornado signed values (version 2): interoperation with Tornado itself, and every refusal."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from typing import Union

import pytest
import tornado.web as tornado_web

from syncws.rtcloud.signed_value import MAX_CLOCK_SKEW, create_signed_value, decode_signed_value

SECRET = "rt-cloud cookie secret"
NOW = 1_700_000_000.0
DAY = 86400.0


def tornado_cookie(value: Union[str, bytes] = "alice", name: str = "login", secret: Union[str, bytes] = SECRET, at: float = NOW, version: int = 2) -> bytes:
    """Return a signed value made by Tornado itself at time ``at``."""
    return tornado_web.create_signed_value(secret, name, value, version=version, clock=lambda: at)


def signed(fields: list[bytes], secret: str = SECRET) -> bytes:
    """Return ``2|`` and the raw ``fields`` joined by pipes, with a valid signature: to test strict parsing alone."""
    to_sign = b"|".join([b"2", *fields, b""])
    return to_sign + hmac.new(secret.encode(), to_sign, hashlib.sha256).hexdigest().encode()


def test_tornado_cookie_is_accepted() -> None:
    """A cookie made by tornado.web.create_signed_value decodes to its value."""
    assert decode_signed_value(SECRET, "login", tornado_cookie(), now=NOW + 60) == b"alice"


def test_tornado_cookie_as_str_and_bytes_secret() -> None:
    """A str cookie and a bytes secret work the same as their other types."""
    cookie = tornado_cookie(secret=SECRET.encode())
    assert decode_signed_value(SECRET, "login", cookie.decode(), now=NOW) == b"alice"


def test_our_cookie_is_accepted_by_tornado() -> None:
    """A cookie made here decodes with tornado.web.decode_signed_value."""
    cookie = create_signed_value(SECRET, "login", "alice", now=NOW)
    assert tornado_web.decode_signed_value(SECRET, "login", cookie, max_age_days=0.5, clock=lambda: NOW + 60) == b"alice"


@pytest.mark.parametrize("value", ["alice", b"\x00\xffbinary", "caf\u00e9", ""], ids=repr)
@pytest.mark.parametrize("secret", [SECRET, SECRET.encode()], ids=["str", "bytes"])
def test_our_cookie_is_byte_for_byte_tornados(value: Union[str, bytes], secret: Union[str, bytes]) -> None:
    """create_signed_value writes exactly what Tornado writes for the same inputs and time."""
    assert create_signed_value(secret, "login", value, now=NOW + 0.75) == tornado_cookie(value, secret=secret, at=NOW + 0.75)


def test_format_is_tornado_version_2() -> None:
    """The cookie reads 2|1:0|<len>:<timestamp>|<len>:<name>|<len>:<base64>|<64 hex>."""
    cookie = create_signed_value(SECRET, "login", "alice", now=NOW)
    prefix, signature = cookie.rsplit(b"|", 1)
    assert prefix == b"2|1:0|10:1700000000|5:login|8:YWxpY2U="
    assert len(signature) == 64 and int(signature, 16) >= 0


def test_forged_signature_is_refused() -> None:
    """A cookie whose signature was altered decodes to None."""
    cookie = tornado_cookie()
    forged = cookie[:-1] + (b"0" if cookie[-1:] != b"0" else b"1")
    assert decode_signed_value(SECRET, "login", forged, now=NOW) is None


def test_forged_value_is_refused() -> None:
    """A cookie whose value was swapped under the old signature decodes to None."""
    cookie = tornado_cookie("alice")
    assert decode_signed_value(SECRET, "login", cookie.replace(b"YWxpY2U=", b"bWFsbG9y"), now=NOW) is None


def test_wrong_secret_is_refused() -> None:
    """A cookie signed with another secret decodes to None."""
    assert decode_signed_value("another secret", "login", tornado_cookie(), now=NOW) is None


def test_wrong_name_is_refused() -> None:
    """A cookie signed under another name decodes to None."""
    assert decode_signed_value(SECRET, "login", tornado_cookie(name="_xsrf"), now=NOW) is None


def test_expired_cookie_is_refused() -> None:
    """A cookie older than max_age_days (0.5 day by default) decodes to None; at the limit it is still valid."""
    cookie = tornado_cookie()
    assert decode_signed_value(SECRET, "login", cookie, now=NOW + 0.5 * DAY) == b"alice"
    assert decode_signed_value(SECRET, "login", cookie, now=NOW + 0.5 * DAY + 1) is None
    assert decode_signed_value(SECRET, "login", cookie, max_age_days=2, now=NOW + 1.5 * DAY) == b"alice"


def test_expiry_matches_tornado_at_the_limit() -> None:
    """At and just past the age limit, both sides agree."""
    cookie = tornado_cookie()
    for now in (NOW + 0.5 * DAY, NOW + 0.5 * DAY + 1):
        ours = decode_signed_value(SECRET, "login", cookie, now=now)
        theirs = tornado_web.decode_signed_value(SECRET, "login", cookie, max_age_days=0.5, clock=functools.partial(float, now))
        assert ours == theirs


def test_cookie_from_the_future_beyond_skew_is_refused() -> None:
    """A cookie dated more than MAX_CLOCK_SKEW ahead decodes to None; within the skew it is valid."""
    assert decode_signed_value(SECRET, "login", tornado_cookie(at=NOW + MAX_CLOCK_SKEW), now=NOW) == b"alice"
    assert decode_signed_value(SECRET, "login", tornado_cookie(at=NOW + MAX_CLOCK_SKEW + 1), now=NOW) is None


def test_version_1_cookie_is_refused() -> None:
    """A Tornado version-1 cookie decodes to None: only version 2 is read."""
    assert decode_signed_value(SECRET, "login", tornado_cookie(version=1), now=NOW) is None


@pytest.mark.parametrize("value", [None, "", b"", "garbage", "2|", "2|1:0|", "2|1:0|10:1700000000|5:login|8:YWxpY2U=|", "caf\u00e9"])
def test_missing_and_malformed_values_are_refused(value: Union[str, bytes, None]) -> None:
    """Missing, empty, truncated and non-ASCII values decode to None."""
    assert decode_signed_value(SECRET, "login", value, now=NOW) is None


@pytest.mark.parametrize(
    "fields",
    [
        [b"1:1", b"10:1700000000", b"5:login", b"8:YWxpY2U="],  # key version 1
        [b"1:0", b"11:01700000000", b"5:login", b"8:YWxpY2U="],  # timestamp with a leading zero
        [b"1:0", b"11:+1700000000", b"5:login", b"8:YWxpY2U="],  # timestamp with a sign
        [b"1:0", b"10:17000000x0", b"5:login", b"8:YWxpY2U="],  # timestamp not a number
        [b"1:0", b"010:1700000000", b"5:login", b"8:YWxpY2U="],  # length with a leading zero
        [b"1:0", b"10:1700000000", b"6:login", b"8:YWxpY2U="],  # length not matching the field
        [b"1:0", b"10:1700000000", b"5:login", b"8:YWxpY2U!"],  # value not base64
        [b"1:0", b"10:1700000000", b"5:login", b"7:YWxpY2U"],  # value with bad padding
        [b"1:0", b"10:1700000000", b"5:login", b"8:YWxpY2U=", b"1:x"],  # a field too many
        [b"1:0", b"10:1700000000", b"5:login"],  # a field too few
    ],
)
def test_strictly_parsed_fields_are_refused_even_when_signed(fields: list[bytes]) -> None:
    """Validly signed values that depart from what Tornado writes decode to None."""
    assert decode_signed_value(SECRET, "login", signed(fields), now=NOW) is None


def test_well_formed_signed_fields_are_accepted() -> None:
    """The signing helper makes an accepted value when its fields are well formed."""
    assert decode_signed_value(SECRET, "login", signed([b"1:0", b"10:1700000000", b"5:login", b"8:YWxpY2U="]), now=NOW) == b"alice"


def test_uppercase_signature_is_refused() -> None:
    """A signature in upper-case hex, which Tornado never writes, decodes to None."""
    cookie = tornado_cookie()
    prefix, signature = cookie.rsplit(b"|", 1)
    assert signature.upper() != signature
    assert decode_signed_value(SECRET, "login", prefix + b"|" + signature.upper(), now=NOW) is None


def test_huge_length_field_is_refused() -> None:
    """A length of thousands of digits decodes to None instead of raising."""
    assert decode_signed_value(SECRET, "login", b"2|1:0|" + b"9" * 5000 + b":x", now=NOW) is None


def test_non_ascii_name_cannot_be_signed() -> None:
    """create_signed_value refuses a non-ASCII name, which Tornado could not read back."""
    with pytest.raises(ValueError):
        create_signed_value(SECRET, "l\u00f6gin", "alice", now=NOW)


def test_value_round_trips_through_base64() -> None:
    """Any bytes value round-trips: the value field is base64 of its bytes."""
    value = bytes(range(256))
    cookie = create_signed_value(SECRET, "login", value, now=NOW)
    assert base64.b64encode(value) in cookie
    assert decode_signed_value(SECRET, "login", cookie, now=NOW) == value

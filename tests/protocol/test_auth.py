"""The ready-made auth checks on handshake requests, without sockets."""

from __future__ import annotations

import pytest

from syncws.protocol.auth import bearer_token, cookie_value
from syncws.protocol.handshake import parse_http_request

pytestmark = pytest.mark.timeout(10)


def request(target: str = "/x", *headers: str):  # type: ignore[no-untyped-def]
    lines = "".join(f"\r\n{h}" for h in headers)
    return parse_http_request(f"GET {target} HTTP/1.1\r\nHost: x{lines}".encode(), ("127.0.0.1", 1))


def test_bearer_token_in_the_header() -> None:
    """bearer_token accepts the right token in 'Authorization: Bearer' (any case of the scheme) and refuses others."""
    check = bearer_token("s3cret")
    assert check(request("/x", "Authorization: Bearer s3cret"))
    assert check(request("/x", "authorization: bearer s3cret"))
    assert not check(request("/x", "Authorization: Bearer wrong"))
    assert not check(request("/x", "Authorization: Basic s3cret"))
    assert not check(request("/x"))


def test_bearer_token_in_the_query() -> None:
    """bearer_token accepts exactly one right ?token= value, and not when the query parameter is turned off."""
    assert bearer_token("s3cret")(request("/x?token=s3cret"))
    assert not bearer_token("s3cret")(request("/x?token=s3cret&token=other"))
    assert not bearer_token("s3cret", query_parameter=None)(request("/x?token=s3cret"))


def test_cookie_value() -> None:
    """cookie_value accepts the named cookie with the right value, and refuses a wrong value or a malformed header."""
    check = cookie_value("session", "abc")
    assert check(request("/x", "Cookie: other=1; session=abc"))
    assert not check(request("/x", "Cookie: session=abd"))
    assert not check(request("/x", 'Cookie: session="unterminated'))


@pytest.mark.parametrize("factory", [bearer_token, lambda secret: cookie_value("session", secret)])
def test_empty_secret_is_refused(factory) -> None:  # type: ignore[no-untyped-def]
    """An empty token or cookie value, which would accept anyone, raises ValueError."""
    with pytest.raises(ValueError):
        factory("")

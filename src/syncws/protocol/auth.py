"""Ready-made checks for ``auth=`` on a server or an endpoint.

An auth check is called on the connection's thread with the handshake's
:class:`~syncws.handshake.Request`, before the upgrade. It returns True to
accept, False to refuse with HTTP 401, or 401/403 to refuse with that status.
Secrets are compared in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import hmac
from http.cookies import CookieError, SimpleCookie
from typing import Callable, Optional, Union

from .handshake import Request

__all__ = ["bearer_token", "cookie_value"]

AuthCheck = Callable[[Request], Union[bool, int]]


def _same(given: Optional[str], expected: str) -> bool:
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(token: str, query_parameter: Optional[str] = "token") -> AuthCheck:
    """Accept a request that carries ``token`` as ``Authorization: Bearer <token>``,
    or as the query parameter ``query_parameter`` (for browsers, which cannot set
    headers on a websocket; None turns that off)."""
    if not token:
        raise ValueError("an empty token would accept anyone")

    def check(request: Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(value.strip(), token):
            return True
        if query_parameter is not None:
            values = request.query.get(query_parameter, [])
            return len(values) == 1 and _same(values[0], token)
        return False

    return check


def cookie_value(name: str, value: str) -> AuthCheck:
    """Accept a request whose ``Cookie`` header has ``name`` set to ``value``."""
    if not value:
        raise ValueError("an empty cookie value would accept anyone")

    def check(request: Request) -> bool:
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(request.headers.get("Cookie", ""))
        except CookieError:
            return False
        morsel = cookies.get(name)
        return morsel is not None and _same(morsel.value, value)

    return check

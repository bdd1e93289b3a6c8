"""Logging in to an rt-cloud web server for its ``login`` cookie, over HTTP(S), with the standard library.

rt-cloud's peers log in before every connection: ``GET /login`` (status 200,
and Tornado's ``_xsrf`` cookie), then ``POST /login`` with the form fields
``name``, ``password`` and ``_xsrf``, following the server's redirect to a
page that must answer 200; the server then has set the signed ``login``
cookie, which the websocket handshake sends as ``Cookie: login=<value>``.
A wrong name or password gets the form again, with status 200 and no
cookie. :func:`login` does the same with :mod:`urllib.request` and a cookie
jar, and keeps the cookie's value exactly as the server sent it (Tornado
quotes it: ``login="2|1:0|..."``), which is what the server's
``get_secure_cookie`` reads back.

Threads: none of its own; runs on the thread that connects.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from .. import timeouts
from ..exceptions import HandshakeError, NotConnected
from .proxy import Proxy, display_proxy

__all__ = ["check_login_options", "login", "login_url"]

logger = logging.getLogger(__name__)

_SCHEMES = {"ws": "http", "wss": "https"}


def login_url(url: str) -> str:
    """The login page of the server of websocket URL ``url``: ``http://`` for ``ws://``, ``https://`` for ``wss://``, path ``/login``."""
    parts = urlsplit(url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"cannot log in for {url!r}: give a ws:// or wss:// URL")
    return urlunsplit((scheme, parts.netloc, "/login", "", ""))


def check_login_options(url: str, proxy: Proxy, unix_socket: Optional[str]) -> None:
    """Raise ValueError for options a login cannot go with: a URL that is not ws:// or wss://, a SOCKS proxy, a Unix socket."""
    login_url(url)
    if unix_socket is not None:
        raise ValueError("logging in over a Unix socket is not supported")
    if isinstance(proxy, str) and urlsplit(proxy).scheme.lower() != "http":
        raise ValueError(f"logging in goes through an http:// proxy only, not {display_proxy(proxy)!r}")


def login(
    url: str,
    name: str,
    password: str,
    *,
    sslopt: Optional[dict[str, Any]] = None,
    timeout: Optional[float] = 10.0,
    proxy: Proxy = None,
) -> str:
    """Log in as ``name`` to the rt-cloud web server of websocket URL ``url``; return the ``login`` cookie's value.

    ``sslopt`` is the websocket's TLS options, as websocket-client takes
    them (``cert_reqs``, ``ca_certs`` or ``cafile``, ``ca_cert_path``,
    ``check_hostname``, ``certfile``, ``keyfile``, or a ready ``context``).
    ``timeout`` bounds the whole login (None or ``math.inf``: no bound).
    ``proxy``: None for the environment's, False for none, or an
    ``http://`` proxy URL.

    Raises HandshakeError with status 401 when the server refused the
    name or password (no ``login`` cookie came), with the HTTP status when a
    page answered another status than 200 (a 4xx is permanent, see
    :attr:`HandshakeError.permanent`), or 400 when the server set no
    ``_xsrf`` cookie (it is no rt-cloud web server); NotConnected when the
    server cannot be reached or does not answer in time.
    """
    page = login_url(url)
    limit = timeouts.check_timeout(timeout)
    deadline = None if limit is None else time.monotonic() + limit
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar),
        urllib.request.HTTPSHandler(context=_ssl_context(sslopt or {})),
        _proxy_handler(proxy),
    )
    # Post where the form came from: a login page reached through a redirect is posted to there.
    form_page = _open(opener, urllib.request.Request(page), deadline, "GET")
    xsrf = _cookie(jar, "_xsrf")
    if xsrf is None:
        raise HandshakeError(400, f"the login page {form_page} set no _xsrf cookie: is it an rt-cloud web server?")
    form = urllib.parse.urlencode({"name": name, "password": password, "_xsrf": xsrf}).encode()
    _open(opener, urllib.request.Request(form_page, data=form, method="POST"), deadline, "POST")
    cookie = _cookie(jar, "login")
    if cookie is None:
        raise HandshakeError(401, f"{form_page} refused the login as {name!r}: a wrong name or password, or a retry too soon after one")
    logger.debug("logged in to %s as %r", form_page, name)
    return cookie


def _open(opener: urllib.request.OpenerDirector, request: urllib.request.Request, deadline: Optional[float], what: str) -> str:
    """Open ``request`` (redirects followed) and return the final URL; its final status must be 200."""
    timeout = None if deadline is None else deadline - time.monotonic()
    if timeout is not None and timeout <= 0:
        raise NotConnected(f"logging in at {request.full_url} took too long")
    try:
        with opener.open(request, timeout=timeout) as response:
            status, final = response.status, response.geturl()
    except urllib.error.HTTPError as exc:
        exc.close()
        raise HandshakeError(exc.code, f"{what} {exc.url or request.full_url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise NotConnected(f"cannot log in at {request.full_url}: {reason}") from exc
    if status != 200:
        raise HandshakeError(status, f"{what} {final} answered {status}, not 200")
    return str(final)


def _cookie(jar: http.cookiejar.CookieJar, name: str) -> Optional[str]:
    """The value of the cookie ``name`` in ``jar``, exactly as the server set it (quotes included); None if none."""
    for cookie in jar:
        if cookie.name == name and cookie.value is not None:
            return cookie.value
    return None


def _ssl_context(sslopt: dict[str, Any]) -> ssl.SSLContext:
    """An SSL context made from websocket-client's ``sslopt`` as it reads them, for the login to trust what the websocket trusts."""
    given = sslopt.get("context")
    if isinstance(given, ssl.SSLContext):
        return given
    cafile = sslopt.get("ca_certs", sslopt.get("cafile"))
    context = ssl.create_default_context(cafile=cafile, capath=sslopt.get("ca_cert_path"))
    cert_reqs = sslopt.get("cert_reqs", ssl.CERT_REQUIRED)
    # check_hostname must be off before verify_mode may be CERT_NONE.
    context.check_hostname = bool(sslopt.get("check_hostname", cert_reqs != ssl.CERT_NONE))
    context.verify_mode = cert_reqs
    if sslopt.get("certfile"):
        context.load_cert_chain(sslopt["certfile"], sslopt.get("keyfile"), sslopt.get("password"))
    return context


def _proxy_handler(proxy: Proxy) -> urllib.request.ProxyHandler:
    """urllib's proxy handler for ``proxy``: the environment's for None, none for False, else the http:// proxy given."""
    if proxy is None:
        return urllib.request.ProxyHandler()
    if proxy is False:
        return urllib.request.ProxyHandler({})
    return urllib.request.ProxyHandler({"http": proxy, "https": proxy})

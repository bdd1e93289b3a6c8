"""rt-cloud's login, served by a syncws server: the ``/login`` form and the ``login`` cookie check.

rt-cloud's peers log in before they open a websocket (``RTCLOUD-WIRE.md``):
they ``GET /login`` for an ``_xsrf`` cookie, ``POST`` the form (``name``,
``password``, ``_xsrf``) and send the ``login`` cookie they get back with the
upgrade. :func:`add_login` serves that page on a :class:`~syncws.WebSocketServer`
(``add_http``), and :func:`login_auth` is the ``auth=`` check of the
endpoints it protects. The cookie is a Tornado signed value
(:mod:`syncws.rtcloud.signed_value`): one made by a real rt-cloud web server
with the same ``cookie_secret`` is as good as this server's, and the reverse.

Threads: the login page runs on the connection threads of the requests
(several at once); :class:`LoginPage`'s state (the failed attempts by name)
is under its lock. Password hashes are checked with ``bcrypt``, an optional
extra (``pip install syncws[rtcloud]``), imported when a login needs it.
"""

from __future__ import annotations

import hmac
import html
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Callable, Optional, Union

from ..protocol.handshake import Request
from ..protocol.http import HttpResponse, form_fields, request_cookies, set_cookie
from ..server.routes import AuthCheck
from ..server.server import WebSocketServer
from .signed_value import create_signed_value, decode_signed_value

__all__ = ["LOGIN_COOKIE", "LOGIN_DAYS", "RETRY_DELAY", "LoginPage", "add_login", "load_passwd_file", "login_auth", "login_user"]

logger = logging.getLogger(__name__)

#: The cookie that carries the signed user name, as rt-cloud names it.
LOGIN_COOKIE = "login"
#: How long a login cookie is valid, as rt-cloud's web server makes it.
LOGIN_DAYS = 0.5
#: Seconds a name that failed to log in waits before its next attempt is checked, as in rt-cloud.
RETRY_DELAY = 10.0
# The test mode's one account, as rt-cloud's server accepts it with --test.
_TEST_USER = ("test", "test")
# Names remembered for their failed attempts; past this many, the expired ones are forgotten.
_MAX_REMEMBERED_FAILURES = 10_000
# A bcrypt hash of a random password: an unknown name costs a check too, so timing tells no names.
# What this page sets as its _xsrf token (Tornado's own tokens are longer, with | separators).
_XSRF_TOKEN = re.compile(r"[0-9a-f]{32}")
_DUMMY_HASH = b"$2b$12$q0GCAdK58Aul7tpDI7m9x.eic5eTy1QILAtyDcZ1DZumH5WvQ6ccK"


def load_passwd_file(path: Union[str, os.PathLike[str]]) -> dict[str, str]:
    """Read rt-cloud's passwd file: one ``name,bcrypt-hash`` per line (blank lines and ``#`` comments skipped).

    Raises OSError when the file cannot be read and ValueError, naming the
    line, for a line that is not ``name,hash``.
    """
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            name, comma, hashed = text.partition(",")
            if not comma or not name.strip() or not hashed.strip():
                raise ValueError(f"{os.fspath(path)}, line {number}: not 'name,bcrypt-hash'")
            users[name.strip()] = hashed.strip()
    return users


def login_user(request: Request, cookie_secret: Union[str, bytes]) -> Optional[str]:
    """The user name in ``request``'s valid, unexpired ``login`` cookie, or None. Safe from any thread."""
    value = request_cookies(request).get(LOGIN_COOKIE)
    if value is None:
        return None
    # rt-cloud's peers send the cookie as their session stored it: in the double quotes it was set with.
    value = value.strip('"')
    name = decode_signed_value(cookie_secret, LOGIN_COOKIE, value, max_age_days=LOGIN_DAYS)
    if name is None:
        return None
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def login_auth(cookie_secret: Union[str, bytes]) -> AuthCheck:
    """An ``auth=`` check that lets in only a request with a valid, unexpired ``login`` cookie under ``cookie_secret``.

    Whoever signed the cookie (this server's :func:`add_login`, or an rt-cloud
    web server sharing the secret) does not matter; everything else is
    refused with HTTP 401, which rt-cloud's peers answer by logging in again.
    """
    _check_secret(cookie_secret)

    def check(request: Request) -> bool:
        return login_user(request, cookie_secret) is not None

    return check


def add_login(
    server: WebSocketServer,
    *,
    passwd_file: Union[str, os.PathLike[str], None] = None,
    users: Optional[Mapping[str, str]] = None,
    cookie_secret: Union[str, bytes],
    path: str = "/login",
    test_mode: bool = False,
) -> LoginPage:
    """Serve rt-cloud's login page at ``path`` on ``server``; return it.

    ``GET`` answers a small form and sets the ``_xsrf`` cookie; ``POST`` checks
    ``name`` and ``password`` against ``passwd_file`` (rt-cloud's
    ``name,bcrypt-hash`` lines, read again at every attempt, so users added
    with rt-cloud's ``addLogin`` count at once) or ``users`` (``{name:
    bcrypt-hash}``), and the form's ``_xsrf`` against the cookie. Success sets
    the ``login`` cookie (the name, signed with ``cookie_secret``, valid 0.5
    day) and answers 200. A wrong password or unknown name gets 401, a
    missing or wrong ``_xsrf`` 403, and no cookie; after a failure, the name's
    attempts for the next 10 s are refused with 429 unchecked. ``test_mode``
    accepts ``test``/``test`` too, as rt-cloud's test mode does.

    Pair it with ``auth=login_auth(cookie_secret)`` on the endpoints. Raises
    ValueError for an empty secret, or when neither ``passwd_file``,
    ``users`` nor ``test_mode`` gives anyone a way in.
    """
    page = LoginPage(passwd_file=passwd_file, users=users, cookie_secret=cookie_secret, test_mode=test_mode, secure=server.ssl_context is not None)
    server.add_http(path, page, methods=("GET", "POST"), max_body=16 * 1024)
    return page


class LoginPage:
    """The login form and its check: an HTTP route's function (``add_http``). Safe from any thread.

    ``clock`` is for tests that step over the retry delay; it returns seconds
    (``time.monotonic`` by default).
    """

    def __init__(
        self,
        *,
        passwd_file: Union[str, os.PathLike[str], None] = None,
        users: Optional[Mapping[str, str]] = None,
        cookie_secret: Union[str, bytes],
        test_mode: bool = False,
        secure: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_secret(cookie_secret)
        if passwd_file is None and users is None and not test_mode:
            raise ValueError("add_login needs passwd_file=, users= or test_mode=True: else nobody can log in")
        self.passwd_file = passwd_file
        self.users = dict(users) if users is not None else None
        self.cookie_secret = cookie_secret
        self.test_mode = test_mode
        self.secure = secure
        self._clock = clock
        # Synchronize access to _failures (name -> when its last failed attempt was checked).
        self._lock = threading.Lock()
        self._failures: dict[str, float] = {}

    def __call__(self, request: Request) -> HttpResponse:
        """Answer one request for the page (a connection thread)."""
        if request.method == "POST":
            return self._post(request)
        return self._form(request, 200, "")

    def _form(self, request: Request, status: int, message: str) -> HttpResponse:
        """The form, with the ``_xsrf`` token in a cookie and in a hidden field: the request's own, else a fresh one."""
        token = request_cookies(request).get("_xsrf", "")
        if not _XSRF_TOKEN.fullmatch(token):
            token = secrets.token_hex(16)
        note = f'<p class="error">{html.escape(message)}</p>' if message else ""
        body = _FORM.format(note=note, xsrf=token).encode("utf-8")
        return HttpResponse(status, body, headers=[set_cookie("_xsrf", token, http_only=False, secure=self.secure)])

    def _post(self, request: Request) -> HttpResponse:
        try:
            fields = form_fields(request)
        except ValueError:
            return self._form(request, 400, "The form could not be read.")
        name, password = fields.get("name", ""), fields.get("password", "")
        cookie_token, form_token = request_cookies(request).get("_xsrf", ""), fields.get("_xsrf", "")
        if not cookie_token or not hmac.compare_digest(cookie_token.encode(), form_token.encode()):
            logger.warning("login refused for %r from %s: missing or wrong _xsrf", name[:100], request.remote_address[0])
            return self._form(request, 403, "The form expired; please try again.")
        wait = self._retry_wait(name)
        if wait > 0:
            logger.warning("login of %r from %s refused: %.0f s left after a failed attempt", name[:100], request.remote_address[0], wait)
            return self._form(request, 429, f"Too many attempts; wait {wait:.0f} s.")
        if not self._check(name, password):
            self._note_failure(name)
            logger.warning("login failure for %r from %s", name[:100], request.remote_address[0])
            return self._form(request, 401, "Login failed.")
        logger.info("login of %r from %s", name, request.remote_address[0])
        signed = create_signed_value(self.cookie_secret, LOGIN_COOKIE, name).decode("ascii")
        cookie = set_cookie(LOGIN_COOKIE, signed, max_age=LOGIN_DAYS * 86400, secure=self.secure)
        return HttpResponse(200, _DONE.format(name=html.escape(name)).encode("utf-8"), headers=[cookie])

    def _retry_wait(self, name: str) -> float:
        """Seconds ``name`` must still wait after its last failure (0: its attempt is checked)."""
        with self._lock:
            failed = self._failures.get(name)
        return 0.0 if failed is None else max(0.0, failed + RETRY_DELAY - self._clock())

    def _note_failure(self, name: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= _MAX_REMEMBERED_FAILURES:
                # Names guessed at random must not grow this without bound: drop the expired.
                self._failures = {n: t for n, t in self._failures.items() if now - t < RETRY_DELAY}
            self._failures[name] = now

    def _check(self, name: str, password: str) -> bool:
        """True when ``password`` is ``name``'s; an unknown name costs a bcrypt check all the same."""
        if self.test_mode and (name, password) == _TEST_USER:
            return True
        import bcrypt  # the rtcloud extra: only a login needs it

        hashed = self._users().get(name)
        try:
            matches = bool(bcrypt.checkpw(password.encode("utf-8"), (hashed or "").encode("utf-8") or _DUMMY_HASH))
        except ValueError:
            logger.warning("the password hash of %r is not a bcrypt hash", name)
            return False
        return matches and hashed is not None

    def _users(self) -> dict[str, str]:
        """The accounts: ``users``, then the passwd file read now; an unreadable file adds none (logged)."""
        users = dict(self.users or {})
        if self.passwd_file is not None:
            try:
                users.update(load_passwd_file(self.passwd_file))
            except (OSError, ValueError) as exc:
                logger.error("cannot read the passwd file: %s", exc)
        return users


def _check_secret(cookie_secret: Union[str, bytes]) -> None:
    if not isinstance(cookie_secret, (str, bytes)) or not cookie_secret:
        raise ValueError("cookie_secret must be a non-empty str or bytes")


_FORM = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Log in</title>
<style>body{{font-family:sans-serif;max-width:22em;margin:4em auto}}label,input{{display:block;width:100%;margin:.3em 0}}.error{{color:#b00}}</style>
</head><body><h1>Log in</h1>{note}
<form method="post"><input type="hidden" name="_xsrf" value="{xsrf}">
<label>Name <input name="name" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<input type="submit" value="Log in"></form></body></html>
"""

_DONE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Logged in</title></head>
<body><p>Logged in as {name}.</p></body></html>
"""

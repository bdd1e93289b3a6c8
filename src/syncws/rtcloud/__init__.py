"""rt-cloud's deployed peers on a syncws server: its login, its cookies, its endpoints.

An rt-cloud site can put a syncws server in place of its web server's
websocket side while every peer (the scanner's data service, the subject
service, the subject's browser page) stays as it is::

    server = syncws.WebSocketServer("0.0.0.0", 8888, ssl_context=context)
    add_login(server, passwd_file="certs/passwd", cookie_secret=secret)
    handlers = add_endpoints(server, cookie_secret=secret)
    server.start()
    handlers["wsData"].doRequest({"cmd": "rpc", "class": "DataStore", "attribute": "getFile", "args": ["a.dcm"]})

docs/migration.md has the whole recipe, and RTCLOUD-WIRE.md's facts are
in :mod:`syncws.calls.rtcloud_wire` (requests, peers' replies) and
:mod:`syncws.calls.rtcloud_reply` (replies read back).

Layer 6, an edge: imports the server and everything below it; nothing imports it.
"""

from __future__ import annotations

from typing import Union

from ..handlers.handlers import DataWebSocketHandler
from ..server.request_handler import RequestHandler
from ..server.server import WebSocketServer
from .login import LOGIN_COOKIE, LOGIN_DAYS, RETRY_DELAY, LoginPage, add_login, load_passwd_file, login_auth, login_user
from .signed_value import create_signed_value, decode_signed_value

__all__ = [
    "ENDPOINTS",
    "LOGIN_COOKIE",
    "LOGIN_DAYS",
    "RETRY_DELAY",
    "LoginPage",
    "add_endpoints",
    "add_login",
    "create_signed_value",
    "decode_signed_value",
    "load_passwd_file",
    "login_auth",
    "login_user",
]

#: The websocket endpoints of rt-cloud's web server that its peers connect to.
ENDPOINTS = ("wsData", "wsSubject")


def add_endpoints(
    server: WebSocketServer,
    *,
    cookie_secret: Union[str, bytes],
    names: tuple[str, ...] = ENDPOINTS,
    allow_pickle: bool = False,
) -> dict[str, RequestHandler]:
    """Serve ``/<name>`` for each of ``names`` as rt-cloud's web server does; return their RequestHandlers by name.

    Each endpoint lets in only a connection with a valid ``login`` cookie
    (:func:`login_auth`), keeps its connections in ``server``'s registry
    under ``name`` (rt-cloud's peers are asked as ``RequestHandler(name,
    ...)`` asks them), and speaks rt-cloud's format (``wire="rtcloud"``;
    ``allow_pickle`` as :class:`~syncws.RequestHandler` takes it). Safe from
    any thread, before or after ``start()``.
    """
    auth = login_auth(cookie_secret)
    handlers: dict[str, RequestHandler] = {}
    for name in names:
        handler = RequestHandler(name, server, wire="rtcloud", allow_pickle=allow_pickle)
        server.add_handler(f"/{name}", DataWebSocketHandler, auth=auth, name=name, callback=handler.callback)
        handlers[name] = handler
    return handlers

"""What a server serves at each path: websocket endpoints, HTTP routes and static resources.

:class:`Routes` is the table, safe from any thread: ``add_handler``,
``add_http`` and ``add_static`` fill it (any thread), and each connection's
thread looks its request's path up in it (:mod:`syncws.server.admission`,
:mod:`syncws.server.plain_http`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any, Callable, Optional, Union

from ..exceptions import HandshakeError
from ..handlers.handlers import BaseWebSocketHandler
from ..protocol.handshake import Request, is_token
from ..protocol.http import HttpResponse

__all__ = ["AuthCheck", "SubprotocolSelector", "HttpFunction", "Endpoint", "HttpRoute", "Routes", "HTTP_METHODS", "RouteConfig", "check_auth"]

#: The methods an HTTP route may answer.
HTTP_METHODS = ("GET", "HEAD", "POST")

#: ``auth(request)`` returns True to accept, False to refuse with 401, or an HTTP status to refuse with.
AuthCheck = Callable[[Request], Union[bool, int]]
#: ``select_subprotocol(request, offered)`` returns one of ``offered`` (the client's list), or None for none;
#: it may raise HandshakeError to refuse the connection with that HTTP status.
SubprotocolSelector = Callable[[Request, list[str]], Optional[str]]
#: An HTTP route's function: the request (``method``, ``path``, ``query``, ``headers``, ``body``) to its response.
HttpFunction = Callable[[Request], HttpResponse]

logger = logging.getLogger(__name__)


class Endpoint:
    """What ``add_handler`` registered for one path: the handler class, its ``initialize`` kwargs and the checks."""

    def __init__(
        self,
        handler_class: type[BaseWebSocketHandler],
        kwargs: dict[str, Any],
        auth: Optional[AuthCheck],
        origins: Optional[list[str]],
        subprotocols: Optional[Sequence[str]] = None,
        select_subprotocol: Optional[SubprotocolSelector] = None,
        require_subprotocol: bool = False,
    ) -> None:
        if not (isinstance(handler_class, type) and issubclass(handler_class, BaseWebSocketHandler)):
            raise TypeError(f"handler_class must be a subclass of syncws.BaseWebSocketHandler, not {handler_class!r}")
        if isinstance(subprotocols, str):
            raise TypeError("subprotocols must be a list of names, not a str")
        for name in subprotocols or ():
            if not is_token(name):
                raise ValueError(f"subprotocol names are HTTP tokens (no spaces, commas or quotes): {name!r}")
        if require_subprotocol and not subprotocols and select_subprotocol is None:
            raise ValueError("require_subprotocol needs subprotocols= or select_subprotocol=")
        self.handler_class = handler_class
        self.kwargs = kwargs
        self.auth = auth
        self.origins = origins
        self.subprotocols = list(subprotocols or ())
        self.select_subprotocol = select_subprotocol
        self.require_subprotocol = require_subprotocol
        #: The path it serves, as its counters are labelled ("*" while it is, or as, the fallback).
        self.label = "*"


class HttpRoute:
    """What ``add_http`` registered for one path: the function, the methods it answers, its check and body limit."""

    def __init__(self, function: HttpFunction, methods: Collection[str], auth: Optional[AuthCheck], max_body: int) -> None:
        if isinstance(methods, str):
            raise TypeError("methods must be a list of names, not a str")
        unknown = [m for m in methods if m not in HTTP_METHODS]
        if unknown or not methods:
            raise ValueError(f"an HTTP route answers some of {', '.join(HTTP_METHODS)}, not {list(methods)!r}")
        if max_body < 0:
            raise ValueError("max_body must not be negative")
        self.function = function
        # A route that answers GET answers HEAD too, as HTTP servers do.
        self.methods = frozenset(methods) | ({"HEAD"} if "GET" in methods else set())
        self.auth = auth
        self.max_body = max_body


class Routes:
    """The endpoints, HTTP routes and static resources of one server, by path. Safe from any thread."""

    def __init__(self) -> None:
        # Synchronize access to _endpoints, _fallback, _http and _static.
        self._lock = threading.Lock()
        self._endpoints: dict[str, Endpoint] = {}
        self._fallback: Optional[Endpoint] = None
        self._http: dict[str, HttpRoute] = {}
        self._static: dict[str, tuple[bytes, str]] = {}

    def add(self, path: str, endpoint: Endpoint) -> None:
        """Serve ``path`` with ``endpoint``; ValueError when the path is malformed or already served."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a str that starts with '/': {path!r}")
        with self._lock:
            if path in self._endpoints:
                raise ValueError(f"{path!r} is already served by {self._endpoints[path].handler_class.__name__}")
            self._endpoints[path] = endpoint
            endpoint.label = path

    def set_fallback(self, endpoint: Endpoint) -> None:
        """Serve every path that no :meth:`add` serves with ``endpoint``; ValueError if one is set already."""
        with self._lock:
            if self._fallback is not None:
                raise ValueError(f"every other path is already served by {self._fallback.handler_class.__name__}")
            self._fallback = endpoint

    def add_static(self, path: str, body: bytes, content_type: str) -> None:
        """Answer a plain GET of ``path`` with ``body``."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        with self._lock:
            self._static[path] = (bytes(body), content_type)

    def route(self, path: str) -> Optional[Endpoint]:
        """The endpoint serving ``path`` (the fallback when none is added for it), or None."""
        with self._lock:
            return self._endpoints.get(path, self._fallback)

    def add_http(self, path: str, route: HttpRoute) -> None:
        """Answer plain HTTP requests for ``path`` with ``route``; ValueError when the path is malformed or taken."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"path must be a str that starts with '/': {path!r}")
        with self._lock:
            if path in self._http or path in self._static:
                raise ValueError(f"{path!r} already answers plain HTTP requests")
            self._http[path] = route

    def http(self, path: str) -> Optional[HttpRoute]:
        """The HTTP route at ``path``, or None."""
        with self._lock:
            return self._http.get(path)

    def paths(self) -> dict[str, list[str]]:
        """What is served where, for a page that lists it: ``{"endpoints": [...], "http": [...], "static": [...]}``."""
        with self._lock:
            return {"endpoints": sorted(self._endpoints), "http": sorted(self._http), "static": sorted(self._static)}

    def static(self, path: str) -> Optional[tuple[bytes, str]]:
        """The body and content type served at ``path``, or None."""
        with self._lock:
            return self._static.get(path)


class RouteConfig:
    """The server's methods that fill its :class:`Routes`: endpoints, HTTP routes and static resources.

    A mixin of :class:`~syncws.server.server.WebSocketServer`; every method is
    safe from any thread, also while serving.
    """

    routes: Routes

    def add_handler(
        self,
        path: str,
        handler_class: type[BaseWebSocketHandler],
        *,
        auth: Optional[AuthCheck] = None,
        origins: Optional[list[str]] = None,
        subprotocols: Optional[list[str]] = None,
        select_subprotocol: Optional[SubprotocolSelector] = None,
        require_subprotocol: bool = False,
        **kwargs: Any,
    ) -> None:
        """Serve ``path`` with one ``handler_class`` object per connection, given ``initialize(**kwargs)``.

        ``auth`` and ``origins`` apply to this path and take the place of the
        server's. Safe from any thread, also while serving. Raises TypeError
        when ``handler_class`` is not a BaseWebSocketHandler subclass and
        ValueError when ``path`` is malformed or already served.

        Subprotocols (``Sec-WebSocket-Protocol``): the server answers with the
        first of ``subprotocols`` (its order of preference) that the client
        offers, and the handler sees it as ``selected_subprotocol``. When
        none matches, or the client offers none, the connection opens
        without one (no header, as RFC 6455 says; ``selected_subprotocol``
        is None), unless ``require_subprotocol`` is true: then the handshake
        is refused with HTTP 400. ``select_subprotocol(request, offered)``
        decides instead of the list, on the connection's thread: it returns
        one of ``offered`` or None, and may raise HandshakeError to refuse.
        """
        self.routes.add(path, Endpoint(handler_class, kwargs, auth, origins, subprotocols, select_subprotocol, require_subprotocol))

    def add_fallback_handler(
        self,
        handler_class: type[BaseWebSocketHandler],
        *,
        auth: Optional[AuthCheck] = None,
        origins: Optional[list[str]] = None,
        subprotocols: Optional[list[str]] = None,
        select_subprotocol: Optional[SubprotocolSelector] = None,
        require_subprotocol: bool = False,
        **kwargs: Any,
    ) -> None:
        """Serve every path that :meth:`add_handler` does not with ``handler_class``, as add_handler does.

        Without one, such paths get HTTP 404. Safe from any thread, also
        while serving. Raises TypeError as add_handler does, and ValueError
        when a fallback is set already.
        """
        self.routes.set_fallback(Endpoint(handler_class, kwargs, auth, origins, subprotocols, select_subprotocol, require_subprotocol))

    def add_static(self, path: str, body: bytes, content_type: str = "text/html; charset=utf-8") -> None:
        """Answer a plain HTTP GET of ``path`` with ``body`` (a page, or the JavaScript client).

        Meant for small resources that go with the websocket endpoints, not as a
        web server. The handshake limits and ``handshake_timeout`` apply. Safe from any thread.
        """
        self.routes.add_static(path, body, content_type)

    def add_http(
        self,
        path: str,
        function: HttpFunction,
        *,
        methods: Collection[str] = ("GET",),
        auth: Optional[AuthCheck] = None,
        max_body: int = 65536,
    ) -> None:
        """Answer plain HTTP requests (no websocket upgrade) for ``path`` with ``function(request)``.

        ``function`` gets the :class:`~syncws.protocol.handshake.Request`
        (``method``, ``path``, ``query``, ``headers``, and for a POST its
        ``body``, at most ``max_body`` bytes: longer ones get 413) and returns
        an :class:`~syncws.protocol.http.HttpResponse`. It runs on the
        connection's thread, within ``handshake_timeout``; what it raises is
        logged and answered 500. ``methods`` are some of GET, HEAD and POST
        (a route with GET answers HEAD too); another method gets 405.
        ``auth`` refuses as it does for an endpoint (401 or 403). A websocket
        upgrade of the same path still goes to the endpoint there, if any.
        Meant for small pages and forms (a login), not as a web server.
        Safe from any thread. ValueError when ``path`` already answers HTTP.
        """
        self.routes.add_http(path, HttpRoute(function, methods, auth, max_body))


def check_auth(auth: Optional[AuthCheck], request: Request) -> None:
    """Raise HandshakeError 401 or 403 when ``auth`` refuses the request, 500 when it fails."""
    if auth is None:
        return
    try:
        verdict = auth(request)
    except Exception:
        logger.exception("auth check failed on %r", request)
        raise HandshakeError(500, "authentication check failed", refusal="auth") from None
    if verdict is True:
        return
    status = verdict if isinstance(verdict, int) and verdict in (401, 403) else 401
    raise HandshakeError(status, "not authorized", refusal="auth")

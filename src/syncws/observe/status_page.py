"""The live status page: one HTML page (``syncws/static/status.html``), its stats as JSON, and its websocket.

The page loads ``syncws.js`` from beside itself and asks the websocket at
its own path for ``stats`` once a second, drawing the last minutes as small
plots; nothing is built, nothing is fetched from elsewhere. The websocket's
connections are the page's alone: they join no registry name, so a
RequestHandler never takes one for a peer.

Threads: the HTTP function runs on the requesting connection's thread; the
websocket handler's methods on its own connection's, as every handler's.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Optional

from ..calls import callformat
from ..handlers.handlers import BaseWebSocketHandler
from ..protocol.handshake import Request
from ..protocol.http import HttpResponse
from ..protocol.protocol import Message
from ..static import javascript_client, status_page

__all__ = ["StatusSocketHandler", "page_route"]

logger = logging.getLogger(__name__)

Stats = Callable[[], dict[str, Any]]


def page_route(path: str, stats: Stats) -> Callable[[Request], HttpResponse]:
    """The HTTP function of the status path: the page, its ``syncws.js``, or ``?format=json``."""
    page = status_page()
    script = javascript_client()

    def answer(request: Request) -> HttpResponse:
        if "json" in request.query.get("format", ()):
            return HttpResponse(200, json.dumps(stats()).encode(), "application/json", [("Cache-Control", "no-store")])
        if "syncws.js" in request.query.get("file", ()):
            return HttpResponse(200, script, "text/javascript; charset=utf-8")
        return HttpResponse(200, page, "text/html; charset=utf-8", [("Cache-Control", "no-store")])

    return answer


class StatusSocketHandler(BaseWebSocketHandler):
    """The status page's websocket: answers ``{"cmd": "stats", "callId": n}`` with the stats (its connection's thread)."""

    def initialize(self, stats: Optional[Stats] = None, **kwargs: Any) -> None:  # type: ignore[override]
        """Take the server's ``stats`` function; join no registry name (connection thread)."""
        if stats is None:
            raise TypeError("StatusSocketHandler needs stats=")
        self.stats = stats

    def open(self) -> None:
        """Nothing to announce: a status page is no peer."""

    def on_close(self) -> None:
        """Nothing to leave."""

    def on_message(self, message: Message) -> None:
        """Answer one request of the page: ``stats``, or 404 for any other command."""
        try:
            request = json.loads(message) if isinstance(message, str) else None
        except ValueError:
            request = None
        if not isinstance(request, dict) or "callId" not in request:
            return  # not a request: the page sends nothing else, and a stray message needs no answer
        cmd, call_id = request.get("cmd"), request["callId"]
        if cmd == "stats":
            reply = callformat.encode_result(cmd, call_id, self.stats())
        else:
            reply = json.dumps(callformat.error_reply(cmd, call_id, 404, f"the status page answers 'stats', not {cmd!r}"))
        self.write_message(reply)

"""``stats()``, ``add_metrics()`` and ``add_status_page()``: what a server tells its operator.

:class:`Observing` is mixed into :class:`syncws.WebSocketServer`. ``stats()``
puts the server's counters (:mod:`syncws.observe.counters`), each bound
RequestHandler's (:mod:`syncws.observe.requests`) and a look at the
connections, threads and cluster of this moment into one plain dict. The
metrics route (:mod:`syncws.observe.exposition`) and the status page
(:mod:`syncws.observe.status_page`) serve that same dict, read when asked.

Threads: every method is safe from any thread. ``stats()`` takes the
server's lock once to copy its connection table, then each counter group's
own lock in turn: each group is copied at one moment, the groups a few
microseconds apart.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

from ..engine.connection import Connection
from ..handlers.handlers import BaseWebSocketHandler
from ..protocol.handshake import Request
from ..protocol.http import HttpResponse
from .counters import ServerCounters
from .requests import RequestCounters

__all__ = ["Observing"]

#: ``auth(request)``, as for an endpoint: True to accept, False (401) or an HTTP status to refuse.
Auth = Callable[[Request], Any]


class ClusterHealth(Protocol):
    """What stats() asks of a cluster (a RedisCluster): what it knows now, without asking Redis."""

    def health(self) -> dict[str, Any]: ...


class Observing:
    """The observing half of a server (mixed into WebSocketServer). Safe from any thread."""

    counters: ServerCounters
    max_connections: int
    cluster: Optional[ClusterHealth]  # a RedisCluster, which has health()
    _lock: threading.Lock
    _handlers: dict[Connection, BaseWebSocketHandler]
    _conn_threads: set[threading.Thread]

    if TYPE_CHECKING:  # the server's own

        @property
        def url(self) -> str: ...

        def _workers_handling(self) -> int: ...

        def _handler_pool_threads(self) -> int: ...

        def add_http(self, path: str, function: Callable[[Request], HttpResponse], *, methods: Any = ..., auth: Any = ..., max_body: int = ...) -> None: ...

        def add_handler(self, path: str, handler_class: type[BaseWebSocketHandler], *, auth: Any = None, **kwargs: Any) -> None: ...

        def add_static(self, path: str, body: bytes, content_type: str = ...) -> None: ...

    def _init_observing(self) -> None:
        self.counters = ServerCounters()
        self._started_at = time.monotonic()
        # Synchronize access to _request_counters (the list; each RequestCounters has its own lock).
        self._observing_lock = threading.Lock()
        self._request_counters: list[RequestCounters] = []

    def add_request_counters(self, counters: RequestCounters) -> None:
        """Report ``counters`` (a RequestHandler's) in :meth:`stats` and the metrics. Any thread."""
        with self._observing_lock:
            self._request_counters.append(counters)

    def stats(self) -> dict[str, Any]:
        """A snapshot of how the server is doing, as a plain dict (JSON-able). Safe from any thread.

        Cheap enough to call once a second with thousands of connections.
        docs/observability.md says what each figure means.
        """
        endpoints, refused = self.counters.snapshot()
        with self._lock:
            connections = list(self._handlers)
            threads = len(self._conn_threads)
        with self._observing_lock:
            handlers = list(self._request_counters)
        requests: dict[str, Any] = {}
        for counters in handlers:
            requests.setdefault(counters.name, counters.snapshot())  # a second handler of one name: the first's figures
        handling = self._workers_handling()
        pool_threads = self._handler_pool_threads()  # the selector engine's workers; 0 on the thread engine
        command_threads = [r["commands"] for r in requests.values()]
        return {
            "server": {
                "url": self.url,
                "uptime": round(time.monotonic() - self._started_at, 3),
                "connections": len(connections),
                "max_connections": self.max_connections,
            },
            "endpoints": endpoints,
            "handshakes_refused": refused,
            "requests": requests,
            "send_queues": {
                "bytes": sum(connection.send_queue_bytes for connection in connections),
                "closed_full": sum(endpoint["closed_send_queue_full"] for endpoint in endpoints.values()),
            },
            "workers": {
                "busy": handling + sum(c["busy"] for c in command_threads),
                "idle": max(0, threads + pool_threads - handling) + sum(c["idle"] for c in command_threads),
                "connection_threads": threads,
                "handler_pool_threads": pool_threads,
                "handling_messages": handling,
                "command_threads": sum(c["busy"] + c["idle"] for c in command_threads),
            },
            "cluster": self.cluster.health() if self.cluster is not None else None,
        }

    def add_metrics(self, path: str = "/metrics", auth: Optional[Auth] = None) -> None:
        """Serve :meth:`stats` at ``path`` in the Prometheus text format (docs/observability.md).

        Needs the ``prometheus-client`` package (``pip install syncws[metrics]``):
        ImportError saying so, at once, without it. ``auth`` refuses a scrape
        as it refuses a handshake (401 or 403). Safe from any thread.
        """
        from .exposition import metrics_route  # prometheus_client is imported there, and only there

        self.add_http(path, metrics_route(self.stats), auth=auth)

    def add_status_page(self, path: str = "/status", auth: Optional[Auth] = None) -> None:
        """Serve a live status page at ``path``: one HTML page whose plots follow :meth:`stats` over a websocket.

        ``path`` answers three ways, each behind ``auth``: a browser's GET gets
        the page, ``GET path?format=json`` the stats as JSON (what
        ``syncws stats`` reads), and a websocket at ``path`` the stats on
        request (the page's ``syncws.js`` asks once a second). Safe from any thread.
        """
        from .status_page import StatusSocketHandler, page_route

        self.add_http(path, page_route(path, self.stats), auth=auth)
        self.add_handler(path, StatusSocketHandler, auth=auth, stats=self.stats)

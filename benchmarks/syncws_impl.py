"""``syncws``, ``syncws_inline`` and ``syncws_peer_asks``: this library, measured through its public API only.

The server is a ``WebSocketServer``; fan-out and the connection counts use its
registry (``sendWebSocketMessage``, ``registry.connections``); the client is
``syncws.connect``; requests go through ``RequestHandler.doRequest`` to a
``RemoteService`` peer, whose ``echo`` command is registered ``inline=True``
for ``syncws_inline``. ``syncws_peer_asks`` measures the other direction: the
measuring process is the peer, calling ``RemoteService.request``, and the
child process is the server, answering with commands registered on its
``RequestHandler``. ``syncws_deflate`` is syncws with permessage-deflate:
the server accepts it (its default), and its fan-out clients and its peer
offer it (``RemoteService(compression="deflate")``). ``syncws_metrics`` serves
``/metrics`` and ``/status`` and has ``/metrics`` scraped once a second while
it runs; ``syncws_uncounted`` counts nothing (its counters replaced by ones
that do nothing): the two measure what observability costs the request
path. The module is named
``syncws_impl`` so as not to shadow the package.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from typing import Any, Optional

import syncws
from syncws.observe import EndpointCounters

from .common import HOST, BenchError, RequesterBase, ServeBase, json_message, payload, tcp_bytes, ws_url


def engine_of(impl: str) -> Optional[str]:
    """The server engine an implementation name asks for: ``syncws_threads`` the thread engine,
    ``syncws_reactor`` the selector engine by name, every other the default (the selector engine)."""
    return {"syncws_threads": "threads", "syncws_reactor": "reactor"}.get(impl)


class Serve(ServeBase):
    """Echo, bulk, fan-out and idle endpoints on one ``WebSocketServer``."""

    def __init__(self, impl: str = "syncws") -> None:
        class Echo(syncws.BaseWebSocketHandler):
            def on_message(self, message: Any) -> None:
                self.write_message(message, binary=isinstance(message, bytes))

        class BulkUp(syncws.BaseWebSocketHandler):
            def on_message(self, message: Any) -> None:
                self.write_message(str(len(message)))

        class BulkDown(syncws.BaseWebSocketHandler):
            def on_message(self, message: Any) -> None:
                self.write_message(payload(int(message)), binary=True)

        class Quiet(syncws.BaseWebSocketHandler):
            """Joins the registry on open (the base class does), ignores what it is sent."""

            def on_message(self, message: Any) -> None:
                pass

        self.server = syncws.WebSocketServer(host=HOST, port=0, engine=engine_of(impl))
        self.server.add_handler("/echo", Echo, name="echo")
        self.server.add_handler("/bulkup", BulkUp, name="bulkup")
        self.server.add_handler("/bulkdown", BulkDown, name="bulkdown")
        self.server.add_handler("/fanout", Quiet, name="fanout")
        self.server.add_handler("/idle", Quiet, name="idle")
        self.server.start()
        self.port = self.server.port

    def count(self, path: str) -> int:
        """Open connections on ``path``, from the server's registry."""
        return len(self.server.registry.connections(path.lstrip("/")))

    def broadcast(self, msg: str) -> None:
        """The library's broadcast."""
        syncws.sendWebSocketMessage("fanout", msg, registry=self.server.registry)


class Client:
    """The echo and bulk client: ``syncws.connect``."""

    def __init__(self, port: int, path: str) -> None:
        self.c = syncws.connect(ws_url(port, path))

    def send(self, msg: Any) -> None:
        """A str as a text frame, bytes as a binary one."""
        self.c.send(msg)

    def recv(self) -> Any:
        """The next message, within 30 s."""
        m = self.c.recv(timeout=30)
        if m is None:
            raise BenchError("syncws connection closed")
        return m

    def close(self) -> None:
        """Close the connection."""
        self.c.close()


def Requester(impl: str = "syncws") -> RequesterBase:
    """The caller's side of the request workloads: the server's RequestHandler, or for ``syncws_peer_asks`` the peer."""
    return PeerAsks() if impl == "syncws_peer_asks" else ServerAsks(impl)


class _Uncounted(EndpointCounters):
    """Endpoint counters that count nothing: what the request path costs without observability."""

    def received(self, message: Any) -> None:
        pass

    def sent(self, size: int) -> None:
        pass


def _scrape_forever(url: str) -> None:
    """GET ``url`` once a second, as Prometheus would, until the process ends (a daemon thread)."""
    while True:  # the benchmark's process ends with os._exit
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
        time.sleep(1.0)


class ServerAsks(RequesterBase):
    """``RequestHandler`` on a ``/wsData`` endpoint: the library's own call table, not the harness's."""

    def __init__(self, impl: str = "syncws") -> None:
        super().__init__()
        self.server = syncws.WebSocketServer(host=HOST, port=0, engine=engine_of(impl))
        self.rh = syncws.RequestHandler("wsData", self.server)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=self.rh.callback)
        if impl == "syncws_uncounted":  # counting off: the floor that syncws_metrics is measured against
            uncounted = _Uncounted("/wsData")
            self.server.counters.endpoint = lambda label: uncounted  # type: ignore[method-assign]
            self.rh.request_counters.counting = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self.server.start()
        if impl == "syncws_metrics":  # counting on, /metrics served and scraped once a second meanwhile
            self.server.add_metrics()
            self.server.add_status_page()
            metrics_url = self.server.url.replace("ws://", "http://") + "/metrics"
            threading.Thread(target=_scrape_forever, args=(metrics_url,), name="bench-scraper", daemon=True).start()
        self.url = self.server.url + "/wsData"

    def wait_connected(self, timeout: float) -> None:
        """Return once a request reaches the peer."""
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            try:
                self.rh.doRequest({"cmd": "echo", "x": 0}, timeout=max(0.5, deadline - time.monotonic()))
                return
            except syncws.NotConnected:
                if time.monotonic() > deadline:
                    raise RuntimeError("syncws peer did not connect") from None
                time.sleep(0.02)

    def doRequest(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """``RequestHandler.doRequest``."""
        return self.rh.doRequest(msg, timeout=timeout)

    def wire_bytes(self) -> int:
        """Bytes sent and received so far on the peer's connection, as TCP counts them."""
        handler = self.server.registry.newest("wsData")
        return tcp_bytes(handler.connection.sock) if handler is not None else 0


class PeerAsks(RequesterBase):
    """A ``RemoteService`` that calls the server in the child process (``run_peer`` serves there, on ``url``)."""

    def __init__(self) -> None:
        super().__init__()
        # A free loopback port for the child's server to listen on: the child is started with this URL.
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        self.url = ws_url(port, "/wsData")
        self.service = syncws.RemoteService(self.url, backoff_min=0.02, backoff_max=0.1)

    def wait_connected(self, timeout: float) -> None:
        """Return once connected to the child's server."""
        self.service.start(timeout=timeout)

    def doRequest(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """``RemoteService.request``."""
        return self.service.request(msg, timeout=timeout)


def run_peer(impl: str, url: str) -> None:
    """The other side of the request workloads until the process ends: a ``RemoteService`` answering echo
    (inline for ``syncws_inline``) and blob; for ``syncws_peer_asks``, a server whose RequestHandler does."""
    if impl == "syncws_peer_asks":
        _serve_commands(url)
        return
    svc = syncws.RemoteService(url, compression="deflate" if impl == "syncws_deflate" else None)
    svc.register("echo", lambda msg: msg.get("x"), inline=impl == "syncws_inline")
    svc.register("blob", lambda msg: bytes(int(msg["size"])))
    svc.register("json", lambda msg: json_message(int(msg["seed"])))
    svc.run_forever()


def _serve_commands(url: str) -> None:
    """A ``WebSocketServer`` on ``url``'s port whose ``RequestHandler`` answers echo and blob, until the process ends."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    server = syncws.WebSocketServer(host=HOST, port=port)
    rh = syncws.RequestHandler("wsData", server)
    rh.register("echo", lambda msg, conn: msg.get("x"))
    rh.register("blob", lambda msg, conn: bytes(int(msg["size"])))
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=rh.callback)
    server.start()
    threading.Event().wait()  # the benchmark kills this process when done

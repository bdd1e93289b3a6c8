"""``syncws serve``: a server with ready-made endpoints, for poking at from other tools and browsers.

:func:`run_serve` runs on the main thread until SIGINT (Ctrl-C), which stops
at once, or SIGTERM, which first lets the calls in flight finish
(``--drain``); both end with exit code 0. The server's own threads are
:class:`~syncws.WebSocketServer`'s.
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any, Optional

from ..cluster.cluster import ClusterError, RedisCluster
from ..engine.tls import server_context
from ..handlers.handlers import DataWebSocketHandler
from ..handlers.registry import ConnectionRegistry
from ..protocol.auth import bearer_token
from ..rtcloud import add_endpoints, add_login, load_passwd_file
from ..server.endpoints import BroadcastHandler, CallGatewayHandler, EchoHandler, RelayHandler
from ..server.request_handler import RequestHandler
from ..server.server import WebSocketServer
from ..static import javascript_client
from .demo import DEMO_PEER_COMMANDS, DEMO_SETTINGS
from .signals import StopSignals, drain_then_stop

__all__ = ["run_serve", "add_serve_arguments", "is_loopback", "SERVE_ENDPOINTS", "SERVE_PATHS", "SERVE_COMMANDS", "METRICS_PATHS"]

logger = logging.getLogger(__name__)

#: What ``syncws serve`` serves where: each path and what it does. The websocket
#: endpoints come first; the last two are plain HTTP GETs.
SERVE_PATHS = (
    ("/echo", "sends every message back"),
    ("/broadcast", "sends every message to every connection of /broadcast"),
    ("/relay", "sends every message to every other connection of /relay"),
    ("/wsData", "for RemoteService peers (e.g. `syncws peer URL/wsData`)"),
    ("/call", "the gateway `syncws call` uses to make requests of those peers"),
    ("/syncws.js", "the JavaScript client for browser pages (plain HTTP GET)"),
    ("/", "this list, as a web page (plain HTTP GET)"),
)

#: The websocket endpoints of ``syncws serve`` (it also serves ``/syncws.js`` and ``/`` over plain HTTP).
SERVE_ENDPOINTS = tuple(path for path, _ in SERVE_PATHS[:5])

#: What ``syncws serve --metrics`` serves besides, behind --token as the endpoints are.
METRICS_PATHS = (
    ("/metrics", "the server's stats in the Prometheus text format (plain HTTP GET)"),
    ("/status", "a live status page (plain HTTP GET); ?format=json gives the stats `syncws stats` reads"),
)

#: The commands ``syncws serve`` answers for its /wsData peers (``service.request``, ``peer.request`` in a page).
SERVE_COMMANDS = (("getSettings", "returns the demo's settings, " + ", ".join(f"{k}={v}" for k, v in DEMO_SETTINGS.items())),)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The options of ``syncws serve``."""
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8888, help="port (default 8888; 0 picks a free one)")
    serve.add_argument("--unix-socket", metavar="PATH", help="listen on this Unix domain socket instead of --host and --port (clients: --unix-socket PATH)")
    serve.add_argument("--max-message-size", type=int, default=64 * 1024 * 1024, help="bytes (default 64 MiB)")
    serve.add_argument("--certfile", help="TLS certificate chain (PEM): serve wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    serve.add_argument("--token", help="require this bearer token (header, or ?token= in the URL)")
    serve.add_argument(
        "--metrics",
        action="store_true",
        help="also serve /metrics (Prometheus text; needs syncws[metrics]) and /status (a live status page, "
        "?format=json for `syncws stats`), behind --token when given",
    )
    serve.add_argument("--no-compression", action="store_true", help="refuse permessage-deflate offers (by default they are accepted)")
    serve.add_argument(
        "--subprotocol",
        metavar="NAME",
        action="append",
        default=[],
        help="accept this subprotocol (Sec-WebSocket-Protocol) on every endpoint; repeat for more, in order of preference "
        "(a client that offers none of them still connects, without one)",
    )
    serve.add_argument(
        "--cluster",
        metavar="URL",
        help="make this server a node of a cluster on this Redis (redis://host:port/db; needs syncws[redis]): "
        "/broadcast reaches every node's /broadcast clients, /call reaches a peer on any node",
    )
    serve.add_argument("--cluster-name", default="syncws", help="the cluster's name (default syncws)")
    serve.add_argument("--cluster-ttl", type=float, default=3.0, help="seconds after which a silent node counts as gone (default 3)")
    serve.add_argument(
        "--drain",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, stop accepting and let the calls in flight finish for up to this long before closing (default 10; 0: at once)",
    )
    serve.add_argument(
        "--rtcloud-passwd",
        metavar="FILE",
        help="serve rt-cloud's peers unchanged: /login with this passwd file (name,bcrypt-hash lines, as rt-cloud's addLogin writes), "
        "and /wsData and /wsSubject in rt-cloud's format behind the login cookie (needs syncws[rtcloud] and --cookie-secret-file)",
    )
    serve.add_argument(
        "--cookie-secret-file",
        metavar="FILE",
        help="with --rtcloud-passwd: the file holding the secret that login cookies are signed with (the rt-cloud web server's, to share its cookies)",
    )


def _error(message: str) -> None:
    """One line on stderr: what is wrong."""
    print(f"syncws serve: {message}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    """An exception as a short phrase: an OSError's strerror without its errno, else its text."""
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _tls_context(args: argparse.Namespace) -> Optional[ssl.SSLContext]:
    """The server's TLS context from --certfile and --keyfile; raises ValueError saying what is wrong."""
    if not args.certfile:
        if args.keyfile:
            raise ValueError("--keyfile needs --certfile")
        return None
    files = args.certfile + (f" and {args.keyfile}" if args.keyfile else "")
    try:
        return server_context(args.certfile, args.keyfile)
    except ssl.SSLError as exc:  # the files were read: their contents are wrong
        raise ValueError(f"cannot load the TLS certificate from {files}: not a PEM certificate chain with its private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot load the TLS certificate from {files}: {_reason(exc)}") from None


def _check_arguments(args: argparse.Namespace) -> None:
    """ValueError saying what is wrong with serve's arguments, before anything starts."""
    if not 0 <= args.port <= 65535:
        raise ValueError(f"port {args.port} is out of range (0 to 65535)")
    if not args.drain >= 0:  # NaN too
        raise ValueError(f"--drain {args.drain} is not a number of seconds (0 or more)")
    if args.unix_socket and args.cluster:
        raise ValueError("--unix-socket and --cluster do not go together: the other nodes reach this one over TCP")


def run_serve(args: argparse.Namespace) -> int:
    """``syncws serve``: serve until SIGINT or SIGTERM (main thread); the exit code."""
    try:
        _check_arguments(args)
        context = _tls_context(args)
    except ValueError as exc:
        _error(str(exc))
        return 2
    auth = bearer_token(args.token) if args.token else None
    try:
        rtcloud_secret = _rtcloud_secret(args)
    except (OSError, ValueError, ImportError) as exc:
        _error(str(exc))
        return 2
    try:
        cluster = RedisCluster(args.cluster, name=args.cluster_name, ttl=args.cluster_ttl) if args.cluster else None
    except (ImportError, ValueError) as exc:
        _error(f"--cluster: {exc}")
        return 2
    where = args.unix_socket or f"{args.host}:{args.port}"
    # From here on Ctrl-C (or SIGTERM) stops the server cleanly, whenever it comes.
    signals = StopSignals()
    try:
        try:
            server = WebSocketServer(
                args.host,
                args.port,
                registry=ConnectionRegistry(),
                max_message_size=args.max_message_size,
                ssl_context=context,
                auth=auth,
                cluster=cluster,
                unix_socket=args.unix_socket,
                compression=None if args.no_compression else "deflate",
            )
        except (OSError, OverflowError, ValueError) as exc:
            _error(f"cannot listen on {where}: {_reason(exc)}")
            return 2
        try:
            _add_routes(server, args, rtcloud_secret)
        except (ValueError, ImportError) as exc:  # a --subprotocol that is no HTTP token, --metrics without prometheus-client
            server.server_close()
            _error(str(exc))
            return 2
        raise_open_file_limit(server.max_connections + 64)
        try:
            server.start()
        except ClusterError as exc:
            server.server_close()
            _error(str(exc))
            return 2
        _serve_until_stopped(server, signals, args, cluster, rtcloud_secret)
    finally:
        signals.restore()
    return 0


def _add_routes(server: WebSocketServer, args: argparse.Namespace, rtcloud_secret: Optional[str]) -> None:
    """serve's endpoints, its commands, /syncws.js, the page at / and with --metrics /metrics and /status.

    ValueError for a bad --subprotocol, ImportError for --metrics without prometheus-client.
    """
    options: dict[str, Any] = {"subprotocols": list(args.subprotocol)} if args.subprotocol else {}
    server.add_handler("/echo", EchoHandler, name="echo", **options)
    server.add_handler("/broadcast", BroadcastHandler, name="broadcast", **options)
    server.add_handler("/relay", RelayHandler, name="relay", **options)
    if rtcloud_secret is None:
        requests = RequestHandler("wsData", server)
        requests.register("getSettings", lambda request, conn: DEMO_SETTINGS)
        server.add_handler("/wsData", DataWebSocketHandler, name="wsData", callback=requests.callback, **options)
    else:  # rt-cloud's peers log in at /login and connect to /wsData and /wsSubject
        add_login(server, passwd_file=args.rtcloud_passwd, cookie_secret=rtcloud_secret)
        requests = add_endpoints(server, cookie_secret=rtcloud_secret)["wsData"]
    server.add_handler("/call", CallGatewayHandler, name="call", request_handler=requests, **options)
    if args.metrics:
        # Plain HTTP routes do not fall back on the server's auth as endpoints do: give them --token's check.
        server.add_metrics("/metrics", auth=server.auth)
        server.add_status_page("/status", auth=server.auth)
    server.add_static("/syncws.js", javascript_client(), "text/javascript; charset=utf-8")
    server.add_static("/", index_page(metrics=args.metrics), "text/html; charset=utf-8")


def _serve_until_stopped(
    server: WebSocketServer, signals: StopSignals, args: argparse.Namespace, cluster: Optional[RedisCluster], rtcloud_secret: Optional[str]
) -> None:
    """Print the banner, wait for SIGINT or SIGTERM, and stop: at once, or draining on SIGTERM (main thread)."""
    signum: Optional[int] = None
    try:
        paths = ", ".join(f"{server.url}{p}" for p in SERVE_ENDPOINTS)
        node = f", node {cluster.node_id} of cluster {cluster.name!r}" if cluster is not None else ""
        http = server.url.replace("ws", "http", 1)
        if rtcloud_secret is not None:
            paths += f", {server.url}/wsSubject and {http}/login (rt-cloud's peers)"
        on = f" on the Unix socket {server.unix_socket}" if server.unix_socket is not None else ""
        plain = f"{http}/syncws.js"
        if args.metrics:
            plain += ", " + " and ".join(f"{http}{p}" for p, _ in METRICS_PATHS)
        print(f"syncws serving {paths} and {plain}{on}{node}; {http}/ lists them (Ctrl-C stops)", flush=True)
        if not args.token and not args.unix_socket and not is_loopback(args.host):
            print(
                f"syncws serve: warning: /call lets anyone who can reach {args.host}:{server.port} call the peers "
                "of /wsData; give --token to require a bearer token",
                file=sys.stderr,
                flush=True,
            )
        signum = signals.wait()
        logger.info("stopping on %s", signal.Signals(signum).name if signum is not None else "request")
    finally:
        if signum == signal.SIGTERM and args.drain > 0:
            drain_then_stop(server, signals, args.drain, "syncws-serve-signals")
        signals.restore()  # a second Ctrl-C while stopping interrupts (exit 130)
        server.stop()  # closes every connection and fails the /call requests in flight at once


def index_page(metrics: bool = False) -> bytes:
    """The page ``syncws serve`` answers a browser's GET / with: its paths (``metrics``: /metrics and /status too), its commands, the demo peer's."""
    paths = SERVE_PATHS[:-1] + (METRICS_PATHS if metrics else ()) + SERVE_PATHS[-1:]
    rows = "".join(f"<tr><td><code>{html.escape(p)}</code></td><td>{html.escape(what)}</td></tr>\n" for p, what in paths)
    commands = "".join(f"<li><code>{html.escape(c)}</code>: {html.escape(what)}</li>\n" for c, what in SERVE_COMMANDS)
    peer = "".join(f"<li><code>{html.escape(c)}</code></li>\n" for c in DEMO_PEER_COMMANDS)
    text = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>syncws serve</title></head>
<body>
<h1>syncws serve</h1>
<p>A websocket server: connect to its endpoints with <code>ws://</code> (or <code>wss://</code>)
and this page's host, e.g. <code>new WebSocket("ws://" + location.host + "/echo")</code>;
a plain HTTP GET of an endpoint gets 426 (Upgrade Required).</p>
<table>
<tr><th>path</th><th>what it does</th></tr>
{rows}</table>
<h2>Commands a peer may call</h2>
<p>A peer on <code>/wsData</code> (<code>service.request</code>, or <code>peer.request</code> in a page with
<code>/syncws.js</code>) may ask:</p>
<ul>
{commands}</ul>
<h2>From a terminal</h2>
<p><code>syncws peer ws://HOST/wsData</code> runs the demo peer, which answers:</p>
<ul>
{peer}</ul>
<p>and <code>syncws call ws://HOST echo 'data={{"a": 1}}'</code> makes a request of it through
<code>/call</code>; <code>syncws call ws://HOST/echo --message hello</code> sends one message.</p>
</body>
</html>
"""
    return text.encode("utf-8")


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address to listen on) reaches this machine only: 127.0.0.0/8, ::1, localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _rtcloud_secret(args: argparse.Namespace) -> Optional[str]:
    """The cookie secret of rt-cloud mode (--rtcloud-passwd with --cookie-secret-file), None without it.

    Raises ValueError, OSError or ImportError saying what is wrong: one flag
    without the other, an unreadable or malformed file, an empty secret,
    bcrypt missing, or a cluster (rt-cloud's peers are reached on this node only).
    """
    if args.rtcloud_passwd is None and args.cookie_secret_file is None:
        return None
    if args.rtcloud_passwd is None or args.cookie_secret_file is None:
        raise ValueError("--rtcloud-passwd and --cookie-secret-file go together")
    if args.cluster:
        raise ValueError("--rtcloud-passwd serves rt-cloud's peers on this server only, not with --cluster")
    try:
        import bcrypt  # noqa: F401  # checked now, not at the first login
    except ImportError:
        raise ImportError("--rtcloud-passwd needs bcrypt: pip install 'syncws[rtcloud]'") from None
    users = load_passwd_file(args.rtcloud_passwd)
    if not users:
        raise ValueError(f"{args.rtcloud_passwd}: no 'name,bcrypt-hash' line, so nobody could log in")
    secret = Path(args.cookie_secret_file).read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"{args.cookie_secret_file} is empty: the cookie secret must not be")
    return secret


def raise_open_file_limit(wanted: int) -> None:
    """Raise this process's soft open-file limit toward ``wanted`` (at most the hard limit).

    ``serve`` is the program, so it may: each connection is an open file,
    and many systems start processes at 1,024. The server's own warning
    (``WebSocketServer.start``) says so if the hard limit is still too low.
    """
    try:
        import resource
    except ImportError:  # no such limit here (Windows)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # left as it is: start() warns

"""The command line: ``syncws`` and ``python -m syncws``.

Subcommands:

* ``serve``: a server with ``/echo``, ``/broadcast`` and ``/relay`` endpoints,
  a ``/wsData`` endpoint for RemoteService peers and a ``/call`` gateway that
  makes requests of them; it also serves the JavaScript client at
  ``/syncws.js``. Runs until SIGINT (Ctrl-C), which stops at once, or
  SIGTERM, which first lets the calls in flight finish (``--drain``).
* ``call``: one request to a peer of a running ``serve`` (through ``/call``),
  or one message to an endpoint.
* ``demo``: the main job; a server, a RemoteService in a second process and
  worker threads making requests; prints what happened.
* ``peer``: the demo's RemoteService, which ``demo`` starts and which gives
  ``call`` a peer to ask; runs until SIGINT or SIGTERM.
* ``bench``: the benchmark, the ``benchmarks`` package of a source checkout.
* ``autobahn-client``: the echo client for the Autobahn|Testsuite's fuzzingserver.

Exit codes: 0 success (also for serve and peer stopped by SIGINT or SIGTERM),
1 the operation failed (an error reply, a refused connection), 2 bad
arguments or a server that cannot start, 130 interrupted.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from ..cluster.cluster import ClusterError, RedisCluster
from ..exceptions import SyncWSError
from ..handlers.handlers import DataWebSocketHandler
from ..handlers.registry import ConnectionRegistry
from ..protocol.auth import bearer_token
from ..rtcloud import add_endpoints, add_login, load_passwd_file
from ..server.endpoints import BroadcastHandler, CallGatewayHandler, EchoHandler, RelayHandler
from ..server.request_handler import RequestHandler
from ..server.server import WebSocketServer
from ..static import javascript_client
from .call import run_call
from .demo import DEMO_PEER_COMMANDS
from .signals import StopSignals

__all__ = ["main", "build_parser", "SERVE_ENDPOINTS"]

logger = logging.getLogger(__name__)

#: The websocket endpoints of ``syncws serve`` (it also serves ``/syncws.js`` over plain HTTP).
SERVE_ENDPOINTS = ("/echo", "/broadcast", "/relay", "/wsData", "/call")


def _described(sub: Any, name: str) -> argparse.ArgumentParser:
    """The subcommand ``name``, whose --help shows its description and epilog (_HELP) as written."""
    summary, description, epilog = _HELP[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter, description=description, epilog=epilog
    )
    return parser


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that connects to a server: its token and the CA to trust."""
    parser.add_argument("--token", help="bearer token to send (for serve --token)")
    parser.add_argument("--cafile", help="CA certificate (PEM) to trust for wss:// (for serve --certfile)")


def _error(command: str, message: str) -> None:
    """One line on stderr: what is wrong."""
    print(f"syncws {command}: {message}", file=sys.stderr, flush=True)


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
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    files = args.certfile + (f" and {args.keyfile}" if args.keyfile else "")
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except ssl.SSLError as exc:  # the files were read: their contents are wrong
        raise ValueError(f"cannot load the TLS certificate from {files}: not a PEM certificate chain with its private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot load the TLS certificate from {files}: {_reason(exc)}") from None
    return context


def _cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        _error("serve", f"port {args.port} is out of range (0 to 65535)")
        return 2
    if not args.drain >= 0:  # NaN too
        _error("serve", f"--drain {args.drain} is not a number of seconds (0 or more)")
        return 2
    try:
        context = _tls_context(args)
    except ValueError as exc:
        _error("serve", str(exc))
        return 2
    auth = bearer_token(args.token) if args.token else None
    try:
        rtcloud_secret = _rtcloud_secret(args)
    except (OSError, ValueError, ImportError) as exc:
        _error("serve", str(exc))
        return 2
    try:
        cluster = RedisCluster(args.cluster, name=args.cluster_name, ttl=args.cluster_ttl) if args.cluster else None
    except (ImportError, ValueError) as exc:
        _error("serve", f"--cluster: {exc}")
        return 2
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
            )
        except (OSError, OverflowError, ValueError) as exc:
            _error("serve", f"cannot listen on {args.host}:{args.port}: {_reason(exc)}")
            return 2
        server.add_handler("/echo", EchoHandler, name="echo")
        server.add_handler("/broadcast", BroadcastHandler, name="broadcast")
        server.add_handler("/relay", RelayHandler, name="relay")
        if rtcloud_secret is None:
            requests = RequestHandler("wsData", server)
            server.add_handler("/wsData", DataWebSocketHandler, name="wsData", callback=requests.callback)
        else:  # rt-cloud's peers log in at /login and connect to /wsData and /wsSubject
            add_login(server, passwd_file=args.rtcloud_passwd, cookie_secret=rtcloud_secret)
            requests = add_endpoints(server, cookie_secret=rtcloud_secret)["wsData"]
        server.add_handler("/call", CallGatewayHandler, name="call", request_handler=requests)
        server.add_static("/syncws.js", javascript_client(), "text/javascript; charset=utf-8")
        try:
            server.start()
        except ClusterError as exc:
            server.server_close()
            _error("serve", str(exc))
            return 2
        signum: Optional[int] = None
        try:
            paths = ", ".join(f"{server.url}{p}" for p in SERVE_ENDPOINTS)
            node = f", node {cluster.node_id} of cluster {cluster.name!r}" if cluster is not None else ""
            http = server.url.replace("ws", "http", 1)
            if rtcloud_secret is not None:
                paths += f", {server.url}/wsSubject and {http}/login (rt-cloud's peers)"
            print(f"syncws serving {paths} and {http}/syncws.js{node} (Ctrl-C stops)", flush=True)
            if not args.token and not is_loopback(args.host):
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
                _drain(server, signals, args.drain)
            signals.restore()  # a second Ctrl-C while stopping interrupts (exit 130)
            server.stop()  # closes every connection and fails the /call requests in flight at once
    finally:
        signals.restore()
    return 0


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


def _drain(server: WebSocketServer, signals: StopSignals, seconds: float) -> None:
    """Stop ``server`` gracefully, letting the calls in flight finish for up to ``seconds`` (main thread).

    The signals stay caught meanwhile: a second SIGINT or SIGTERM wakes a
    watcher thread, whose plain stop() cuts the drain short.
    """

    def cut_short() -> None:
        signals.wait()  # the next signal, or the wake-up once the drain is over
        server.stop()  # cuts a drain in progress short; does nothing once stopped

    watcher = threading.Thread(target=cut_short, name="syncws-serve-signals", daemon=True)
    watcher.start()
    logger.info("draining for up to %s s (a second signal stops at once)", seconds)
    try:
        server.stop(drain=seconds)
    finally:
        signals.wake()
        watcher.join(5)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(requests=args.requests, threads=args.threads)


def _cmd_peer(args: argparse.Namespace) -> int:
    from .demo import demo_peer_service

    sslopt = {"ca_certs": args.cafile} if args.cafile else None
    # From here on Ctrl-C (or SIGTERM) stops the peer cleanly, whenever it comes.
    signals = StopSignals()
    try:
        try:
            service = demo_peer_service(args.url, token=args.token, sslopt=sslopt)
        except ValueError as exc:
            _error("peer", str(exc))
            return 2
        failure: list[BaseException] = []

        def start() -> None:
            try:
                service.start(timeout=args.connect_timeout)
            except SyncWSError as exc:
                failure.append(exc)
            signals.wake()

        threading.Thread(target=start, name="syncws-peer-start", daemon=True).start()
        try:
            if signals.wait() is None:  # woken by start(), not by a signal
                if failure:
                    _error("peer", _reason(failure[0]))
                    return 1
                print(f"syncws peer connected to {args.url}, answering {', '.join(DEMO_PEER_COMMANDS)} (Ctrl-C stops)", flush=True)
                signals.wait()
        finally:
            signals.restore()
            service.stop()
    finally:
        signals.restore()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib
    import importlib.util

    # The benchmark is the benchmarks/ package next to syncws/ in a source
    # checkout; it is not installed. Load it from there, whatever the working
    # directory, without touching sys.path (its child processes run from the
    # checkout as ``python -m benchmarks.peers``).
    package = Path(__file__).resolve().parents[2] / "benchmarks"
    if not (package / "__init__.py").is_file():
        print("syncws bench: the benchmark, the benchmarks/ package, is part of a source checkout; run it from one", file=sys.stderr)
        return 2
    if "benchmarks" not in sys.modules:
        spec = importlib.util.spec_from_file_location("benchmarks", package / "__init__.py", submodule_search_locations=[str(package)])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks"] = module
        spec.loader.exec_module(module)
    run = importlib.import_module("benchmarks.run")
    return int(run.main(args.bench_args))


def _cmd_autobahn_client(args: argparse.Namespace) -> int:
    from .autobahn import run_autobahn_client

    return run_autobahn_client(args.url, args.agent)


CALL_EPILOG = """\
A request needs a peer connected to the server's /wsData endpoint, for example
the demo peer in another terminal:

  syncws serve --port 8888
  syncws peer ws://127.0.0.1:8888/wsData
  syncws call ws://127.0.0.1:8888 echo 'data={"a": 1}'
  syncws call ws://127.0.0.1:8888 getBytes size=1000000 seed=1 --output out.bin
  syncws call ws://127.0.0.1:8888/echo --message hello

`syncws peer --help` lists the demo peer's commands; any RemoteService
connected to /wsData will do.
"""

SERVE_EPILOG = """\
endpoints:
  /echo       sends every message back
  /broadcast  sends every message to every connection of /broadcast
  /relay      sends every message to every other connection of /relay
  /wsData     for RemoteService peers (e.g. `syncws peer URL/wsData`)
  /call       the gateway `syncws call` uses to make requests of those peers
  /syncws.js  the JavaScript client for browser pages (plain HTTP GET)
"""

PEER_EPILOG = (
    """\
commands of the demo peer:
"""
    + "".join(f"  {c}\n" for c in DEMO_PEER_COMMANDS)
    + """
example, with `syncws serve --port 8888` running:

  syncws peer ws://127.0.0.1:8888/wsData
  syncws call ws://127.0.0.1:8888 sleep seconds=1
"""
)


#: Each described subcommand's one-line help, description and epilog.
_HELP = {
    "serve": (
        "run a server with echo, broadcast, relay, request and gateway endpoints",
        "Run a server until Ctrl-C (SIGINT), which stops it at once, or SIGTERM, which first stops\n"
        "accepting and lets the calls in flight finish for up to --drain seconds (a second signal\n"
        "stops at once).",
        SERVE_EPILOG,
    ),
    "call": (
        "make one request of a served peer, or send one message to an endpoint",
        "Make one request of a peer connected to a `syncws serve`, through its /call gateway;\n"
        "or, with --message, send one message to any endpoint and print the first message back.",
        CALL_EPILOG,
    ),
    "peer": (
        "the demo's RemoteService peer: connect it to serve's /wsData to answer `call` (demo starts its own)",
        "Run the demo's RemoteService peer, connected to a server's /wsData endpoint, until\n"
        "Ctrl-C (SIGINT) or SIGTERM; it reconnects when the connection drops.",
        PEER_EPILOG,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``syncws`` command."""
    parser = argparse.ArgumentParser(prog="syncws", description="Synchronous, thread-based websockets.")
    parser.add_argument("--log-level", default="WARNING", help="logging level: DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = _described(sub, "serve")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8888, help="port (default 8888; 0 picks a free one)")
    serve.add_argument("--max-message-size", type=int, default=64 * 1024 * 1024, help="bytes (default 64 MiB)")
    serve.add_argument("--certfile", help="TLS certificate chain (PEM): serve wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    serve.add_argument("--token", help="require this bearer token (header, or ?token= in the URL)")
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
    serve.set_defaults(func=_cmd_serve)

    call = _described(sub, "call")
    call.add_argument("url", help="the server (ws://host:port) for a request, or an endpoint URL for --message")
    call.add_argument("cmd", nargs="?", help="the request's cmd")
    call.add_argument("fields", nargs="*", metavar="key=value", help="request fields; values are JSON if they parse, else strings")
    call.add_argument("--message", help="send this text to the endpoint and print the first message back")
    call.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    call.add_argument("--output", help="write a bytes result to this file")
    call.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    _add_client_options(call)
    call.set_defaults(func=run_call)

    demo = sub.add_parser("demo", help="the main job: a server, a peer process and worker threads making requests")
    demo.add_argument("--requests", type=int, default=400, help="number of requests (default 400)")
    demo.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    demo.set_defaults(func=_cmd_demo)

    peer = _described(sub, "peer")
    peer.add_argument("url", help="endpoint URL, e.g. ws://127.0.0.1:8888/wsData")
    _add_client_options(peer)
    peer.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the first connection (default 30); then exit 1")
    peer.set_defaults(func=_cmd_peer)

    # Everything after "bench" belongs to the benchmark, python -m benchmarks (see main()).
    bench = sub.add_parser("bench", help="the benchmark (python -m benchmarks; --help after 'bench' for its options)", add_help=False)
    bench.set_defaults(func=_cmd_bench, bench_args=[])

    ab = sub.add_parser("autobahn-client", help="echo client for the Autobahn|Testsuite fuzzingserver")
    ab.add_argument("--url", required=True, help="the fuzzingserver's URL, e.g. ws://127.0.0.1:9002")
    ab.add_argument("--agent", default="syncws", help="agent name in the reports")
    ab.set_defaults(func=_cmd_autobahn_client)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the ``syncws`` command; return its exit code."""
    parser = build_parser()
    # What follows "bench" belongs to the benchmark: argparse leaves it over.
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Configuring logging is the application's job, and here syncws is the application.
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

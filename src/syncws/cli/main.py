"""The command line: ``syncws`` and ``python -m syncws``.

Subcommands:

* ``serve``: a server with ``/echo``, ``/broadcast`` and ``/relay`` endpoints,
  a ``/wsData`` endpoint for RemoteService peers and a ``/call`` gateway that
  makes requests of them; it also serves the JavaScript client at
  ``/syncws.js`` and a page listing all this at ``/``. Runs until SIGINT
  (Ctrl-C), which stops at once, or SIGTERM, which first lets the calls in
  flight finish (``--drain``) (:mod:`syncws.cli.serve`); with ``--metrics``, also
  ``/metrics`` (Prometheus) and the status page ``/status``.
* ``stats``: a server's stats, from its status page, as a table; ``--watch``
  reprints it until Ctrl-C (:mod:`syncws.cli.stats`).
* ``call``: one request to a peer of a running ``serve`` (through ``/call``),
  or one message to an endpoint (:mod:`syncws.cli.call`).
* ``demo``: the main job; a server, a RemoteService in a second process and
  worker threads making requests; prints what happened.
* ``peer``: the demo's RemoteService, which ``demo`` starts and which gives
  ``call`` a peer to ask; runs until SIGINT or SIGTERM, either of which
  first lets the calls in flight finish (``--drain``) (:mod:`syncws.cli.peer`).
* ``bench``: the benchmark, the ``benchmarks`` package of a source checkout.
* ``autobahn-client``: the echo client for the Autobahn|Testsuite's fuzzingserver.

Exit codes: :data:`EXIT_CODES`, which ``syncws --help`` and the README list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Optional

from .call import run_call
from .demo import DEMO_PEER_COMMANDS
from .peer import add_peer_arguments, run_peer
from .serve import METRICS_PATHS, SERVE_COMMANDS, SERVE_ENDPOINTS, SERVE_PATHS, add_serve_arguments, is_loopback, run_serve
from .stats import add_stats_arguments, run_stats

__all__ = ["main", "build_parser", "SERVE_ENDPOINTS", "EXIT_CODES", "is_loopback"]

logger = logging.getLogger(__name__)

#: The exit codes of every subcommand, and what each means (``syncws --help`` and the README list them).
EXIT_CODES = (
    (0, "success; serve and peer exit 0 when stopped by Ctrl-C or SIGTERM, their normal end"),
    (1, "the operation failed (an error reply, a refused connection)"),
    (2, "bad arguments (a URL that is not ws:// or wss:// included), or a server that cannot start"),
    (
        130,
        "interrupted by Ctrl-C: call, demo or bench before they finished, and stats --watch, which runs until then "
        "(serve and peer: a Ctrl-C while they close their connections)",
    ),
)


def _described(sub: Any, name: str) -> argparse.ArgumentParser:
    """The subcommand ``name``, whose --help shows its description and epilog (_HELP) as written."""
    summary, description, epilog = _HELP[name]
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter, description=description, epilog=epilog
    )
    return parser


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options of a command that connects to a server: its token, the CA to trust, a Unix socket."""
    parser.add_argument("--token", help="bearer token to send (for serve --token)")
    parser.add_argument("--cafile", help="CA certificate (PEM) to trust for wss:// (for serve --certfile)")
    parser.add_argument("--unix-socket", metavar="PATH", help="connect on this Unix domain socket (for serve --unix-socket); the URL gives the host and path")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(requests=args.requests, threads=args.threads)


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib
    import importlib.util

    # The benchmark is the benchmarks/ package next to src/ in a source
    # checkout; it is not installed. Load it from there, whatever the working
    # directory, without touching sys.path (its child processes run from the
    # checkout as ``python -m benchmarks.peers``).
    package = Path(__file__).resolve().parents[3] / "benchmarks"
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

SERVE_EPILOG = (
    "endpoints:\n"
    + "".join(f"  {path:<11} {what}\n" for path, what in SERVE_PATHS)
    + "\nwith --metrics, also (behind --token when given):\n"
    + "".join(f"  {path:<11} {what}\n" for path, what in METRICS_PATHS)
    + "\ncommands its /wsData peers may call (service.request, or peer.request in a page):\n"
    + "".join(f"  {cmd:<11} {what}\n" for cmd, what in SERVE_COMMANDS)
    + """
Ctrl-C and SIGTERM end serve with exit code 0 (`syncws --help` lists every exit code).
"""
)

PEER_EPILOG = (
    """\
commands of the demo peer:
"""
    + "".join(f"  {c}\n" for c in DEMO_PEER_COMMANDS)
    + """
example, with `syncws serve --port 8888` running:

  syncws peer ws://127.0.0.1:8888/wsData
  syncws call ws://127.0.0.1:8888 sleep seconds=1
  syncws call ws://127.0.0.1:8888 askServer

Ctrl-C and SIGTERM end peer with exit code 0 once the calls in flight are
done (`syncws --help` lists every exit code).
"""
)

STATS_EPILOG = """\
The server must serve a status page: `syncws serve --metrics` does, at /status
(a server of yours: server.add_status_page()). The table shows, for each
endpoint, the connections open, opened and closed and the messages and bytes
in and out; for each RequestHandler, its requests by outcome (ok, err, tmout:
timed out, disc: peer disconnected, canc: cancelled), those pending, and the
p50 and p99 of the last minute's durations in milliseconds; then the refused
handshakes, the send queues and the worker threads.

  syncws serve --port 8888 --metrics
  syncws stats ws://127.0.0.1:8888
  syncws stats http://127.0.0.1:8888/status --watch --interval 5

A server that cannot be reached, refuses (a missing or wrong --token) or
answers no stats: one line on stderr, exit code 1. --watch ends with Ctrl-C
(exit code 130).
"""

EPILOG = "exit codes:\n" + "".join(f"  {code:<4} {what}\n" for code, what in EXIT_CODES)


#: Each described subcommand's one-line help, description and epilog.
_HELP = {
    "serve": (
        "run a server with echo, broadcast, relay, request and gateway endpoints",
        "Run a server until Ctrl-C (SIGINT), which stops it at once, or SIGTERM, which first stops\n"
        "accepting and lets the calls in flight finish for up to --drain seconds (a second signal\n"
        "stops at once). A browser's GET / shows a page listing its endpoints.",
        SERVE_EPILOG,
    ),
    "call": (
        "make one request of a served peer, or send one message to an endpoint",
        "Make one request of a peer connected to a `syncws serve`, through its /call gateway;\n"
        "or, with --message, send one message to any endpoint and print the first message back.",
        CALL_EPILOG,
    ),
    "stats": (
        "print a server's stats (its status page's JSON) as a table; --watch to follow them",
        "Print the stats of a running server, read from its status page (GET <path>?format=json),\n"
        "as a table that fits 80 columns; with --watch, print them again every second (or\n"
        "--interval) until Ctrl-C, with messages and requests per second since the print before.",
        STATS_EPILOG,
    ),
    "peer": (
        "the demo's RemoteService peer: connect it to serve's /wsData to answer `call` (demo starts its own)",
        "Run the demo's RemoteService peer, connected to a server's /wsData endpoint, until\n"
        "Ctrl-C (SIGINT) or SIGTERM, either of which first answers new requests 503 and lets the\n"
        "calls in flight finish for up to --drain seconds (a second signal stops at once); it\n"
        "reconnects when the connection drops.",
        PEER_EPILOG,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``syncws`` command."""
    parser = argparse.ArgumentParser(
        prog="syncws", description="Synchronous, thread-based websockets.", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level: DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = _described(sub, "serve")
    add_serve_arguments(serve)
    serve.set_defaults(func=run_serve)

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

    stats = _described(sub, "stats")
    add_stats_arguments(stats)
    _add_client_options(stats)
    stats.set_defaults(func=run_stats)

    demo = sub.add_parser("demo", help="the main job: a server, a peer process and worker threads making requests")
    demo.add_argument("--requests", type=int, default=400, help="number of requests (default 400)")
    demo.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    demo.set_defaults(func=_cmd_demo)

    peer = _described(sub, "peer")
    add_peer_arguments(peer)
    _add_client_options(peer)
    peer.set_defaults(func=run_peer)

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

"""The command line: ``syncws`` and ``python -m syncws``.

Subcommands:

* ``serve``: a server with ``/echo``, ``/broadcast`` and ``/relay`` endpoints,
  a ``/wsData`` endpoint for RemoteService peers and a ``/call`` gateway that
  makes requests of them; it also serves the JavaScript client at ``/syncws.js``.
* ``call``: one request to a peer of a running ``serve``, or one message to an endpoint.
* ``demo``: the main job; a server, a RemoteService in a second process and
  worker threads making requests; prints what happened.
* ``peer``: the demo's RemoteService (``demo`` starts it).
* ``bench``: the benchmark, ``scripts/bench.py`` of a source checkout.
* ``autobahn-client``: the echo client for the Autobahn|Testsuite's fuzzingserver.

Exit codes: 0 success, 1 the operation failed (an error reply, a refused
connection), 2 bad arguments, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import ssl
import sys
from pathlib import Path
from typing import Any, Optional

from .auth import bearer_token
from .client import ClientConnection, connect
from .endpoints import BroadcastHandler, CallGatewayHandler, EchoHandler, RelayHandler
from .exceptions import SyncWSError
from .handlers import DataWebSocketHandler
from .progress import ProgressBar
from .registry import ConnectionRegistry
from .requests import RequestHandler
from .server import WebSocketServer
from .static import javascript_client

__all__ = ["main", "build_parser"]

logger = logging.getLogger(__name__)


def _cmd_serve(args: argparse.Namespace) -> int:
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    auth = bearer_token(args.token) if args.token else None
    server = WebSocketServer(args.host, args.port, registry=ConnectionRegistry(), max_message_size=args.max_message_size, ssl_context=context, auth=auth)
    server.add_handler("/echo", EchoHandler, name="echo")
    server.add_handler("/broadcast", BroadcastHandler, name="broadcast")
    server.add_handler("/relay", RelayHandler, name="relay")
    requests = RequestHandler("wsData", server)
    server.add_handler("/wsData", DataWebSocketHandler, name="wsData", callback=requests.callback)
    server.add_handler("/call", CallGatewayHandler, name="call", request_handler=requests)
    server.add_static("/syncws.js", javascript_client(), "text/javascript; charset=utf-8")
    paths = ", ".join(f"{server.url}{p}" for p in ("/echo", "/broadcast", "/relay", "/wsData", "/call"))
    print(f"syncws serving {paths} and {server.url.replace('ws', 'http', 1)}/syncws.js (Ctrl-C stops)", flush=True)
    server.serve_forever()
    return 0


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"timeout": args.timeout, "max_message_size": None}
    if args.token:
        options["header"] = [f"Authorization: Bearer {args.token}"]
    if args.cafile:
        options["sslopt"] = {"ca_certs": args.cafile}
    return options


def _parse_fields(fields: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON is taken as JSON, else as a string."""
    result: dict[str, Any] = {}
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {field!r}")
        try:
            result[key] = json.loads(value)
        except ValueError:
            result[key] = value
    return result


def _cmd_call(args: argparse.Namespace) -> int:
    try:
        if args.message is not None:
            return _call_message(args)
        if not args.cmd:
            print("syncws call: give a CMD for a request, or --message for a plain message", file=sys.stderr)
            return 2
        return _call_request(args)
    except ValueError as exc:
        print(f"syncws call: {exc}", file=sys.stderr)
        return 2
    except (SyncWSError, TimeoutError, OSError) as exc:
        print(f"syncws call: {exc}", file=sys.stderr)
        return 1


def _call_message(args: argparse.Namespace) -> int:
    conn = connect(args.url, **_client_options(args))
    try:
        conn.send(args.message)
        reply = conn.recv(timeout=args.timeout)
    finally:
        conn.close()
    if reply is None:
        print("syncws call: the connection closed without a reply", file=sys.stderr)
        return 1
    print(reply if isinstance(reply, str) else f"<{len(reply)} bytes>")
    return 0


def _call_request(args: argparse.Namespace) -> int:
    request = {**_parse_fields(args.fields), "cmd": args.cmd, "timeout": args.timeout}
    url = args.url if args.url.rstrip("/").endswith("/call") else args.url.rstrip("/") + "/call"
    conn = connect(url, **_client_options(args))
    bar = ProgressBar(sys.stderr) if (args.progress or sys.stderr.isatty()) else None
    try:
        conn.send(json.dumps(request))
        reply = _read_reply(conn, args.timeout, bar)
    finally:
        if bar is not None:
            bar.finish()
        conn.close()
    data = reply.pop("data", None)
    if isinstance(data, bytes):
        if args.output:
            Path(args.output).write_bytes(data)
            reply["data"] = f"<{len(data)} bytes written to {args.output}>"
        else:
            reply["data"] = f"<{len(data)} bytes; use --output FILE to keep them>"
    elif data is not None:
        reply["data"] = data
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("status") == 200 else 1


def _read_reply(conn: ClientConnection, timeout: float, bar: Optional[ProgressBar]) -> dict[str, Any]:
    """Read the gateway's answer: progress messages, then the reply (and its bytes)."""
    for _ in range(10_000_000):  # bounded: one pass per progress message at most
        message = conn.recv(timeout=timeout + 5)
        if message is None:
            raise SyncWSError("the connection closed before the reply")
        reply = json.loads(message)
        if "progress" in reply:
            if bar is not None:
                bar.update(*reply["progress"])
            continue
        if reply.get("dataType") in ("bytes", "ndarray"):
            data = conn.recv(timeout=timeout + 5)
            if not isinstance(data, bytes) or len(data) != reply.get("size"):
                raise SyncWSError("the reply's bytes did not arrive whole")
            reply["data"] = data
        return dict(reply)
    raise SyncWSError("too many progress messages")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(requests=args.requests, threads=args.threads)


def _cmd_peer(args: argparse.Namespace) -> int:
    from .demo import run_demo_peer

    return run_demo_peer(args.url)


def _cmd_bench(args: argparse.Namespace) -> int:
    import runpy

    script = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    if not script.exists():
        print("syncws bench: scripts/bench.py is part of a source checkout; run it from one", file=sys.stderr)
        return 2
    namespace = runpy.run_path(str(script), run_name="syncws_bench")
    return int(namespace["main"](args.bench_args))


def _cmd_autobahn_client(args: argparse.Namespace) -> int:
    from .autobahn import run_autobahn_client

    return run_autobahn_client(args.url, args.agent)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``syncws`` command."""
    parser = argparse.ArgumentParser(prog="syncws", description="Synchronous, thread-based websockets.")
    parser.add_argument("--log-level", default="WARNING", help="logging level: DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run a server with echo, broadcast, relay, request and gateway endpoints")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    serve.add_argument("--port", type=int, default=8888, help="port (default 8888; 0 picks a free one)")
    serve.add_argument("--max-message-size", type=int, default=64 * 1024 * 1024, help="bytes (default 64 MiB)")
    serve.add_argument("--certfile", help="TLS certificate chain (PEM): serve wss://")
    serve.add_argument("--keyfile", help="TLS private key (PEM), if not in --certfile")
    serve.add_argument("--token", help="require this bearer token (header, or ?token= in the URL)")
    serve.set_defaults(func=_cmd_serve)

    call = sub.add_parser("call", help="make one request of a served peer, or send one message to an endpoint")
    call.add_argument("url", help="the server (ws://host:port) for a request, or an endpoint URL for --message")
    call.add_argument("cmd", nargs="?", help="the request's cmd")
    call.add_argument("fields", nargs="*", metavar="key=value", help="request fields; values are JSON if they parse, else strings")
    call.add_argument("--message", help="send this text to the endpoint and print the first message back")
    call.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    call.add_argument("--output", help="write a bytes result to this file")
    call.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a terminal")
    call.add_argument("--token", help="bearer token to send")
    call.add_argument("--cafile", help="CA certificate (PEM) to trust for wss://")
    call.set_defaults(func=_cmd_call)

    demo = sub.add_parser("demo", help="the main job: a server, a peer process and worker threads making requests")
    demo.add_argument("--requests", type=int, default=400, help="number of requests (default 400)")
    demo.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    demo.set_defaults(func=_cmd_demo)

    peer = sub.add_parser("peer", help="the demo's RemoteService peer (started by demo)")
    peer.add_argument("url", help="endpoint URL, e.g. ws://127.0.0.1:8888/wsData")
    peer.set_defaults(func=_cmd_peer)

    # Everything after "bench" belongs to scripts/bench.py (see main()).
    bench = sub.add_parser("bench", help="the benchmark (scripts/bench.py; --help after 'bench' for its options)", add_help=False)
    bench.set_defaults(func=_cmd_bench, bench_args=[])

    ab = sub.add_parser("autobahn-client", help="echo client for the Autobahn|Testsuite fuzzingserver")
    ab.add_argument("--url", required=True, help="the fuzzingserver's URL, e.g. ws://127.0.0.1:9002")
    ab.add_argument("--agent", default="syncws", help="agent name in the reports")
    ab.set_defaults(func=_cmd_autobahn_client)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the ``syncws`` command; return its exit code."""
    parser = build_parser()
    # What follows "bench" belongs to scripts/bench.py: argparse leaves it over.
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

"""The command line: ``syncws`` and ``python -m syncws``.

Subcommands:

* ``serve``: a server with an ``/echo`` endpoint (text as text, binary as
  binary), a ``/broadcast`` endpoint (each message goes to every connection
  on it) and a ``/wsData`` request endpoint.
* ``demo``: the main job; a server, a RemoteService in a second process and
  a pool of worker threads making requests; prints what happened.
* ``call``: one request to the peer of a running server, or one message to an endpoint.
* ``bench``: the benchmark (``scripts/bench.py``).
* ``autobahn-client``: the echo client for the Autobahn|Testsuite's fuzzingserver.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional

from .connection import Message
from .handlers import BaseWebSocketHandler, sendWebSocketMessage
from .server import WebSocketServer

__all__ = ["main", "EchoHandler", "BroadcastHandler"]

logger = logging.getLogger(__name__)


class EchoHandler(BaseWebSocketHandler):
    """Sends every message back as it came: text as text, binary as binary."""

    def on_message(self, message: Message) -> None:
        """Echo (connection thread)."""
        self.write_message(message)


class BroadcastHandler(BaseWebSocketHandler):
    """Sends every message to every connection on the same endpoint, the sender included."""

    def on_message(self, message: Message) -> None:
        """Broadcast (connection thread)."""
        sendWebSocketMessage(self.name, message, registry=self.registry)


def _cmd_serve(args: argparse.Namespace) -> int:
    server = WebSocketServer(args.host, args.port, max_message_size=args.max_message_size)
    server.add_handler("/echo", EchoHandler, name="echo")
    server.add_handler("/broadcast", BroadcastHandler, name="broadcast")
    print(f"syncws serving {server.url}/echo and {server.url}/broadcast (Ctrl-C stops)", flush=True)
    server.serve_forever()
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(requests=args.requests, threads=args.threads)


def _cmd_peer(args: argparse.Namespace) -> int:
    from .demo import run_demo_peer

    return run_demo_peer(args.url)


def _cmd_autobahn_client(args: argparse.Namespace) -> int:
    from .autobahn import run_autobahn_client

    return run_autobahn_client(args.url, args.agent)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``syncws`` command."""
    parser = argparse.ArgumentParser(prog="syncws", description="Synchronous, thread-based websockets.")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run a server with /echo and /broadcast endpoints")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8888, help="port (default 8888; 0 picks one)")
    serve.add_argument("--max-message-size", type=int, default=64 * 1024 * 1024, help="bytes (default 64 MiB)")
    serve.set_defaults(func=_cmd_serve)

    demo = sub.add_parser("demo", help="the main job: a server, a peer process and worker threads making requests")
    demo.add_argument("--requests", type=int, default=400, help="number of requests (default 400)")
    demo.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    demo.set_defaults(func=_cmd_demo)

    peer = sub.add_parser("peer", help="the demo's RemoteService peer (started by demo)")
    peer.add_argument("url", help="endpoint URL, e.g. ws://127.0.0.1:8888/wsData")
    peer.set_defaults(func=_cmd_peer)

    ab = sub.add_parser("autobahn-client", help="echo client for the Autobahn|Testsuite fuzzingserver")
    ab.add_argument("--url", required=True, help="the fuzzingserver's URL, e.g. ws://127.0.0.1:9002")
    ab.add_argument("--agent", default="syncws", help="agent name in the reports")
    ab.set_defaults(func=_cmd_autobahn_client)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the ``syncws`` command; return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Configuring logging is the application's job; this is the application.
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``syncws peer``: the demo's RemoteService, connected to a server's /wsData until Ctrl-C or SIGTERM.

:func:`run_peer` runs on the main thread, which waits for signals; the first
connection is made on a ``syncws-peer-start`` thread and the service serves
on its own threads (:class:`~syncws.RemoteService`). Ctrl-C or SIGTERM lets
the calls in flight finish (``--drain``) before the peer closes and exits 0;
a second signal stops it at once.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Optional

from ..exceptions import SyncWSError
from .demo import DEMO_PEER_COMMANDS, demo_peer_service
from .signals import StopSignals, drain_then_stop

__all__ = ["run_peer", "add_peer_arguments"]


def add_peer_arguments(peer: argparse.ArgumentParser) -> None:
    """The options of ``syncws peer`` besides the client's (--token, --cafile, --unix-socket)."""
    peer.add_argument("url", help="endpoint URL, e.g. ws://127.0.0.1:8888/wsData")
    peer.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to wait for the first connection (default 30); then exit 1")
    peer.add_argument(
        "--drain",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on Ctrl-C or SIGTERM, answer new requests 503 and let the calls in flight finish for up to this long "
        "before closing (default 10; 0: at once); a second signal stops at once",
    )


def _error(message: str) -> None:
    """One line on stderr: what is wrong."""
    print(f"syncws peer: {message}", file=sys.stderr, flush=True)


def run_peer(args: argparse.Namespace) -> int:
    """``syncws peer``: answer the server's requests until SIGINT or SIGTERM (main thread); the exit code."""
    if not args.drain >= 0:  # NaN too
        _error(f"--drain {args.drain} is not a number of seconds (0 or more)")
        return 2
    sslopt = {"ca_certs": args.cafile} if args.cafile else None
    try:
        service = demo_peer_service(args.url, token=args.token, sslopt=sslopt, unix_socket=args.unix_socket)
    except ValueError as exc:  # not a ws:// or wss:// URL: said at once, in one line
        _error(str(exc))
        return 2
    # From here on Ctrl-C (or SIGTERM) stops the peer cleanly, whenever it comes.
    signals = StopSignals()
    try:
        failure: list[BaseException] = []

        def start() -> None:
            try:
                service.start(timeout=args.connect_timeout)
            except SyncWSError as exc:
                failure.append(exc)
            signals.wake()

        threading.Thread(target=start, name="syncws-peer-start", daemon=True).start()
        signum: Optional[int] = None
        try:
            signum = signals.wait()
            if signum is None:  # woken by start(), not by a signal
                if failure:
                    _error(str(failure[0]))
                    return 1
                print(f"syncws peer connected to {args.url}, answering {', '.join(DEMO_PEER_COMMANDS)} (Ctrl-C stops)", flush=True)
                signum = signals.wait()
        finally:
            if signum is not None and args.drain > 0 and service.connected:
                print(
                    f"syncws peer: stopping: new requests get 503, the calls in flight have up to {args.drain:g} s to finish (Ctrl-C again stops at once)",
                    file=sys.stderr,
                    flush=True,
                )
                drain_then_stop(service, signals, args.drain, "syncws-peer-signals")
            signals.restore()  # a second Ctrl-C while closing interrupts (exit 130)
            service.stop()
    finally:
        signals.restore()
    return 0

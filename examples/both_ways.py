"""Calls both ways on one connection: a data service asks the experiment server, and the server asks it.

What it shows: the server registers commands on its RequestHandler
(``@handler.command``); a data service next to the scanner (a RemoteService
in a second process: this same file run with ``--peer URL``) asks the server
for the session's settings with ``service.request`` before it serves, then
answers the server's ``doRequest`` for a volume. One more call shows
cancellation: the service gives up on a slow server command after 0.3 s,
and the command, polling ``syncws.current_call().cancelled``, stops early.

Run it:

    python examples/both_ways.py            # a free port, done in a few seconds
    python examples/both_ways.py --port 8888

Everything stays on 127.0.0.1; the peer process ends when this script does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading

import syncws


def run_peer(url: str) -> int:
    """The data service: asks the server for settings, then answers its requests until stdin closes."""
    service = syncws.RemoteService(url, backoff_max=1.0)
    settings: dict = {}

    @service.command("getVolume")
    def get_volume(msg):
        # Stand-in for a scanner volume: as many bytes as the settings say one volume has.
        return bytes(settings["slices"] * 64 * 64)

    service.start(timeout=10)
    settings.update(service.request({"cmd": "getSettings"}, timeout=10)["data"])  # the peer asks the server
    print(f"peer: the server's settings: {settings}", flush=True)
    try:
        service.request({"cmd": "slowSummary"}, timeout=0.3)
    except syncws.RequestTimeout:
        print("peer: gave up on slowSummary after 0.3 s (the server was told)", flush=True)
    sys.stdin.read()  # the parent closes our stdin when it is done
    service.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    parser.add_argument("--peer", metavar="URL", help=argparse.SUPPRESS)  # run as the peer process
    args = parser.parse_args()
    if args.peer:
        return run_peer(args.peer)

    server = syncws.WebSocketServer("127.0.0.1", args.port, registry=syncws.ConnectionRegistry()).start()
    handler = syncws.RequestHandler("wsData", server)
    asked = threading.Event()
    stopped_early = threading.Event()

    @handler.command("getSettings")
    def get_settings(request, conn):  # runs on the handler's worker threads; conn: the asking connection
        asked.set()
        return {"TR": 2.0, "run": 3, "slices": 36}

    @handler.command("slowSummary")
    def slow_summary(request, conn):
        call = syncws.current_call()
        for _ in range(100):  # at most 10 s of "work", a tenth of a second at a time
            if call.wait_cancelled(0.1):  # the caller gave up: stop early
                stopped_early.set()
                return None
        return "summary"

    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    peer = subprocess.Popen([sys.executable, __file__, "--peer", server.url + "/wsData"], stdin=subprocess.PIPE, text=True)
    try:
        if not asked.wait(30):
            print("the peer never asked for its settings")
            return 1
        if not stopped_early.wait(10):  # the peer asks this only once it has its settings
            print("slowSummary was not cancelled")
            return 1
        print("server: slowSummary saw the cancel and stopped early")
        volume = handler.doRequest({"cmd": "getVolume"}, timeout=10)["data"]  # the server asks the peer
        print(f"server: a volume of {len(volume)} bytes from the peer")
        return 0
    finally:
        peer.stdin.close()
        peer.wait(10)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

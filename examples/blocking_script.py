"""A plain blocking script that asks a peer process for things: the basic syncws pattern.

What it shows: a WebSocketServer with a RequestHandler on /wsData, a
RemoteService in a second process (this same file run with ``--peer URL``),
and ordinary blocking calls of ``doRequest``: a JSON result, bytes that travel
as binary parts, an error the peer raised, and a call that times out.

Run it:

    python examples/blocking_script.py            # a free port, done in a few seconds
    python examples/blocking_script.py --port 8888

Everything stays on 127.0.0.1; the peer process ends when this script does.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import threading
import time

import syncws


def run_peer(url: str) -> int:
    """The peer process: a RemoteService with a few commands, until its stdin closes."""
    service = syncws.RemoteService(url, backoff_max=1.0)

    @service.command("add")
    def add(msg):
        return msg["a"] + msg["b"]

    @service.command("getFile")
    def get_file(msg):
        # Stand-in for reading a file: deterministic bytes the caller can check.
        return hashlib.shake_128(msg["name"].encode()).digest(msg["size"])

    @service.command("divide")
    def divide(msg):
        return msg["a"] / msg["b"]  # ZeroDivisionError comes back as a status 500 reply

    @service.command("slow")
    def slow(msg):
        time.sleep(msg["seconds"])
        return "finally"

    service.start(timeout=10)
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

    connected = threading.Event()
    server = syncws.WebSocketServer("127.0.0.1", args.port, registry=syncws.ConnectionRegistry()).start()
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler(
        "/wsData",
        syncws.DataWebSocketHandler,
        name="wsData",
        callback=handler.callback,
        connNotify=lambda name, event: connected.set() if event == "open" else None,
    )
    url = server.url + "/wsData"
    print(f"server on {url}; starting the peer process", flush=True)
    peer = subprocess.Popen([sys.executable, __file__, "--peer", url], stdin=subprocess.PIPE)
    try:
        if not connected.wait(30):
            print("the peer did not connect within 30 s", file=sys.stderr)
            return 1
        print("peer connected")

        reply = handler.doRequest({"cmd": "add", "a": 2, "b": 3}, timeout=10)
        print(f"add 2 + 3 -> {reply['data']}")

        size = 3 * 1024 * 1024
        reply = handler.doRequest({"cmd": "getFile", "name": "scan_0001.dcm", "size": size}, timeout=30)
        data = reply["data"]
        ok = data == hashlib.shake_128(b"scan_0001.dcm").digest(size)
        print(f"getFile -> {len(data)} bytes ({'content checked' if ok else 'CONTENT WRONG'})")

        try:
            handler.doRequest({"cmd": "divide", "a": 1, "b": 0}, timeout=10)
            print("divide by zero -> no error?!")
            ok = False
        except syncws.RequestError as exc:
            print(f"divide by zero -> RequestError status {exc.status}: {exc.error}")

        try:
            handler.doRequest({"cmd": "slow", "seconds": 2}, timeout=0.3)
            print("slow -> answered in time?!")
            ok = False
        except syncws.RequestTimeout:
            print("slow -> RequestTimeout after 0.3 s, as asked")

        print("done" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        if peer.stdin is not None:
            peer.stdin.close()
        try:
            peer.wait(10)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait(5)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

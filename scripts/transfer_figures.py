#!/usr/bin/env python3
"""The two transfer figures the README quotes, measured in one run.

1. A 16 MiB binary message from a client to a handler's ``on_message``, in one
   process, against the same bytes over a plain loopback socket: from
   websocket-client's own ``send_binary`` and from ``syncws.connect`` (which
   is websocket-client's handshake with syncws's framing).
2. A large bytes result (256 MiB by default) through ``doRequest`` from a
   RemoteService in another process: speed, and the peak memory of the
   server process against the payload.

Usage: ``python scripts/transfer_figures.py [--reps 7] [--large-mib 256]``.
Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable

import websocket

import syncws

MIB = 1024 * 1024


def _vm(field: str) -> int:
    """A VmXXX field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux 4.0+).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def sixteen_mib(reps: int, warmup: int = 3) -> dict[str, float]:
    """Median MB/s of a 16 MiB message, after ``warmup`` untimed rounds: plain socket, syncws.connect, websocket-client."""
    size = 16 * MIB
    payload = os.urandom(size)
    arrived: queue.Queue[float] = queue.Queue()

    class Sink(syncws.BaseWebSocketHandler):
        def on_message(self, message: Any) -> None:
            assert len(message) == size
            arrived.put(time.perf_counter())

    server = syncws.WebSocketServer(registry=syncws.ConnectionRegistry()).start()
    server.add_handler("/sink", Sink)
    ws = websocket.create_connection(server.url + "/sink", timeout=30)
    conn = syncws.connect(server.url + "/sink")
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()

    # One receive buffer for every round: allocating 16 MiB per round would
    # leave every method after it to fault fresh memory in.
    raw_buffer = memoryview(bytearray(size))

    def raw_once() -> float:
        view = raw_buffer
        started = time.perf_counter()
        thread = threading.Thread(target=sender.sendall, args=(payload,))
        thread.start()
        got = 0
        while got < size:
            got += receiver.recv_into(view[got:])
        thread.join()
        return time.perf_counter() - started

    def via(send: Callable[[bytes], Any]) -> Callable[[], float]:
        def once() -> float:
            started = time.perf_counter()
            send(payload)
            return arrived.get(timeout=60) - started

        return once

    # websocket-client's own frame for the payload, built before the clock
    # starts (its masking runs in Python: see the last figure), and written on
    # its own socket: what the receiving side does with a websocket-client
    # message, apart from what the sender spends building it.
    # (Sent again unchanged each round: the server needs no fresh mask key.)
    prebuilt = websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_BINARY).format()

    def websocket_client_frame(data: bytes) -> None:
        ws.sock.sendall(prebuilt)
    runs = {
        "plain socket": raw_once,
        "syncws.connect send": via(conn.send),
        "websocket-client frame": via(websocket_client_frame),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(warmup + reps):  # interleaved, so that noise hits all alike
        for name, run in runs.items():
            elapsed = run()
            if rep >= warmup:  # the first rounds run on freshly mapped memory
                times[name].append(elapsed)
    # websocket-client's own send is measured after, not between: its copies
    # of the whole payload churn a few hundred MiB per message, which would
    # leave the others to run on freshly faulted memory.
    times["websocket-client send_binary"] = [via(ws.send_binary)() for _ in range(reps)]
    build = []
    for _ in range(reps):
        started = time.perf_counter()
        websocket.ABNF.create_frame(payload, websocket.ABNF.OPCODE_BINARY).format()
        build.append(time.perf_counter() - started)
    times["(websocket-client's frame build alone)"] = build
    ws.close()
    conn.close()
    server.stop()
    for s in (sender, receiver, listener):
        s.close()
    return {name: size / statistics.median(t) / 1e6 for name, t in times.items()}


PEER = """
import sys, syncws
service = syncws.RemoteService(sys.argv[1])
blob = bytes(range(256)) * (int(sys.argv[2]) // 256)
service.register("blob", lambda msg: blob)
service.run_forever()
"""


def large_reply(mib: int) -> dict[str, float]:
    """Speed and server peak memory of one ``mib`` MiB bytes result through doRequest."""
    size = mib * MIB
    server = syncws.WebSocketServer(registry=syncws.ConnectionRegistry()).start()
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    peer = subprocess.Popen([sys.executable, "-c", PEER, server.url + "/wsData", str(size)])
    try:
        deadline = time.monotonic() + 60
        while not server.registry.connections("wsData"):
            if time.monotonic() > deadline:
                raise RuntimeError("peer did not connect")
            threading.Event().wait(0.05)
        handler.doRequest({"cmd": "blob"}, timeout=120)  # warm-up: the peer builds its blob
        _reset_peak()
        base = _vm("VmRSS")
        started = time.perf_counter()
        reply = handler.doRequest({"cmd": "blob"}, timeout=120)
        elapsed = time.perf_counter() - started
        peak = _vm("VmHWM")
        assert len(reply["data"]) == size and reply["data"][:256] == bytes(range(256))
        del reply
        return {
            "MB/s": size / elapsed / 1e6,
            "RSS before, MiB": base / MIB,
            "peak RSS, MiB": peak / MIB,
            "peak / payload": peak / size,
            "growth / payload": (peak - base) / size,
        }
    finally:
        peer.kill()
        peer.wait(10)
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds before the 16 MiB figures")
    parser.add_argument("--large-mib", type=int, default=256)
    parser.add_argument("--large-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.large_only:  # the fresh server process of the large-reply figure
        for name, value in large_reply(args.large_mib).items():
            print(f"  {name:18} {value:8.2f}")
        return 0
    print(f"numpy accelerator: {syncws.protocol.frames.HAVE_NUMPY}")
    figures = sixteen_mib(args.reps, args.warmup)
    floor = figures["plain socket"]
    print(f"16 MiB message to on_message, median of {args.reps} after {args.warmup} untimed:")
    for name, mbps in figures.items():
        print(f"  {name:40} {mbps:8.0f} MB/s  {mbps / floor:5.2f} of the plain socket")
    print(f"{args.large_mib} MiB bytes result through doRequest (server in a fresh process):", flush=True)
    child = subprocess.run([sys.executable, __file__, "--large-only", "--large-mib", str(args.large_mib)], timeout=600, check=False)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())

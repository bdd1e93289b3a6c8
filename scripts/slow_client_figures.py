#!/usr/bin/env python3
"""How much a client that never reads delays a broadcast to everyone else: the figures of docs/benchmarks.md.

Starts a server on 127.0.0.1 with one endpoint, connects ``--clients``
readers (each on a thread of its own, websocket-client) and, in the second
half of the run, one client that never reads (a small receive buffer, so
that the server's socket to it fills). For each of ``--rounds`` broadcasts of
``--size`` bytes it measures the time from the ``sendWebSocketMessage`` call
until the last reader has the message, first without the stuck client, then
with it (its socket full, messages waiting in its outbox), and prints the
p50 and max of each and what waited for the stuck client.

Usage::

    python scripts/slow_client_figures.py [--clients 100] [--rounds 50] [--size 1024]

Everything stays on loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from typing import Any

import websocket

import syncws

NAME = "fanout"


class Quiet(syncws.BaseWebSocketHandler):
    """Joins the registry on open; ignores what it is sent."""

    def on_message(self, message: Any) -> None:
        pass


def reader(url: str, counts: list[int], index: int, arrived: threading.Condition, stop: threading.Event) -> None:
    """Read text messages and count them (a thread per client)."""
    ws = websocket.create_connection(url, timeout=30)
    try:
        for _ in range(1_000_000):  # ends when stopped or the connection closes
            if stop.is_set():
                return
            message = ws.recv()
            if isinstance(message, str):
                with arrived:
                    counts[index] += 1
                    arrived.notify_all()
    except (websocket.WebSocketException, OSError):
        return
    finally:
        ws.close()


def measure(server: syncws.WebSocketServer, counts: list[int], arrived: threading.Condition, rounds: int, size: int) -> list[float]:
    """Seconds from each broadcast until every reader has it."""
    delays = []
    for _ in range(rounds):
        with arrived:
            target = max(counts) + 1
        started = time.perf_counter()
        syncws.sendWebSocketMessage(NAME, "x" * size, registry=server.registry)
        with arrived:
            if not arrived.wait_for(lambda target=target: min(counts) >= target, timeout=60):
                raise SystemExit("a reader missed a broadcast")
        delays.append(time.perf_counter() - started)
    return delays


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args(argv)

    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), send_timeout=60, max_connections=4096)
    server.add_handler("/" + NAME, Quiet, name=NAME)
    server.start()
    url = server.url + "/" + NAME
    counts = [0] * args.clients
    arrived = threading.Condition()
    stop = threading.Event()
    threads = [threading.Thread(target=reader, args=(url, counts, i, arrived, stop), daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(server.registry.connections(NAME)) < args.clients and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        before = measure(server, counts, arrived, args.rounds, args.size)
        stuck = websocket.create_connection(url, timeout=10, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        deadline = time.monotonic() + 10
        while len(server.registry.connections(NAME)) < args.clients + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        handler = server.registry.connections(NAME)[-1]
        for _ in range(2000):  # fill the stuck client's socket: 64 KiB at a time
            syncws.sendWebSocketMessage(NAME, b"\x00" * 65536, registry=server.registry)
            if handler.connection.send_queue_bytes > 0:
                break
        after = measure(server, counts, arrived, args.rounds, args.size)
        waiting = handler.connection.send_queue_bytes
        for label, delays in (("without a stuck client", before), ("with one that never reads", after)):
            print(f"{label:>28}: p50 {statistics.median(delays) * 1e3:7.2f} ms, max {max(delays) * 1e3:7.2f} ms over {len(delays)} broadcasts")
        print(f"{'':>28}  {waiting} bytes waited for the stuck client, its connection {'closed' if handler.connection.closed else 'open'}")
        stuck.close()
    finally:
        stop.set()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

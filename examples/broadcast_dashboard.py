"""A server broadcasting measurements to every connected dashboard, once per tick.

What it shows: named endpoints and ``sendWebSocketMessage``, which sends one
message to every connection of a name from any thread (a connection that
fails is dropped; the others still get the message). Here the "instrument"
is the main thread, producing one measurement per tick; the dashboards are
``syncws.connect`` clients on threads of this process, each counting what it
receives. Dashboards on other machines (or a browser page with syncws.js's
``peer.onmessage``) would connect to the same URL.

Run it:

    python examples/broadcast_dashboard.py                     # 3 dashboards, 20 ticks of 0.05 s
    python examples/broadcast_dashboard.py --clients 5 --ticks 100 --interval 0.1

Everything stays on 127.0.0.1 (a free port unless --port is given).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time

import syncws


class Dashboard(threading.Thread):
    """One dashboard client: reads broadcasts until the server says the run is over."""

    def __init__(self, index: int, url: str) -> None:
        super().__init__(name=f"dashboard-{index}", daemon=True)
        self.index = index
        self.conn = syncws.connect(url)
        self.ticks: list[int] = []
        self.last: dict = {}
        self.finished = False

    def run(self) -> None:
        try:
            for _ in range(100_000):  # bounded: one pass per message
                message = self.conn.recv(timeout=10)
                if message is None:
                    return
                msg = json.loads(message)
                if msg["cmd"] == "end":
                    self.finished = True
                    return
                self.ticks.append(msg["tick"])
                self.last = msg
        except (TimeoutError, syncws.SyncWSError) as exc:
            print(f"dashboard {self.index}: {exc}")
        finally:
            self.conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    parser.add_argument("--clients", type=int, default=3, help="dashboards to connect (default 3)")
    parser.add_argument("--ticks", type=int, default=20, help="measurements to broadcast (default 20)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds per tick (default 0.05)")
    args = parser.parse_args()

    registry = syncws.ConnectionRegistry()
    opened = threading.Semaphore(0)
    server = syncws.WebSocketServer("127.0.0.1", args.port, registry=registry).start()

    def notify(name: str, event: str) -> None:
        if event == "open":
            opened.release()

    # The dashboards only listen: the default callback just logs anything they send.
    server.add_handler("/dashboard", syncws.BaseWebSocketHandler, name="dashboard", connNotify=notify)
    url = server.url + "/dashboard"
    print(f"broadcasting on {url}", flush=True)
    dashboards: list[Dashboard] = []
    try:
        for i in range(args.clients):
            dashboards.append(Dashboard(i, url))
        for _ in dashboards:  # wait until every dashboard is registered, so none misses tick 0
            if not opened.acquire(timeout=10):
                print("a dashboard did not connect", file=sys.stderr)
                return 1
        for d in dashboards:
            d.start()

        started = time.monotonic()
        for tick in range(args.ticks):
            t = time.monotonic() - started
            measurement = {
                "cmd": "measurement",
                "tick": tick,
                "t": round(t, 3),
                "temperature": round(20 + 2 * math.sin(t), 3),
                "clients": len(registry.connections("dashboard")),
            }
            syncws.sendWebSocketMessage("dashboard", measurement, registry=registry)
            # Pace the instrument: the next tick is due at (tick + 1) * interval.
            threading.Event().wait(max(0.0, started + (tick + 1) * args.interval - time.monotonic()))
        syncws.sendWebSocketMessage("dashboard", {"cmd": "end"}, registry=registry)

        ok = True
        for d in dashboards:
            d.join(15)
            complete = d.finished and d.ticks == list(range(args.ticks))
            ok = ok and complete
            last = f"last {d.last.get('temperature')} C at t={d.last.get('t')} s"
            print(f"dashboard {d.index}: {len(d.ticks)}/{args.ticks} measurements, {last} {'(complete)' if complete else '(INCOMPLETE)'}")
        print("all dashboards got every measurement" if ok else "FAILED: some measurements were lost")
        return 0 if ok else 1
    finally:
        for d in dashboards:
            d.conn.abort()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

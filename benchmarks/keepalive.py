"""What keepalive costs a server: N open connections whose clients answer pings, with and without pings.

Run it from the repository root::

    python -m benchmarks.keepalive [--n 5000] [--interval 1] [--seconds 10] [--impl syncws_reactor|syncws_threads|syncws] [--json PATH]

The server child is the many-idle benchmark's (``python -m benchmarks.peers
idle-serve IMPL MAX [PING_INTERVAL]``); the N clients are python-websockets'
asyncio clients on one event loop in this process, which answer every ping
by themselves. Two rounds, one after the other, each with a fresh server:
pings off, then a ping every ``--interval`` seconds. Each round opens the N
connections (100 handshakes at a time), lets one interval pass so that
pings are flowing, then reads the server's CPU time (utime + stime) over
``--seconds``.

It prints, per round, the server's CPU in percent of one core, and the CPU
one keepalive ping costs the server (the difference of the two rounds
divided by the pings sent in the window: N x seconds / interval). That
figure times N / ``ping_interval`` is what keepalive adds at any N
(docs/tuning.md, *Memory and CPU per connection*).

Every wait is bounded, all traffic stays on 127.0.0.1, and the server child
is killed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Optional

from websockets.asyncio.client import connect

from .common import HOST, BenchError
from .many_idle import FD_SPARE, ServerChild, cpu_seconds, proc_status

OPEN_BUDGET = 120.0  # seconds to open the N connections
BATCH = 100


async def _open(port: int, n: int) -> list[Any]:
    """N client connections to /idle, 100 handshakes at a time, within OPEN_BUDGET."""
    deadline = time.monotonic() + OPEN_BUDGET
    clients: list[Any] = []
    while len(clients) < n:
        if time.monotonic() > deadline:
            raise BenchError(f"opened {len(clients)} of {n} connections in {OPEN_BUDGET:.0f} s")
        batch = min(BATCH, n - len(clients))
        clients += await asyncio.wait_for(
            asyncio.gather(*(connect(f"ws://{HOST}:{port}/idle", compression=None, ping_interval=None, open_timeout=30) for _ in range(batch))),
            timeout=60,
        )
    return clients


async def _round(impl: str, n: int, interval: Optional[float], seconds: float) -> dict[str, float]:
    """One server with keepalive every ``interval`` s (None: off): its CPU over ``seconds`` with N connections open."""
    server = ServerChild(impl, n + 100, ping_interval=interval)
    clients: list[Any] = []
    try:
        clients = await _open(server.port, n)
        await asyncio.sleep(interval or 1.0)  # the first pings go out: measure the steady state
        open_now = sum(1 for c in clients if c.state.name == "OPEN")
        before, started = cpu_seconds(server.pid), time.monotonic()
        await asyncio.sleep(seconds)  # the clients' loop answers the pings meanwhile
        cpu, elapsed = cpu_seconds(server.pid) - before, time.monotonic() - started
        still_open = sum(1 for c in clients if c.state.name == "OPEN")
        if still_open < open_now:
            raise BenchError(f"{open_now - still_open} connections closed during the window (pongs too late?)")
        return {"n": n, "interval": interval or 0.0, "cpu_percent": 100.0 * cpu / elapsed, "cpu_s": cpu, "window_s": elapsed,
                "threads": proc_status(server.pid)["Threads"]}
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        server.stop()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.keepalive", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="connections (default 5000)")
    ap.add_argument("--interval", type=float, default=1.0, help="ping interval of the second round, in seconds (default 1)")
    ap.add_argument("--seconds", type=float, default=10.0, help="the CPU window (default 10)")
    ap.add_argument("--impl", default="syncws_reactor", choices=["syncws", "syncws_threads", "syncws_reactor"],
                    help="syncws_reactor (the selector engine, the default here), syncws_threads (the thread engine) or syncws (the server's default)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.n + FD_SPARE
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted) if hard != resource.RLIM_INFINITY else wanted, hard))
    off = asyncio.run(_round(args.impl, args.n, None, args.seconds))
    on = asyncio.run(_round(args.impl, args.n, args.interval, args.seconds))
    pings = args.n * on["window_s"] / args.interval
    per_ping_us = 1e6 * (on["cpu_s"] - off["cpu_s"] * on["window_s"] / off["window_s"]) / pings
    print(f"keepalive: {args.impl}, N = {args.n}, window {args.seconds:.0f} s, Python {sys.version.split()[0]}")
    print(f"  pings off:             {off['cpu_percent']:6.2f} % of a core, {off['threads']} threads")
    print(f"  a ping every {args.interval:g} s:   {on['cpu_percent']:6.2f} % of a core, {on['threads']} threads ({pings / on['window_s']:,.0f} pings/s)")
    print(f"  one ping and its pong: {per_ping_us:.1f} us of the server's CPU")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"impl": args.impl, "off": off, "on": on, "per_ping_us": per_ping_us}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

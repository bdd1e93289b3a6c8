"""Benchmark syncws against a raw-TCP floor and other websocket stacks.

Usage (from the repository root):
    python -m benchmarks [--quick] [--cluster] [--reps N] [--only raw,syncws]
                         [--workloads echo,bulk] [--json PATH]
    python -m benchmarks many-idle ...   (benchmarks/many_idle.py: N idle connections)
    python -m syncws bench ...           (runs this module's main(argv))

Implementations (one module each in benchmarks/):
    raw               plain TCP, length-prefixed messages (the floor)
    syncws            this library
    websockets        websockets.sync.server / websockets.sync.client
    tornado_seed      the old rtCommon.webSocketHandlers design: Tornado
                      IOLoop thread, add_callback sends, per-call Semaphore;
                      peers and clients use websocket-client. Bytes replies
                      go as binary frames.
    tornado_seed_b64  tornado_seed with bytes replies as base64 text, as the
                      seed did (large_reply only)
    syncws_inline     syncws with the peer's echo command registered
                      inline=True (req_latency and req_throughput only)
    syncws_peer_asks  the other direction: a RemoteService peer calls a
                      command of the server's RequestHandler
                      (req_latency and req_throughput only)
    syncws_metrics    syncws with /metrics and /status served and /metrics
                      scraped once a second (req_latency and req_throughput)
    syncws_uncounted  syncws with its counters replaced by ones that count
                      nothing: the floor syncws_metrics is compared with
    syncws_reactor    syncws's server on the selector engine (engine="reactor",
                      the default) by name, every workload but the JSON ones;
                      only when named in --only
    syncws_threads    syncws's server on the thread engine (engine="threads")
                      by name, every workload but the JSON ones; only when
                      named in --only
    websocket_server  websocket-server 0.6.4, unmodified (text only; bytes
                      replies as base64 text)

Workloads (figures):
    echo            2,000 round trips of 100 bytes, one client: p50, p99
    bulk            16 MiB binary messages up and down: MB/s
    req_latency     small JSON request answered by a peer process, one
                    worker thread: p50, p99
    req_throughput  16 worker threads x 500 requests: requests/s
    large_reply     one 64 MiB bytes result through the request pattern:
                    MB/s, server peak RSS (VmHWM) and its growth / payload
    fanout          1 KiB broadcast to 500 clients: time until the last
                    client has it, p50 over the broadcasts
    idle            1,000 idle connections: server RSS and threads per
                    connection

The cluster group (``--cluster``; ``--quick`` runs it too, with small counts;
benchmarks/cluster.py): three nodes on a redis-server of its own, requests
from the peer's node, from another node and from a process without a
server, against raw and one-process syncws in the same run (rows
same_node, cross_node, no_server), the Redis round trip (redis), and a
broadcast to 1,000 clients spread over the nodes (three_nodes):
    redis_rtt, cluster_latency, cluster_throughput, cluster_large,
    cluster_fanout

The workloads are in benchmarks/workloads.py. Every server side runs in a
child process of its own (python -m benchmarks.peers); clients run in this
process (echo, bulk, fan-out, idle) or in a peer process (request
workloads). Runs are interleaved: for each repetition, for each workload,
every implementation in turn. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Optional

from . import cluster
from .common import MiB, raise_nofile
from .report import ALIASES, CLUSTER_IMPLS, CLUSTER_WORKLOADS, IMPLS, ON_REQUEST, WORKLOADS, fmt, markdown, runs, summarize, versions
from .workloads import RUNNERS

FULL = dict(reps=5, echo_n=2000, echo_size=100, bulk_size=16 * MiB, bulk_count=4,
            lat_n=2000, thr_threads=16, thr_n=500, large_size=64 * MiB,
            fan_clients=500, fan_rounds=20, fan_size=1024, idle_n=1000, settle=0.4,
            cl_rtt_n=2000, cl_lat_n=2000, cl_thr_threads=16, cl_thr_n=500, cl_large_size=64 * MiB,
            cl_fan_clients=1000, cl_fan_rounds=10)
QUICK = dict(reps=2, echo_n=300, echo_size=100, bulk_size=4 * MiB, bulk_count=2,
             lat_n=300, thr_threads=16, thr_n=100, large_size=4 * MiB,
             fan_clients=100, fan_rounds=5, fan_size=1024, idle_n=200, settle=0.1,
             cl_rtt_n=200, cl_lat_n=200, cl_thr_threads=16, cl_thr_n=50, cl_large_size=4 * MiB,
             cl_fan_clients=60, cl_fan_rounds=3)


def parse_list(value: str, allowed: list[str], aliases: Optional[dict[str, str]] = None, what: str = "value") -> list[str]:
    """The names of a comma-separated option, in ``allowed``'s order; all of them when empty."""
    if not value:
        return list(allowed)
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        item = (aliases or {}).get(item, item)
        if item not in allowed:
            raise SystemExit("unknown {} {!r} (choose from {})".format(what, item, ", ".join(allowed)))
        if item not in out:
            out.append(item)
    return [x for x in allowed if x in out]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table; 0 when every figure was produced."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["many-idle"]:  # a benchmark of its own, with its own options
        from .many_idle import main as many_idle

        return many_idle(args_in[1:])
    ap = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 2 repetitions, every workload (the cluster's too)")
    ap.add_argument("--cluster", action="store_true", help="the cluster group only: three nodes on a redis-server of its own (benchmarks/cluster.py)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 2)")
    ap.add_argument("--only", default="", help="implementations, comma-separated: " + ",".join(IMPLS + CLUSTER_IMPLS))
    ap.add_argument("--workloads", default="", help="workloads, comma-separated: " + ",".join(WORKLOADS + CLUSTER_WORKLOADS))
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(args_in)

    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        cfg["reps"] = max(1, args.reps)
    impls = parse_list(args.only, IMPLS + CLUSTER_IMPLS, what="implementation")
    if not args.only:
        impls = [impl for impl in impls if impl not in ON_REQUEST]
    if args.workloads:
        workloads = parse_list(args.workloads, WORKLOADS + CLUSTER_WORKLOADS, ALIASES, what="workload")
    elif args.cluster:
        workloads = list(CLUSTER_WORKLOADS)
    else:  # the full run is the main group; --quick covers both
        workloads = WORKLOADS + (CLUSTER_WORKLOADS if args.quick else [])
    raise_nofile()

    t_start = time.monotonic()
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for rep in range(cfg["reps"]):
        for wl in workloads:
            if wl in CLUSTER_WORKLOADS:
                continue  # the cluster group runs after, in an environment of its own
            for impl in impls:
                if not runs(impl, wl):
                    continue
                res = results.setdefault((impl, wl), {"values": {}, "errors": []})
                t = time.monotonic()
                try:
                    figs = RUNNERS[wl](impl, cfg)
                    for k, v in figs.items():
                        res["values"].setdefault(k, []).append(float(v))
                    status = " ".join(f"{k}={fmt(v)}" for k, v in figs.items())
                except Exception as e:
                    res["errors"].append(f"{type(e).__name__}: {e}")
                    status = f"ERROR {type(e).__name__}: {str(e)[:300]}"
                print("[%d/%d] %-14s %-16s %5.1fs  %s" % (rep + 1, cfg["reps"], wl, impl, time.monotonic() - t, status), file=sys.stderr, flush=True)

    checks: list[dict[str, Any]] = []
    extra: list[str] = []
    if any(wl in CLUSTER_WORKLOADS for wl in workloads):
        cluster.run_group(cfg, impls, [wl for wl in workloads if wl in CLUSTER_WORKLOADS], results)
        checks = cluster.targets(results)
        extra = cluster.target_lines(checks)

    meta = {"mode": "quick" if args.quick else "full", "reps": cfg["reps"], "config": cfg,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count() or 0, "versions": versions(),
            "wall_s": time.monotonic() - t_start, "impls": impls, "workloads": workloads, "targets": checks}
    rows = summarize(results, impls, workloads)
    print(markdown(rows, meta, extra))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
    ok = all(r["status"] in ("ok", "n/a") for r in rows)
    return 0 if ok else 1

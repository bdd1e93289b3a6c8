"""Benchmark syncws against a raw-TCP floor and other websocket stacks.

Usage (from the repository root):
    python -m benchmarks [--quick] [--cluster] [--reps N] [--only raw,syncws]
                         [--workloads echo,bulk] [--json PATH]
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

Every server side runs in a child process of its own (python -m
benchmarks.peers); clients run in this process (echo, bulk, fan-out, idle) or
in a peer process (request workloads). Runs are interleaved: for each
repetition, for each workload, every implementation in turn. All traffic
stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

from .common import BenchError, MiB, implementation, pct, raise_nofile
from .many_clients import ManyClients
from .peers import command, package_parent
from .report import ALIASES, CLUSTER_IMPLS, CLUSTER_WORKLOADS, IMPLS, WORKLOADS, fmt, markdown, runs, summarize, versions

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
RUN_TIMEOUT = 180.0  # seconds, any single run


# --------------------------------------------------------------------------
# child processes
# --------------------------------------------------------------------------
class Peer:
    """A ``benchmarks.peers`` child process speaking JSON lines on stdout; ``close`` stops it."""

    def __init__(self, args: list[str]) -> None:
        self.what = args[:2]
        self.errf = tempfile.TemporaryFile()
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.p = subprocess.Popen(command(*args), cwd=package_parent(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.errf, env=env, text=True, bufsize=1)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for line in self.p.stdout:
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        self.lines.put(None)

    def read(self, timeout: float) -> Any:
        """The child's next JSON line, within ``timeout`` seconds."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"peer {self.what}: no answer in {timeout:.0f}s{self.tail()}") from None
        if line is None:
            try:
                self.p.wait(2)
            except subprocess.TimeoutExpired:
                pass
            raise BenchError(f"peer {self.what} exited (rc={self.p.returncode}){self.tail()}")
        return json.loads(line)

    def send(self, line: str) -> None:
        """One command line to the child."""
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def cmd(self, line: str, timeout: float = 15.0) -> Any:
        """Send a command line and read the answer."""
        self.send(line)
        return self.read(timeout)

    def tail(self, n: int = 600) -> str:
        """The end of the child's stderr, for an error message."""
        try:
            self.errf.seek(0)
            err = self.errf.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return (": ..." + err[-n:]) if err else ""

    def close(self) -> None:
        """Ask the child to quit; kill it after 2 s."""
        try:
            if self.p.poll() is None:
                try:
                    self.send("quit")
                except (OSError, ValueError):
                    pass
                try:
                    self.p.wait(2)
                except subprocess.TimeoutExpired:
                    self.p.kill()
                    self.p.wait(5)
        finally:
            for f in (self.p.stdin, self.p.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
            self.errf.close()


class Server:
    """An implementation's server in a ``serve`` child process."""

    def __init__(self, impl: str) -> None:
        self.peer = Peer(["serve", impl])
        try:
            info = self.peer.read(30)
        except BaseException:
            self.peer.close()
            raise
        self.port = info["port"]
        self.pid = info["pid"]

    def cmd(self, line: str, timeout: float = 15.0) -> Any:
        """A command to the child (stat, count PATH, bcast SIZE) and its answer."""
        return self.peer.cmd(line, timeout)

    def wait_count(self, path: str, n: int, timeout: float = 20.0) -> int:
        """Wait until the server has ``n`` connections on ``path``."""
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline
            c = self.cmd("count " + path)["count"]
            if c >= n:
                return int(c)
            if time.monotonic() > deadline:
                raise BenchError("server registered %d of %d connections on %s" % (c, n, path))
            time.sleep(0.02)

    def close(self) -> None:
        """Stop the child."""
        self.peer.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_client(impl: str, srv: Server, path: str) -> Any:
    """The echo and bulk client of ``impl``, connected to ``path``."""
    return implementation(impl).Client(srv.port, path)


# --------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------
def wl_echo(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Round trips of one small text message: p50 and p99."""
    with Server(impl) as srv:
        c = make_client(impl, srv, "/echo")
        try:
            msg = ("0123456789" * ((cfg["echo_size"] + 9) // 10))[:cfg["echo_size"]]
            for _ in range(20):
                c.send(msg)
                if c.recv() != msg:
                    raise BenchError("echo mismatch")
            lat = []
            deadline = time.monotonic() + RUN_TIMEOUT
            for _ in range(cfg["echo_n"]):
                t = time.perf_counter()
                c.send(msg)
                r = c.recv()
                lat.append(time.perf_counter() - t)
                if len(r) != len(msg):
                    raise BenchError("echo length mismatch")
                if time.monotonic() > deadline:
                    raise BenchError("echo took too long")
        finally:
            c.close()
    return {"p50_us": pct(lat, 0.5) * 1e6, "p99_us": pct(lat, 0.99) * 1e6}


def wl_bulk(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Large binary messages up (acknowledged with their length) and down: MB/s each way."""
    size, count = cfg["bulk_size"], cfg["bulk_count"]
    data = bytes(size)
    out = {}
    with Server(impl) as srv:
        c = make_client(impl, srv, "/bulkup")
        try:
            c.send(bytes(1024))
            c.recv()
            t = time.perf_counter()
            for _ in range(count):
                c.send(data)
                ack = c.recv()
                if int(ack) != size:
                    raise BenchError(f"bulk up: server got {ack} bytes")
            out["up_MBps"] = size * count / (time.perf_counter() - t) / 1e6
        finally:
            c.close()
        c = make_client(impl, srv, "/bulkdown")
        try:
            c.send("1024")
            c.recv()
            t = time.perf_counter()
            for _ in range(count):
                c.send(str(size))
                r = c.recv()
                if len(r) != size:
                    raise BenchError("bulk down: got %d bytes" % len(r))
            out["down_MBps"] = size * count / (time.perf_counter() - t) / 1e6
        finally:
            c.close()
    return out


def run_reqserver(impl: str, workload: str, params: dict[str, Any]) -> Any:
    """A request workload, measured in a ``reqserver`` child (which starts and stops its peer)."""
    peer = Peer(["reqserver", impl, workload, json.dumps(params)])
    try:
        return peer.read(RUN_TIMEOUT)
    finally:
        peer.close()


def wl_req_latency(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Sequential small requests from one thread: p50 and p99."""
    return run_reqserver(impl, "latency", {"n": cfg["lat_n"]})


def wl_req_throughput(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Small requests from many threads at once: requests/s."""
    return run_reqserver(impl, "throughput", {"threads": cfg["thr_threads"], "n": cfg["thr_n"]})


def wl_large_reply(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """One large bytes result: MB/s, the server's peak RSS and its growth over the payload."""
    r = run_reqserver(impl, "large", {"size": cfg["large_size"], "timeout": RUN_TIMEOUT - 30})
    return {k: r[k] for k in ("MBps", "peak_MiB", "peak_over_payload")}


def wl_fanout(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """A broadcast to many clients: p50 of the time until the last has it."""
    n, rounds = cfg["fan_clients"], cfg["fan_rounds"]
    with Server(impl) as srv:
        clients = ManyClients(impl, srv.port, "/fanout", n)
        try:
            srv.wait_count("/fanout", n)
            lat = []
            for r in range(rounds + 1):  # round 0 is a warm-up
                srv.peer.send("bcast %d" % cfg["fan_size"])
                t_last = clients.collect(r + 1, 30)
                t0 = srv.peer.read(15)["t0"]
                if r:
                    lat.append(t_last - t0)
        finally:
            clients.close()
    return {"p50_ms": pct(lat, 0.5) * 1e3}


def wl_idle(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Many idle connections: the server's RSS and threads per connection."""
    n, warm = cfg["idle_n"], 10
    with Server(impl) as srv:
        first = ManyClients(impl, srv.port, "/idle", warm)
        more = None
        try:
            srv.wait_count("/idle", warm)
            time.sleep(cfg["settle"])
            s0 = srv.cmd("stat")
            more = ManyClients(impl, srv.port, "/idle", n)
            srv.wait_count("/idle", warm + n, timeout=60)
            time.sleep(cfg["settle"])
            s1 = srv.cmd("stat")
        finally:
            first.close()
            if more is not None:
                more.close()
    return {"KiB_per_conn": (s1["VmRSS"] - s0["VmRSS"]) / n, "threads_per_conn": (s1["Threads"] - s0["Threads"]) / n}


RUNNERS = {"echo": wl_echo, "bulk": wl_bulk, "req_latency": wl_req_latency, "req_throughput": wl_req_throughput,
           "large_reply": wl_large_reply, "fanout": wl_fanout, "idle": wl_idle}


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
    ap = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 2 repetitions, every workload (the cluster's too)")
    ap.add_argument("--cluster", action="store_true", help="the cluster group only: three nodes on a redis-server of its own (benchmarks/cluster.py)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 2)")
    ap.add_argument("--only", default="", help="implementations, comma-separated: " + ",".join(IMPLS + CLUSTER_IMPLS))
    ap.add_argument("--workloads", default="", help="workloads, comma-separated: " + ",".join(WORKLOADS + CLUSTER_WORKLOADS))
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        cfg["reps"] = max(1, args.reps)
    impls = parse_list(args.only, IMPLS + CLUSTER_IMPLS, what="implementation")
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
        from . import cluster  # imports this module: loaded only when needed

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

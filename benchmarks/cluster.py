"""The cluster group (``python -m benchmarks --cluster``): requests and a broadcast across syncws nodes on Redis.

One environment serves every repetition: a redis-server of its own on a free
127.0.0.1 port (no persistence), three node processes A, B and C
(``cluster-node``), a caller process without a server (``cluster-caller``)
and one peer process (``cluster-peer``, a ``RemoteService``) connected to
node A's ``/wsData``. Every caller runs its threads in its own process and
reports its figures, so the benchmark process's GIL is in no measurement.

Rows, per workload (interleaved in each repetition, as the main group's):

- ``redis_rtt``/``redis``: p50 of redis-py ``PING`` and of one
  ``RedisCluster.connections("wsData")`` lookup from this process; and that
  lookup again while 1,000 ``/fanout`` connections are open on the nodes.
- ``cluster_latency``, ``cluster_throughput``, ``cluster_large``: the request
  workloads of the main group (``common.measure``) made by
  ``same_node``: node A's ``RequestHandler("wsData", server)`` (the peer's
  own node; the newest connection is still looked up in Redis),
  ``cross_node``: node B's (the call goes over B's node link to A, which
  forwards it to the peer), ``no_server``: the caller process's
  ``RequestHandler("wsData", cluster=...)`` (also over a link to A); and,
  as references measured in the same run, ``raw`` and ``syncws`` (one
  process, no cluster: the main group's ``reqserver``).
- ``cluster_fanout``: a 1 KiB ``RedisCluster.send`` from this process (a
  process without a server) to 1,000 clients spread evenly over A, B and C
  (``three_nodes``), the time until the last client has it; ``raw`` and
  ``syncws`` (one server, no cluster) broadcast to as many clients. The
  clients are the main group's ``ManyClients``: one thread, one selector.

Targets (``targets``): the cross-node p50 at most the same-node p50 plus two
Redis round trips; the 64 MiB cross-node reply at least 0.25 of raw's speed.
Without redis-server on PATH (or the redis package) the cluster rows are n/a.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Callable, Optional

from .common import HOST, BenchError, pct
from .many_clients import ManyClients
from .report import CLUSTER_IMPLS, CLUSTER_ROWS, fmt, runs
from .workloads import RUN_TIMEOUT, Peer, run_reqserver, wl_fanout

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server process of the benchmark's own on 127.0.0.1, no persistence; ``close`` stops it."""

    def __init__(self) -> None:
        if REDIS_SERVER is None:
            raise BenchError("redis-server is not on PATH")
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="syncws-bench-redis-")
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", self.dir.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_ready(10.0)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """redis-py's URL of this server."""
        return f"redis://{HOST}:{self.port}/0"

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # bounded: redis-server listens within milliseconds
            try:
                with socket.create_connection((HOST, self.port), timeout=1) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                if self.process.poll() is not None:
                    raise BenchError("redis-server exited at start") from None
                time.sleep(0.02)
        raise BenchError(f"redis-server did not answer within {timeout:.0f} s")

    def close(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove its directory."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.dir.cleanup()


def unavailable() -> Optional[str]:
    """Why the cluster rows cannot be measured here, or None."""
    if REDIS_SERVER is None:
        return "n/a: redis-server is not installed"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "n/a: the redis package is not installed"
    return None


class Caller:
    """A child process that makes requests (a node, or the process without a server), spoken to by line commands."""

    def __init__(self, role: str, redis_url: str, name: str) -> None:
        self.peer = Peer([role, redis_url, name])
        try:
            self.info = self.peer.read(30)
        except BaseException:
            self.peer.close()
            raise

    def cmd(self, line: str, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """One command and its answer; BenchError when the child reports an error."""
        reply = self.peer.cmd(line, timeout)
        if "error" in reply:
            raise BenchError(f"{self.peer.what[0]}: {reply['error']}")
        return reply

    def measure(self, workload: str, params: dict[str, Any]) -> dict[str, float]:
        """Run a request workload (latency, throughput, large) on the child's own threads; its figures."""
        return self.cmd(f"measure {workload} {json.dumps(params)}")

    def close(self) -> None:
        """Stop the child ("quit", killed after 2 s)."""
        self.peer.close()


class Environment:
    """redis-server, nodes A, B and C, the caller without a server and the peer on A; ``close`` stops them all."""

    def __init__(self) -> None:
        import syncws

        self.children: list[Any] = []
        self.redis = RedisServer()
        try:
            self.name = "bench-" + uuid.uuid4().hex[:8]
            url = self.redis.url
            self.nodes = [Caller("cluster-node", url, self.name) for _ in range(3)]
            self.children.extend(self.nodes)
            self.caller = Caller("cluster-caller", url, self.name)
            self.children.append(self.caller)
            a = self.nodes[0]
            self.peer = Peer(["cluster-peer", "ws://%s:%d/wsData" % (HOST, a.info["port"])])
            self.children.append(self.peer)
            self.peer.read(30)
            # This process's own view of the cluster: it runs no server (lookups and sends only).
            self.cluster = syncws.RedisCluster(url, name=self.name)
            self.wait(lambda: [r.node for r in self.cluster.connections("wsData")] == [a.info["node"]], 15, "the peer is not in the cluster's presence")
            for caller in (a, self.nodes[1], self.caller):
                caller.cmd("warm 50", 30)  # opens B's and the caller's links to A
        except BaseException:
            self.close()
            raise

    @staticmethod
    def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``cond`` every 20 ms until true; BenchError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not cond():  # bounded by the deadline
            if time.monotonic() > deadline:
                raise BenchError(what)
            time.sleep(0.02)

    def close(self) -> None:
        """Stop every child, then redis-server."""
        for child in reversed(self.children):
            child.close()
        self.children = []
        self.redis.close()


# --------------------------------------------------------------------------
# the measurements
# --------------------------------------------------------------------------
def redis_rtt(env: Environment, n: int) -> dict[str, float]:
    """p50 of redis-py PING and of one ``RedisCluster.connections()`` lookup, from this process."""
    import redis

    r = redis.Redis.from_url(env.redis.url)
    try:
        for _ in range(20):
            r.ping()
        ping = []
        for _ in range(n):
            t = time.perf_counter()
            r.ping()
            ping.append(time.perf_counter() - t)
    finally:
        r.close()
    return {"ping_us": pct(ping, 0.5) * 1e6, "lookup_us": lookup_p50(env, n) * 1e6}


def lookup_p50(env: Environment, n: int) -> float:
    """p50 seconds of one ``connections("wsData")`` lookup; checks that it finds the one peer."""
    for _ in range(20):
        env.cluster.connections("wsData")
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        found = env.cluster.connections("wsData")
        lat.append(time.perf_counter() - t)
        if len(found) != 1:
            raise BenchError(f"the lookup found {len(found)} peers, not 1")
    return pct(lat, 0.5)


def fanout_three_nodes(env: Environment, cfg: dict[str, Any]) -> dict[str, float]:
    """``RedisCluster.send`` to clients spread over the three nodes: p50 of the time until the last has it.

    Also the p50 of a ``connections("wsData")`` lookup while these clients are
    open (``lookup_fan_us``): their presence records are in Redis too.
    """
    n, rounds = cfg["cl_fan_clients"], cfg["cl_fan_rounds"]
    shares = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    clients = ManyClients("syncws", env.nodes[0].info["port"], "/fanout", shares[0])
    try:
        for node, share in zip(env.nodes[1:], shares[1:]):
            clients.add(node.info["port"], "/fanout", share)
        for node, share in zip(env.nodes, shares):
            env.wait(lambda node=node, share=share: node.cmd("count fanout", 15)["count"] >= share, 30, "a node did not register its clients")
        env.wait(lambda: len(env.cluster.connections("fanout")) == n, 30, "the clients are not all in the cluster's presence")
        msg = "x" * cfg["fan_size"]
        lat = []
        for r in range(rounds + 1):  # round 0 is a warm-up
            t0 = time.monotonic()
            env.cluster.send("fanout", msg)
            t_last = clients.collect(r + 1, 30)
            if r and t_last is not None:
                lat.append(t_last - t0)
        lookup = lookup_p50(env, max(20, cfg["cl_rtt_n"] // 10))
    finally:
        clients.close()
    # The next measurements start without these records in presence.
    env.wait(lambda: not env.cluster.connections("fanout"), 30, "closed clients stayed in the cluster's presence")
    return {"p50_ms": pct(lat, 0.5) * 1e3, "lookup_fan_us": lookup * 1e6}


def request_params(wl: str, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ``common.measure`` workload and parameters of a cluster request workload."""
    if wl == "cluster_latency":
        return "latency", {"n": cfg["cl_lat_n"]}
    if wl == "cluster_throughput":
        return "throughput", {"threads": cfg["cl_thr_threads"], "n": cfg["cl_thr_n"]}
    return "large", {"size": cfg["cl_large_size"], "timeout": RUN_TIMEOUT - 30}


def measure_request(env: Optional[Environment], impl: str, wl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """One request workload on one row: the references in a ``reqserver`` child, the rest in their caller."""
    workload, params = request_params(wl, cfg)
    if impl in ("raw", "syncws"):
        figs = run_reqserver(impl, workload, params)
    else:
        assert env is not None
        caller = {"same_node": env.nodes[0], "cross_node": env.nodes[1], "no_server": env.caller}[impl]
        figs = caller.measure(workload, params)
    keys = {"latency": ("p50_us", "p99_us"), "throughput": ("rps",), "large": ("MBps",)}[workload]
    return {k: figs[k] for k in keys}


# --------------------------------------------------------------------------
# the group
# --------------------------------------------------------------------------
def run_group(cfg: dict[str, Any], impls: list[str], workloads: list[str], results: dict[tuple[str, str], dict[str, Any]]) -> None:
    """Measure the selected cluster rows ``cfg["reps"]`` times, interleaved, into ``results`` (as run.main's)."""
    todo = [(wl, impl) for wl in workloads for impl in impls if wl in CLUSTER_ROWS and runs(impl, wl)]
    needs_env = [(wl, impl) for wl, impl in todo if impl in CLUSTER_IMPLS]
    why = unavailable()
    if why is not None:
        for wl, impl in needs_env:
            results[(impl, wl)] = {"values": {}, "errors": [], "na": why}
        todo = [(wl, impl) for wl, impl in todo if impl not in CLUSTER_IMPLS]
        print(f"cluster: {why}; the cluster rows are skipped", file=sys.stderr, flush=True)
    env: Optional[Environment] = None
    if needs_env and why is None:
        t = time.monotonic()
        try:
            env = Environment()
            print("cluster: redis-server, 3 nodes, a caller and a peer up in %.1fs" % (time.monotonic() - t), file=sys.stderr, flush=True)
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            print(f"cluster: ERROR setting up: {err[:300]}", file=sys.stderr, flush=True)
            for wl, impl in needs_env:
                results[(impl, wl)] = {"values": {}, "errors": [f"setting up the cluster: {err}"]}
            todo = [(wl, impl) for wl, impl in todo if impl not in CLUSTER_IMPLS]
    fan_cfg = dict(cfg, fan_clients=cfg["cl_fan_clients"], fan_rounds=cfg["cl_fan_rounds"])
    want_lookup_fan = ("redis_rtt", "redis") in todo
    try:
        for rep in range(cfg["reps"]):
            for wl, impl in todo:
                t = time.monotonic()
                try:
                    if wl == "redis_rtt":
                        assert env is not None
                        figs = redis_rtt(env, cfg["cl_rtt_n"])
                    elif wl == "cluster_fanout" and impl == "three_nodes":
                        assert env is not None
                        figs = fanout_three_nodes(env, cfg)
                        if want_lookup_fan:
                            results.setdefault(("redis", "redis_rtt"), {"values": {}, "errors": []})["values"].setdefault("lookup_fan_us", []).append(
                                figs["lookup_fan_us"]
                            )
                        figs = {"p50_ms": figs["p50_ms"]}
                    elif wl == "cluster_fanout":
                        figs = wl_fanout(impl, fan_cfg)
                    else:
                        figs = measure_request(env, impl, wl, cfg)
                    res = results.setdefault((impl, wl), {"values": {}, "errors": []})
                    for k, v in figs.items():
                        res["values"].setdefault(k, []).append(float(v))
                    status = " ".join(f"{k}={fmt(v)}" for k, v in figs.items())
                except Exception as e:
                    results.setdefault((impl, wl), {"values": {}, "errors": []})["errors"].append(f"{type(e).__name__}: {e}")
                    status = f"ERROR {type(e).__name__}: {str(e)[:300]}"
                print("[%d/%d] %-18s %-12s %5.1fs  %s" % (rep + 1, cfg["reps"], wl, impl, time.monotonic() - t, status), file=sys.stderr, flush=True)
    finally:
        if env is not None:
            env.close()
    if want_lookup_fan and "lookup_fan_us" not in results.get(("redis", "redis_rtt"), {}).get("values", {}):
        # measured with the fan-out only: without it, say so rather than leave a silent hole
        results.setdefault(("redis", "redis_rtt"), {"values": {}, "errors": []})["errors"].append("lookup_fan_us is measured with cluster_fanout")


def _values(results: dict[tuple[str, str], dict[str, Any]], impl: str, wl: str, key: str) -> list[float]:
    return list(results.get((impl, wl), {}).get("values", {}).get(key, []))


def targets(results: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's two targets, from the medians of the run, and how many repetitions met each on their own."""
    out = []
    cross = _values(results, "cross_node", "cluster_latency", "p50_us")
    same = _values(results, "same_node", "cluster_latency", "p50_us")
    ping = _values(results, "redis", "redis_rtt", "ping_us")
    if cross and same and ping:
        limit = statistics.median(same) + 2 * statistics.median(ping)
        value = statistics.median(cross)
        per_rep = [c <= s + 2 * p for c, s, p in zip(cross, same, ping)]
        out.append({"target": "cross-node p50 <= same-node p50 + 2 x Redis PING p50", "value": value, "limit": limit, "unit": "us",
                    "met": value <= limit, "reps_met": sum(per_rep), "reps": len(per_rep)})
    large = _values(results, "cross_node", "cluster_large", "MBps")
    raw = _values(results, "raw", "cluster_large", "MBps")
    if large and raw:
        ratio = statistics.median(large) / statistics.median(raw)
        per_rep = [x / y >= 0.25 for x, y in zip(large, raw)]
        out.append({"target": "cross-node large reply >= 0.25 x raw", "value": ratio, "limit": 0.25, "unit": "x raw",
                    "met": ratio >= 0.25, "reps_met": sum(per_rep), "reps": len(per_rep)})
    return out


def target_lines(checks: list[dict[str, Any]]) -> list[str]:
    """The targets as report lines: value, limit, met or missed and by how much."""
    lines = []
    for c in checks:
        gap = c["value"] - c["limit"]
        verdict = "met" if c["met"] else "MISSED by %s %s" % (fmt(abs(gap)), c["unit"])
        lines.append("Target: %s: %s against %s %s: %s (%d of %d repetitions met it alone)."
                     % (c["target"], fmt(c["value"]), fmt(c["limit"]), c["unit"], verdict, c["reps_met"], c["reps"]))
    return lines

"""The main group's workloads and the child processes they drive (``benchmarks.peers``).

- ``Peer``: a ``python -m benchmarks.peers ROLE ...`` child speaking JSON
  lines; ``Server``: an implementation's ``serve`` child;
  ``run_reqserver``: a request workload measured in a ``reqserver`` child;
- one function per workload, ``wl_echo`` ... ``wl_idle``, each taking the
  implementation and the configuration and returning its figures, and
  ``RUNNERS``, the workloads by name.

The driver (``benchmarks.run``) runs them; the cluster group
(``benchmarks.cluster``) reuses ``Peer``, ``run_reqserver`` and ``wl_fanout``
for its reference rows.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
import time
from typing import Any, Optional

from .common import BenchError, implementation, pct
from .many_clients import ManyClients
from .peers import command, package_parent

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


def wl_json_fanout(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """A JSON update broadcast to many clients: p50 of the time until the last has it, bytes on the wire per client,
    and the server's RSS growth per connection once each has been sent to (its compressor made, where one is)."""
    n, rounds = cfg["fan_clients"], cfg["fan_rounds"]
    with Server(impl) as srv:
        s0 = srv.cmd("stat")
        clients = ManyClients(impl, srv.port, "/fanout", n)
        try:
            srv.wait_count("/fanout", n)
            lat, sizes = [], []
            base = 0
            for r in range(rounds + 1):  # round 0 is a warm-up
                srv.peer.send("jbcast %d" % r)
                t_last = clients.collect(r + 1, 30)
                sent = srv.peer.read(15)
                if r:
                    lat.append(t_last - sent["t0"])
                    sizes.append(sent["size"])
                else:
                    base = clients.bytes_received()
            wire = (clients.bytes_received() - base) / (n * rounds)
            s1 = srv.cmd("stat")
        finally:
            clients.close()
    return {"p50_ms": pct(lat, 0.5) * 1e3, "bytes_per_msg": wire, "json_bytes": sum(sizes) / len(sizes), "KiB_per_conn": (s1["VmRSS"] - s0["VmRSS"]) / n}


def wl_json_req(impl: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Sequential requests answered with a JSON update: p50, and bytes on the wire per request and reply."""
    return run_reqserver(impl, "json", {"n": cfg["lat_n"]})


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
           "large_reply": wl_large_reply, "fanout": wl_fanout, "idle": wl_idle, "json_fanout": wl_json_fanout, "json_req": wl_json_req}

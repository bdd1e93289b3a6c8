#!/usr/bin/env python
"""Soak test: one server, many RemoteService peers, many worker threads, for a while.

    python scripts/soak.py --connections N --threads M --duration SECONDS [--json PATH]

This process runs a :class:`syncws.WebSocketServer` with a ``/wsData``
request endpoint (:class:`syncws.RequestHandler`). It starts N RemoteService
peers spread over a few subprocesses (this same script in ``--peer`` mode runs
``--peers-per-process`` RemoteService objects per process, each answering the
demo peer's ``echo`` and ``getBytes`` commands), then M worker threads make
requests for ``--duration`` seconds (and at most ``--max-requests``): three in
four a small JSON ``echo``, one in four ``getBytes`` of up to 1 MiB, checked
byte for byte against :func:`syncws.cli.demo.demo_payload`. Each request goes to
the next connection of ``server.registry.connections("wsData")``, round-robin,
with ``doRequest(..., conn=handler)``.

After a warm-up, and again at the end, the workers pause (no request in flight)
and the script measures its own threads, open file descriptors
(/proc/self/fd) and resident memory (VmRSS in /proc/self/status).

It prints a report and a verdict line, and exits 1 when a reply was lost (no
reply within ``--request-timeout``), did not match its request, a request
failed in any other way, or the measurements grew: threads (but the
selector engine's handler-pool workers, which come and go with the load) or fds by any
amount, RSS by 20 % and 20 MiB both. Everything is on 127.0.0.1; every peer
process ends when its stdin closes, and by SIGALRM at the latest. It uses the
installed syncws (``python -m pip install -e .`` in a checkout, as the README says).
"""

from __future__ import annotations

import argparse
import bisect
import ctypes
import ctypes.util
import gc
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import syncws
from syncws.cli.demo import demo_payload

ROOT = Path(__file__).resolve().parent.parent

NAME = "wsData"
MAX_BYTES = 1 << 20
RSS_TOLERANCE_FRACTION = 0.20
RSS_TOLERANCE_BYTES = 20 << 20


# ---------------------------------------------------------------------- peer processes


def run_peers(url: str, count: int, lifetime: float, workers: int) -> int:
    """``--peer`` mode: ``count`` RemoteService objects in this process, until stdin closes."""
    if hasattr(signal, "alarm"):
        signal.alarm(max(1, int(lifetime)))  # never outlive the soak
    services = []
    for _ in range(count):
        service = syncws.RemoteService(url, workers=workers, backoff_min=0.1, backoff_max=1.0)
        service.register("echo", lambda msg: msg.get("data"))
        service.register("getBytes", lambda msg: demo_payload(int(msg["size"]), int(msg["seed"])))
        services.append(service)
    for service in services:
        service.start(timeout=60)
    print("READY", flush=True)
    try:
        sys.stdin.read()  # the soak closes our stdin when it is over
    finally:
        for service in services:
            service.stop()
        sys.stdout.flush()
        os._exit(0)  # do not wait for worker threads
    return 0  # pragma: no cover


class PeerProcesses:
    """The peer subprocesses of one soak run."""

    def __init__(self, url: str, connections: int, per_process: int, lifetime: float, workers: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        remaining = connections
        while remaining > 0:
            count = min(per_process, remaining)
            remaining -= count
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--peer",
                        url,
                        "--count",
                        str(count),
                        "--lifetime",
                        str(lifetime),
                        "--workers",
                        str(workers),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=str(ROOT),
                )
            )

    def wait_ready(self, timeout: float) -> bool:
        """True once every process printed READY (each read is bounded by the process's own start timeout)."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            if time.monotonic() > deadline:
                return False
            line = proc.stdout.readline()  # the peer prints READY or exits (start() times out at 60 s)
            if line.strip() != "READY":
                return False
        return True

    def stop(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()


# ---------------------------------------------------------------------- measurements


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def malloc_trim() -> bool:
    """Ask glibc to hand freed heap memory back to the OS; False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def snapshot() -> dict[str, int]:
    """Threads, fds, RSS; then, for information, RSS once glibc returned its free memory, and Python's allocated blocks."""
    gc.collect()
    # The selector engine's handler-pool workers come and go with the load (idle ones leave
    # after 5 s): they are not a leak, so they are not counted; nor is the one that leads the
    # I/O loop now (named syncws-io while it does), since a caller asking back to back leads it
    # itself between its requests and a worker takes it back 2 ms after (syncws.reactor.caller_lead).
    threads = sum(1 for thread in threading.enumerate() if not thread.name.startswith(("syncws-worker-", "syncws-io")))
    figures = {"threads": threads, "fds": count_fds(), "rss": rss_bytes(), "python_blocks": sys.getallocatedblocks()}
    figures["rss_trimmed"] = rss_bytes() if malloc_trim() else figures["rss"]
    return figures


class Histogram:
    """Latencies in buckets 5 % wide, from 50 µs up: fixed memory however long the soak runs."""

    EDGES = tuple(0.00005 * 1.05**k for k in range(400))

    def __init__(self) -> None:
        self.counts = [0] * (len(self.EDGES) + 1)
        self.total = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.EDGES, seconds)] += 1
        self.total += 1
        self.max = max(self.max, seconds)

    def percentile(self, fraction: float) -> float:
        """The upper edge of the bucket holding the ``fraction`` quantile (0 when empty)."""
        if not self.total:
            return 0.0
        rank = fraction * self.total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank and count:
                return self.EDGES[index] if index < len(self.EDGES) else self.max
        return self.max


# ---------------------------------------------------------------------- workload


class Stats:
    """Counters shared by the workers; ``lock`` guards every field."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = 0
        self.echo = 0
        self.get_bytes = 0
        self.bytes_moved = 0
        self.lost = 0
        self.mismatched = 0
        self.errors: dict[str, int] = {}
        self.latency = Histogram()

    def ok(self, kind: str, latency: float, nbytes: int) -> None:
        with self.lock:
            self.done += 1
            if kind == "echo":
                self.echo += 1
            else:
                self.get_bytes += 1
            self.bytes_moved += nbytes
            self.latency.add(latency)

    def bad(self, what: str) -> None:
        with self.lock:
            self.done += 1
            if what == "lost":
                self.lost += 1
            elif what == "mismatched":
                self.mismatched += 1
            else:
                self.errors[what] = self.errors.get(what, 0) + 1


class Workload:
    """M worker threads making requests round-robin over the connections; they can be paused."""

    def __init__(self, rh: syncws.RequestHandler, registry: syncws.ConnectionRegistry, threads: int, request_timeout: float, max_requests: int) -> None:
        self.rh = rh
        self.registry = registry
        self.request_timeout = request_timeout
        self.max_requests = max_requests
        self.stats = Stats()
        self._numbers = itertools.count()
        self._cond = threading.Condition()  # guards _paused, _stopped, _idle
        self._paused = False
        self._stopped = False
        self._idle = 0
        self._exited = 0
        self.threads = [threading.Thread(target=self._worker, args=(i,), name=f"soak-worker-{i}", daemon=True) for i in range(threads)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def pause(self, timeout: float) -> bool:
        """Hold every worker between requests; True once all are held."""
        with self._cond:
            self._paused = True
            return self._cond.wait_for(lambda: self._idle + self._exited == len(self.threads), timeout)

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def stop(self, timeout: float) -> bool:
        with self._cond:
            self._stopped = True
            self._paused = False
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def _gate(self) -> bool:
        """Wait while paused; False once stopped."""
        with self._cond:
            if self._paused:
                self._idle += 1
                self._cond.notify_all()
                self._cond.wait_for(lambda: not self._paused or self._stopped)
                self._idle -= 1
            return not self._stopped

    def _worker(self, index: int) -> None:
        rng = random.Random(index)
        try:
            while self._gate():
                n = next(self._numbers)
                if n >= self.max_requests:
                    with self._cond:
                        self._stopped = True
                    return
                self._one(n, rng)
        finally:
            with self._cond:
                self._exited += 1
                self._cond.notify_all()

    def _one(self, n: int, rng: random.Random) -> None:
        conns = self.registry.connections(NAME)
        if not conns:
            self.stats.bad("NotConnected")
            return
        conn = conns[n % len(conns)]
        started = time.perf_counter()
        try:
            if n % 4 == 3:
                size = rng.randint(0, MAX_BYTES)
                reply = self.rh.doRequest({"cmd": "getBytes", "size": size, "seed": n}, timeout=self.request_timeout, conn=conn)
                good = reply.get("data") == demo_payload(size, n)
                kind, nbytes = "getBytes", size
            else:
                data = {"n": n, "text": "x" * rng.randint(0, 200), "values": [rng.random() for _ in range(rng.randint(0, 8))]}
                reply = self.rh.doRequest({"cmd": "echo", "data": data}, timeout=self.request_timeout, conn=conn)
                good = reply.get("data") == data
                kind, nbytes = "echo", 0
            if good:
                self.stats.ok(kind, time.perf_counter() - started, nbytes)
            else:
                self.stats.bad("mismatched")
        except syncws.RequestTimeout:
            self.stats.bad("lost")
        except Exception as exc:  # counted and reported: no error is expected
            self.stats.bad(type(exc).__name__)


# ---------------------------------------------------------------------- the soak


def grew(start: dict[str, int], end: dict[str, int]) -> list[str]:
    problems = []
    if end["threads"] != start["threads"]:
        problems.append(f"threads {start['threads']} -> {end['threads']}")
    if end["fds"] != start["fds"]:
        problems.append(f"fds {start['fds']} -> {end['fds']}")
    growth = end["rss"] - start["rss"]
    if growth >= RSS_TOLERANCE_BYTES and growth >= RSS_TOLERANCE_FRACTION * start["rss"]:
        problems.append(f"rss grew by {growth / 2**20:.1f} MiB")
    return problems


def run_soak(args: argparse.Namespace) -> int:
    out = sys.stdout
    registry = syncws.ConnectionRegistry()
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=registry, close_timeout=2.0).start()
    rh = syncws.RequestHandler(NAME, server)
    server.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME, callback=rh.callback)
    url = f"{server.url}/{NAME}"
    warmup = args.warmup if args.warmup is not None else min(30.0, max(2.0, args.duration * 0.05))
    lifetime = args.duration + warmup + 120
    processes = -(-args.connections // args.peers_per_process)
    print(
        f"soak: {args.connections} connections in {processes} peer processes, {args.threads} threads, "
        f"{args.duration:g} s after {warmup:g} s of warm-up, on {url}",
        file=out,
        flush=True,
    )
    peers = PeerProcesses(url, args.connections, args.peers_per_process, lifetime, args.peer_workers)
    workload: Optional[Workload] = None
    report: dict[str, Any] = {"connections": args.connections, "threads": args.threads, "duration": args.duration, "warmup": warmup}
    try:
        if not peers.wait_ready(90) or not _wait(lambda: len(registry.connections(NAME)) == args.connections, 30):
            print(f"setup failed: {len(registry.connections(NAME))} of {args.connections} peers connected", file=out)
            print("verdict: FAIL (peers did not connect)", file=out, flush=True)
            return 1
        workload = Workload(rh, registry, args.threads, args.request_timeout, args.max_requests)
        workload.start()
        threading.Event().wait(warmup)
        if not workload.pause(args.request_timeout + 5):
            print("verdict: FAIL (workers did not pause after the warm-up)", file=out, flush=True)
            return 1
        start = snapshot()
        connections_start = len(registry.connections(NAME))
        with workload.stats.lock:
            done_before = workload.stats.done
        workload.resume()
        began = time.monotonic()
        deadline = began + args.duration
        progress_every = max(10.0, args.duration / 10)
        next_progress = began + progress_every
        for _ in range(int(args.duration * 10) + 10):  # ticks of at most 0.1 s; ends at the deadline or max_requests
            now = time.monotonic()
            if now >= deadline or all(not t.is_alive() for t in workload.threads):
                break
            if now >= next_progress and args.duration >= 60:
                with workload.stats.lock:
                    done = workload.stats.done
                print(f"  ... {now - began:.0f} s, {done} requests, rss {rss_bytes() / 2**20:.1f} MiB", file=out, flush=True)
                next_progress += progress_every
            threading.Event().wait(min(0.1, max(0.0, deadline - now)))
        elapsed = time.monotonic() - began
        paused = workload.pause(args.request_timeout + 5)
        end = snapshot()
        connections_end = len(registry.connections(NAME))
        pending = rh.pending
        stats = workload.stats
        with stats.lock:
            p50 = stats.latency.percentile(0.50) * 1000
            p99 = stats.latency.percentile(0.99) * 1000
            worst = stats.latency.max * 1000
            counted = stats.done - done_before
            total = stats.done
            errors = dict(stats.errors)
            lost, mismatched = stats.lost, stats.mismatched
            echo, get_bytes, moved = stats.echo, stats.get_bytes, stats.bytes_moved
        error_count = sum(errors.values())
        problems = grew(start, end)
        if lost:
            problems.append(f"{lost} lost replies")
        if mismatched:
            problems.append(f"{mismatched} mismatched replies")
        if error_count:
            problems.append(f"{error_count} failed requests")
        if not paused:
            problems.append("workers did not pause at the end")
        if pending:
            problems.append(f"{pending} calls left in the RequestHandler")
        print(
            f"requests: {total} done ({counted} in the measured {elapsed:.1f} s, {counted / max(elapsed, 1e-9):.1f}/s); "
            f"{echo} echo, {get_bytes} getBytes, {moved / 2**30:.2f} GiB of bytes checked",
            file=out,
        )
        print(f"errors: {error_count}" + (f" {errors}" if errors else ""), file=out)
        print(f"lost replies: {lost}", file=out)
        print(f"mismatched replies: {mismatched}", file=out)
        print(f"latency: p50 {p50:.2f} ms, p99 {p99:.2f} ms (5 % buckets), max {worst:.1f} ms", file=out)
        print(f"connections: start {connections_start}, end {connections_end}; calls left pending: {pending}", file=out)
        print(f"threads: start {start['threads']}, end {end['threads']}", file=out)
        print(f"fds: start {start['fds']}, end {end['fds']}", file=out)
        growth = end["rss"] - start["rss"]
        print(
            f"rss: start {start['rss'] / 2**20:.1f} MiB, end {end['rss'] / 2**20:.1f} MiB "
            f"({growth / 2**20:+.1f} MiB, {100 * growth / max(start['rss'], 1):+.1f} %)",
            file=out,
        )
        print(
            f"  (for information: after malloc_trim, start {start['rss_trimmed'] / 2**20:.1f} MiB, end {end['rss_trimmed'] / 2**20:.1f} MiB; "
            f"Python's allocated blocks {start['python_blocks']} -> {end['python_blocks']})",
            file=out,
        )
        verdict = "PASS" if not problems else "FAIL (" + "; ".join(problems) + ")"
        print(f"verdict: {verdict}", file=out, flush=True)
        report.update(
            requests=total,
            measured_requests=counted,
            measured_seconds=round(elapsed, 3),
            echo=echo,
            get_bytes=get_bytes,
            bytes_checked=moved,
            errors=errors,
            lost=lost,
            mismatched=mismatched,
            latency_ms={"p50": round(p50, 3), "p99": round(p99, 3), "max": round(worst, 3)},
            connections_start=connections_start,
            connections_end=connections_end,
            pending=pending,
            start=start,
            end=end,
            verdict="PASS" if not problems else "FAIL",
            problems=problems,
        )
        return 0 if not problems else 1
    finally:
        if workload is not None:
            workload.resume()
            workload.stop(args.request_timeout + 5)
        peers.stop()
        server.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _wait(predicate: Any, timeout: float) -> bool:
    event = threading.Event()
    for _ in range(int(timeout / 0.05) + 1):
        if predicate():
            return True
        event.wait(0.05)
    return bool(predicate())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=50, help="RemoteService peers (default 50)")
    parser.add_argument("--threads", type=int, default=32, help="worker threads making requests (default 32)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds measured, after the warm-up (default 600)")
    parser.add_argument("--json", help="also write the report as JSON to this path")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default 5 %% of the duration, 2 to 30 s)")
    parser.add_argument("--peers-per-process", type=int, default=10, help="RemoteService objects per peer process (default 10)")
    parser.add_argument("--peer-workers", type=int, default=4, help="worker pool of each RemoteService (default 4)")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="a reply later than this counts as lost (default 30 s)")
    parser.add_argument("--max-requests", type=int, default=50_000_000, help="stop after this many requests (default 50 million)")
    parser.add_argument("--peer", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--lifetime", type=float, default=900.0, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        return run_peers(args.peer, args.count, args.lifetime, args.workers)
    if args.connections < 1 or args.threads < 1 or args.duration <= 0 or args.peers_per_process < 1:
        parser.error("--connections, --threads, --duration and --peers-per-process must be positive")
    return run_soak(args)


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's quick mode produces every figure (timings are never asserted)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every figure of every workload, and the implementations measured on it (written out
# here, not taken from the package, so that a figure the benchmark stops producing fails).
EVERY = ("raw", "syncws", "websockets", "tornado_seed", "websocket_server")
REQUESTS = ("raw", "syncws", "syncws_inline", "syncws_peer_asks", "syncws_metrics", "syncws_uncounted",
            "websockets", "tornado_seed", "websocket_server")
DEFLATE = ("syncws", "syncws_deflate")  # syncws without and with permessage-deflate
FIGURES = {
    "echo": (("p50_us", "p99_us"), EVERY),
    "bulk": (("up_MBps", "down_MBps"), EVERY),
    "req_latency": (("p50_us", "p99_us"), (*REQUESTS, "syncws_deflate")),
    "req_throughput": (("rps",), REQUESTS),
    "large_reply": (("MBps", "peak_MiB", "peak_over_payload"), (*EVERY, "tornado_seed_b64")),
    "fanout": (("p50_ms",), (*EVERY, "syncws_deflate")),
    "idle": (("KiB_per_conn", "threads_per_conn"), (*EVERY, "syncws_deflate")),
    "json_fanout": (("p50_ms", "bytes_per_msg", "json_bytes", "KiB_per_conn"), DEFLATE),
    "json_req": (("p50_us", "bytes_per_req"), DEFLATE),
    # the cluster group: three nodes on a redis-server of the benchmark's own
    "redis_rtt": (("ping_us", "lookup_us", "lookup_fan_us"), ("redis",)),
    "cluster_latency": (("p50_us", "p99_us"), ("raw", "syncws", "same_node", "cross_node", "no_server")),
    "cluster_throughput": (("rps",), ("raw", "syncws", "same_node", "cross_node", "no_server")),
    "cluster_large": (("MBps",), ("raw", "syncws", "same_node", "cross_node", "no_server")),
    "cluster_fanout": (("p50_ms",), ("raw", "syncws", "three_nodes")),
}
CLUSTER_ONLY = {"redis", "same_node", "cross_node", "no_server", "three_nodes"}
HAS_REDIS = shutil.which("redis-server") is not None


@pytest.mark.timeout(300)
def test_quick_mode_produces_every_figure(tmp_path: Path) -> None:
    """``python -m benchmarks --quick`` runs every workload on every implementation and reports each figure.

    The cluster rows are n/a, with a note, where redis-server is not installed.
    """
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)], cwd=str(ROOT), capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report["results"]
    workloads = set(report["meta"]["workloads"])
    assert workloads == set(FIGURES)
    assert {r["workload"] for r in rows} == workloads
    for row in rows:
        assert row["status"] in ("ok", "n/a"), row
        if row["status"] == "ok":
            assert row["median"] is not None and row["median"] >= 0, row
    expected = {(wl, key, impl) for wl, (keys, impls) in FIGURES.items() for key in keys for impl in impls}
    assert {(r["workload"], r["figure"], r["impl"]) for r in rows} == expected
    expected_na = [r for r in rows if (r["impl"], r["workload"]) == ("websocket_server", "bulk") or (not HAS_REDIS and r["impl"] in CLUSTER_ONLY)]
    assert [r for r in rows if r["status"] == "n/a"] == expected_na
    if not HAS_REDIS:
        assert all("redis-server" in r["note"] for r in rows if r["impl"] in CLUSTER_ONLY)
    targets = report["meta"]["targets"]
    assert [t["target"].split(" ")[1] for t in targets] == (["p50", "large"] if HAS_REDIS else [])
    assert ("Target: cross-node" in result.stdout) == HAS_REDIS
    syncws_rows = [r for r in rows if r["impl"] == "syncws"]
    assert syncws_rows and all(r["status"] == "ok" for r in syncws_rows)
    assert "| workload |" in result.stdout


@pytest.mark.timeout(120)
def test_syncws_bench_runs_the_package_from_any_directory(tmp_path: Path) -> None:
    """``python -m syncws bench`` finds the checkout's benchmarks package from another working directory."""
    args = ["-m", "syncws", "bench", "--quick", "--reps", "1", "--only", "raw,syncws", "--workloads", "echo,req_latency"]
    result = subprocess.run([sys.executable, *args], cwd=str(tmp_path), capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("| echo |") == 4 and result.stdout.count("| req_latency |") == 4, result.stdout


def test_no_sys_path_edits() -> None:
    """The benchmark and the scripts import syncws and each other as packages, never by editing sys.path."""
    offenders = [str(p.relative_to(ROOT)) for d in ("benchmarks", "scripts") for p in sorted((ROOT / d).glob("*.py")) if "sys.path" in p.read_text()]
    assert offenders == []

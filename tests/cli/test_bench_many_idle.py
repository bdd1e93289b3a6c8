"""Benchmarks that run beside the main harness (many_idle, keepalive, wakeup) in their smallest modes, reporting their figures (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_benchmark(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` from the repository root; asserts it exited 0."""
    result = subprocess.run([sys.executable, "-m", *args], cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


@pytest.mark.timeout(60)
def test_many_idle_smallest_mode_holds_every_connection(tmp_path: Path) -> None:
    """50 idle connections to syncws, a 1 s idle window: all 50 held and a numeric thread count reported."""
    out = tmp_path / "many_idle.json"
    result = run_benchmark("benchmarks.many_idle", "--n", "50", "--idle-seconds", "1", "--impls", "syncws", "--json", str(out), timeout=50)
    (row,) = json.loads(out.read_text())["results"]
    assert row["impl"] == "syncws" and row["n_held"] == 50, row
    assert isinstance(row["threads"], int) and row["threads"] > 0, row
    assert "| syncws | 50 |" in result.stdout


@pytest.mark.timeout(90)
def test_keepalive_benchmark_keeps_every_connection_through_its_pings(tmp_path: Path) -> None:
    """50 connections pinged every 0.3 s for 1 s (clients that answer): none is dropped, and a per-ping figure is reported."""
    out = tmp_path / "keepalive.json"
    result = run_benchmark("benchmarks.keepalive", "--n", "50", "--interval", "0.3", "--seconds", "1", "--json", str(out), timeout=80)
    figures = json.loads(out.read_text())
    assert figures["on"]["n"] == 50 and figures["on"]["interval"] == 0.3, figures
    assert isinstance(figures["per_ping_us"], float)
    assert "one ping and its pong" in result.stdout


@pytest.mark.timeout(60)
def test_wakeup_benchmark_reports_each_way_of_waiting() -> None:
    """benchmarks.wakeup with 50 round trips: a p50 in microseconds for each of its three ways of waiting."""
    result = run_benchmark("benchmarks.wakeup", "--n", "50", "--reps", "1", timeout=50)
    lines = result.stdout.splitlines()
    assert [line.split(" p50 ")[0].strip() for line in lines] == ["reader thread, recv", "reader thread, epoll", "caller reads"], lines
    for line in lines:
        assert float(line.split(" p50 ")[1].removesuffix(" us")) > 0, line

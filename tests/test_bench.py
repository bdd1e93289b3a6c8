"""The benchmark's quick mode produces every figure (timings are never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


@pytest.mark.timeout(300)
def test_quick_mode_produces_every_figure(tmp_path: Path) -> None:
    """``scripts/bench.py --quick`` runs every workload on every implementation and reports each figure."""
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)], capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = report["results"]
    workloads = set(report["meta"]["workloads"])
    assert workloads == {"echo", "bulk", "req_latency", "req_throughput", "large_reply", "fanout", "idle"}
    assert {r["workload"] for r in rows} == workloads
    for row in rows:
        assert row["status"] in ("ok", "n/a"), row
        if row["status"] == "ok":
            assert row["median"] is not None and row["median"] >= 0, row
    syncws_rows = [r for r in rows if r["impl"] == "syncws"]
    assert syncws_rows and all(r["status"] == "ok" for r in syncws_rows)
    assert "| workload |" in result.stdout

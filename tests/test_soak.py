"""scripts/soak.py, briefly: 4 peers, 4 worker threads, 5 seconds, in a subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
SOAK = ROOT / "scripts" / "soak.py"


def test_short_soak_passes_and_reports_every_figure(tmp_path: Path) -> None:
    """A 5 s soak exits 0 with requests done, no lost or mismatched reply, equal threads and fds, and a PASS verdict."""
    report_path = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, str(SOAK), "--connections", "4", "--threads", "4", "--duration", "5", "--json", str(report_path)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=80,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = {line.split(":", 1)[0]: line for line in out.splitlines() if ":" in line and not line.startswith(" ")}
    requests = re.match(r"requests: (\d+) done", lines["requests"])
    assert requests is not None and int(requests.group(1)) > 0, lines["requests"]
    assert lines["errors"] == "errors: 0"
    assert lines["lost replies"] == "lost replies: 0"
    assert lines["mismatched replies"] == "mismatched replies: 0"
    threads = re.fullmatch(r"threads: start (\d+), end (\d+)", lines["threads"])
    assert threads is not None and threads.group(1) == threads.group(2), lines["threads"]
    fds = re.fullmatch(r"fds: start (\d+), end (\d+)", lines["fds"])
    assert fds is not None and fds.group(1) == fds.group(2), lines["fds"]
    assert re.match(r"rss: start [\d.]+ MiB, end [\d.]+ MiB", lines["rss"]), lines["rss"]
    assert lines["connections"].startswith("connections: start 4, end 4; calls left pending: 0")
    assert out.rstrip().splitlines()[-1] == "verdict: PASS"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["verdict"] == "PASS" and report["lost"] == 0 and report["mismatched"] == 0
    assert report["requests"] == int(requests.group(1)) and report["get_bytes"] > 0 and report["echo"] > 0

"""The test suite's own rules: in CI, a test that would skip for a missing program fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent

PROBE = '''
import pytest

@pytest.mark.skipif(True, reason="needs a program that is not installed")
def test_needs_a_program() -> None:
    """Skips for a missing program."""
'''


def _run_probe(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE)
    env = {**os.environ, "CI": ci}
    # The project's own configuration (its addopts) and conftest hook, on a probe outside the suite.
    command = [sys.executable, "-m", "pytest", "-q", "-c", str(ROOT / "setup.cfg"), "-p", "tests.conftest", str(probe)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=50)


def test_missing_program_skips_and_is_named_outside_ci(tmp_path: Path) -> None:
    """Outside CI, a test that needs a missing program is skipped, and the summary names it and why."""
    result = _run_probe(tmp_path, ci="")
    assert result.returncode == 0, result.stdout
    assert "SKIPPED" in result.stdout and "needs a program that is not installed" in result.stdout


def test_missing_program_fails_in_ci(tmp_path: Path) -> None:
    """With CI=true, a test that would skip for a missing program fails the run."""
    result = _run_probe(tmp_path, ci="true")
    assert result.returncode != 0, result.stdout
    assert "CI=true, and this test would skip" in result.stdout

"""docs/observability.md's example runs as pasted and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"


@pytest.mark.timeout(90)
def test_observability_example_runs_and_prints_its_comments(tmp_path: Path) -> None:
    """The first Python block of docs/observability.md runs to the end and prints the figures its comments promise."""
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)[0]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == re.findall(r"print\(.*\)\s+# (\S+)", code)

"""The README's examples work when pasted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("index", range(len(EXAMPLES)))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    """Each Python example in the README runs to the end and prints what its comments say."""
    code = EXAMPLES[index]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = re.findall(r"print\(.*\)\s+# (\S+)", code)
    assert result.stdout.split() == expected


def test_readme_demo_command_runs(tmp_path: Path) -> None:
    """The README's main job, ``python -m syncws demo``, runs and reports every request as matched."""
    result = subprocess.run([sys.executable, "-m", "syncws", "demo", "--requests", "60"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout and "latency p50" in result.stdout

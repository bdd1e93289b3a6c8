"""The README's examples work when pasted, and it describes what the repository holds (serve's endpoints, examples, licence, changelog)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import syncws

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
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


@pytest.mark.timeout(90)
def test_readme_example_runs_saved_beside_a_checkout_named_syncws(tmp_path: Path) -> None:
    """The first example, saved as a file in the folder that holds a checkout named syncws/, imports the installed package and runs."""
    checkout = tmp_path / "syncws"  # what `git clone .../syncws` leaves: a folder with no __init__.py at its top
    checkout.mkdir()
    (checkout / "README.md").write_text("a checkout\n")
    (checkout / "tests").mkdir()
    script = tmp_path / "example.py"
    script.write_text(EXAMPLES[0])
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == re.findall(r"print\(.*\)\s+# (\S+)", EXAMPLES[0])


def test_readme_demo_command_runs(tmp_path: Path) -> None:
    """The README's main job, ``python -m syncws demo``, runs and reports every request as matched."""
    result = subprocess.run([sys.executable, "-m", "syncws", "demo", "--requests", "60"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout and "latency p50" in result.stdout
    assert "100.0%" in result.stdout and "\r" not in result.stdout  # a pipe gets progress lines, not redraws


@pytest.mark.timeout(60)
def test_readme_names_every_endpoint_of_serve() -> None:
    """Every path in the banner of ``syncws serve`` (websocket endpoints and /syncws.js) is described in the README."""
    serve = subprocess.Popen(
        [sys.executable, "-m", "syncws", "serve", "--port", "0"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert serve.stdout is not None
        banner = serve.stdout.readline()  # the first line, printed once serving
    finally:
        serve.send_signal(signal.SIGINT)
        assert serve.wait(10) == 0
        serve.communicate(timeout=10)
    paths = re.findall(r"://127\.0\.0\.1:\d+(/[\w.]+)", banner)
    assert {"/echo", "/broadcast", "/relay", "/wsData", "/call", "/syncws.js"} <= set(paths), banner
    text = README.read_text(encoding="utf-8")
    for path in paths:
        assert f"| `{path}` |" in text, f"the README's table of serve's endpoints lacks {path}"


def test_readme_points_to_the_examples_and_the_browser_module() -> None:
    """The README links every example under examples/ and describes the browser module syncws.js."""
    text = README.read_text(encoding="utf-8")
    for script in sorted((ROOT / "examples").rglob("*.py")):
        assert f"({script.relative_to(ROOT).as_posix()})" in text, f"the README does not link {script.relative_to(ROOT)}"
    assert "src/syncws/static/syncws.js" in text and "new syncws.Peer(" in text


def test_license_and_changelog() -> None:
    """LICENSE holds the MIT licence that setup.cfg names; CHANGELOG.md has an Unreleased section and one for the current version."""
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "the syncws authors" in license_text
    assert "Permission is hereby granted, free of charge" in license_text
    assert re.search(r"^license = MIT$", (ROOT / "setup.cfg").read_text(encoding="utf-8"), re.M)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "keepachangelog.com" in changelog
    assert re.search(r"^## \[Unreleased\]$", changelog, re.M)
    assert re.search(rf"^## \[{re.escape(syncws.__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M)

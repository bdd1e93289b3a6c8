"""The examples under examples/: each runs to completion by itself, exits 0 and prints what it promises."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python examples/<args>`` from the checkout; fail the test if it does not end within ``timeout``.

    The example runs in its own process group, so that a timeout kills what it
    started too (a peer process, a Chromium).
    """
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        cwd=EXAMPLES.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=10)
        pytest.fail(f"{args[0]} did not finish within {timeout} s:\n{stdout}\n{stderr}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_every_example_has_a_docstring_with_how_to_run_it() -> None:
    """Every example script starts with a docstring that says how to run it."""
    scripts = sorted(EXAMPLES.rglob("*.py"))
    assert {p.relative_to(EXAMPLES).as_posix() for p in scripts} >= {
        "blocking_script.py",
        "thread_pool.py",
        "broadcast_dashboard.py",
        "browser_page/serve.py",
        "both_ways.py",
    }
    for script in scripts:
        text = script.read_text()
        assert text.startswith('"""'), script
        docstring = text.split('"""')[1]
        assert f"python examples/{script.relative_to(EXAMPLES).as_posix()}" in docstring, script


def test_both_ways() -> None:
    """both_ways.py: the peer asks the server for settings, a cancelled server command stops early, the server asks the peer."""
    result = run_example("both_ways.py")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "peer: the server's settings: {'TR': 2.0, 'run': 3, 'slices': 36}" in out
    assert "slowSummary saw the cancel and stopped early" in out
    assert "server: a volume of 147456 bytes from the peer" in out


def test_blocking_script() -> None:
    """blocking_script.py gets a JSON result, checked bytes, an error reply and a timeout from its peer process."""
    result = run_example("blocking_script.py")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "peer connected" in out
    assert "add 2 + 3 -> 5" in out
    assert "getFile -> 3145728 bytes (content checked)" in out
    assert "RequestError status 500: ZeroDivisionError" in out
    assert "RequestTimeout" in out
    assert out.rstrip().endswith("done")


def test_thread_pool() -> None:
    """thread_pool.py gets every one of its concurrent requests answered correctly."""
    result = run_example("thread_pool.py", "--requests", "200", "--threads", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "200 requests on 8 threads" in result.stdout
    assert "correct replies: 200, wrong or failed: 0" in result.stdout


def test_broadcast_dashboard() -> None:
    """broadcast_dashboard.py delivers every tick, in order, to every dashboard client."""
    result = run_example("broadcast_dashboard.py", "--clients", "3", "--ticks", "15", "--interval", "0.02")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for i in range(3):
        assert f"dashboard {i}: 15/15 measurements" in out
    assert "all dashboards got every measurement" in out


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (Debian's chromium package) on PATH")
def test_browser_page_selftest() -> None:
    """browser_page/serve.py --selftest has a headless Chromium load the page and prints the page's answers."""
    result = run_example("browser_page/serve.py", "--selftest", "--wait", "45")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "the page connected" in out
    assert "HeadlessChrome" in out
    assert "sum of 1..100 -> 5050" in out
    assert "drawing -> 12288 bytes of RGBA pixels (64x48), first pixel [30, 144, 255, 255]" in out
    assert "fail -> RequestError status 500: Error: this page refuses: just showing" in out
    assert out.rstrip().endswith("done")


def test_browser_page_gives_up_without_a_browser() -> None:
    """browser_page/serve.py without a browser prints the address to open and exits 1 after --wait seconds."""
    result = run_example("browser_page/serve.py", "--wait", "0.5")
    assert result.returncode == 1
    assert "open it in a browser" in result.stdout
    assert "no page connected" in result.stderr

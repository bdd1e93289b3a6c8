"""websocket-server 0.6.4's own test suite against syncws.compat, through scripts/websocket_server_suite.py.

The runner is checked here on a small suite written for the purpose; the real
suite is the copy in tests/compat/websocket_server_suite/ (its README says
where it comes from).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "websocket_server_suite.py"

PROBE_CONFTEST = """\
import pytest
from websocket_server import WebsocketServer, WebSocketHandler, OPCODE_TEXT


@pytest.fixture
def server():
    server = WebsocketServer()
    server.run_forever(threaded=True)
    yield server
    server.shutdown_gracefully()
"""

PROBE_TESTS = """\
from websocket_server import WebsocketServer, WebSocketHandler


def test_the_server_is_syncws_compat(server):
    assert isinstance(server, WebsocketServer)
    assert WebsocketServer.__module__ == "syncws.compat.websocket_server_api"
    assert WebSocketHandler.__module__ == "syncws.compat.client_handler"
    assert server.thread.is_alive()


def test_this_one_fails_when_asked(server):
    import os
    assert not os.environ.get("PROBE_FAIL")
"""


def run_script(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The script, run with this checkout's syncws first on the path."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def test_the_runner_puts_syncws_compat_where_the_suite_imports_websocket_server(tmp_path: Path) -> None:
    """A suite that imports websocket_server gets syncws.compat; the pass count is printed, and a failure makes the exit
    status 1; the suite's folder is left as it was (the runs happen in a temporary copy)."""
    (tmp_path / "conftest.py").write_text(PROBE_CONFTEST)
    (tmp_path / "test_probe.py").write_text(PROBE_TESTS)
    passing = run_script("--suite", str(tmp_path), "--runs", "2", "--timeout", "30")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert passing.stdout.splitlines()[-1] == "4 passed, 0 failed"
    failing = run_script("--suite", str(tmp_path), "--timeout", "30", env={**os.environ, "PROBE_FAIL": "1"})
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "not passed: test_probe::test_this_one_fails_when_asked" in failing.stdout
    assert failing.stdout.splitlines()[-1] == "1 passed, 1 failed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conftest.py", "test_probe.py"]


def test_the_runner_says_when_it_finds_no_suite(tmp_path: Path) -> None:
    """A --suite folder that holds no suite: exit status 2, saying so (the checkout's copy is not used instead)."""
    result = run_script("--suite", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "not found" in result.stderr


def test_websocket_servers_own_suite_passes_against_syncws_compat() -> None:
    """Every test of websocket-server 0.6.4's own suite passes against syncws.compat (one run; the script runs more)."""
    suite = REPO / "tests" / "compat" / "websocket_server_suite"
    result = run_script("--suite", str(suite), "--timeout", "60", "--run-timeout", "480", timeout=540)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    counts = re.fullmatch(r"(\d+) passed, 0 failed", result.stdout.splitlines()[-1])
    assert counts is not None and int(counts.group(1)) > 0, result.stdout[-2000:]

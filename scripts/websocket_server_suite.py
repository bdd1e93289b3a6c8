#!/usr/bin/env python
"""websocket-server 0.6.4's own test suite, run against syncws.compat.

    python scripts/websocket_server_suite.py [--suite DIR] [--runs N] [--timeout SECONDS] [--run-timeout SECONDS]
                                             [--against syncws|websocket-server] [-v]

websocket-server's tests import their server with ``from websocket_server
import WebsocketServer`` (and ``WebSocketHandler``). This script runs them,
unchanged, in a fresh temporary directory with pytest, loading itself as a
pytest plugin (``-p websocket_server_suite``) that puts a module named
``websocket_server`` in ``sys.modules`` before the suite's ``conftest.py`` is
imported: that module offers :mod:`syncws.compat`'s ``WebsocketServer`` and
``WebSocketHandler`` with websocket-server's constants. (syncws.compat imports
the real package first, for its ``API`` class; the suite never sees it.) With
``--against websocket-server`` nothing is swapped, and the suite runs against
the real package, for comparison.

Where the suite comes from (its files: ``conftest.py`` and ``test_*.py``, as
in websocket-server's ``tests/`` folder, which its sdist does not ship), the
first of: ``--suite DIR``; ``$SYNCWS_WEBSOCKET_SERVER_SUITE``;
``tests/compat/websocket_server_suite/`` in this checkout (a copy under its
MIT license, see the README there);
``~/.cache/syncws/websocket-server-0.6.4-tests/``. A folder given by
``--suite`` or the environment is the only one looked at. No network is
used.

Each run prints its pass count; the last line is the total, as
``N passed, N failed``. The exit status is 0 only when every test of every run
passed (and there was one), 1 when one did not, 2 when no suite was found.
Each test is bounded (pytest-timeout, ``--timeout``), and so is each run
(``--run-timeout``); the temporary directory goes at the end, whatever happens.

Threads: all of it runs on the main thread; pytest runs in a child process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).stem  # this file, loaded by the child pytest with -p
ENV_SUITE = "SYNCWS_WEBSOCKET_SERVER_SUITE"
DEFAULT_SUITES = (
    REPO / "tests" / "compat" / "websocket_server_suite",
    Path.home() / ".cache" / "syncws" / "websocket-server-0.6.4-tests",
)
#: Set in the child pytest's environment to choose what ``websocket_server`` is there.
ENV_AGAINST = "SYNCWS_SUITE_AGAINST"


def find_suite(explicit: Optional[str] = None) -> Optional[Path]:
    """The folder holding websocket-server's tests (a conftest.py and test_*.py files), or None.

    A folder named by ``--suite`` or the environment is the only one looked at: a
    mistyped path is said, not covered by the default places.
    """
    named = explicit or os.environ.get(ENV_SUITE)
    candidates = [Path(named)] if named else list(DEFAULT_SUITES)
    for folder in candidates:
        if (folder / "conftest.py").is_file() and any(folder.glob("test_*.py")):
            return folder
    return None


# ---------------------------------------------------------------------- the plugin, in the child pytest


def shim_module() -> types.ModuleType:
    """A module named ``websocket_server`` whose server and handler are syncws.compat's."""
    from syncws.compat import websocket_server_api as api

    real = api.websocket_server
    shim = types.ModuleType("websocket_server", "websocket-server's names, served by syncws.compat")
    for name, value in vars(real).items():
        if name.isupper():  # OPCODE_*, CLOSE_STATUS_NORMAL, DEFAULT_CLOSE_REASON, ...
            setattr(shim, name, value)
    shim.API = api.API  # type: ignore[attr-defined]
    shim.WebsocketServer = api.WebsocketServer  # type: ignore[attr-defined]
    shim.WebSocketHandler = api.WebSocketHandler  # type: ignore[attr-defined]
    shim.__all__ = ["API", "WebsocketServer", "WebSocketHandler"]  # type: ignore[attr-defined]
    return shim


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: Any, parser: Any, args: Any) -> None:
    """Before the suite's conftest.py is imported: make ``websocket_server`` syncws.compat (child pytest)."""
    if os.environ.get(ENV_AGAINST, "syncws") == "syncws":
        sys.modules["websocket_server"] = shim_module()


# ---------------------------------------------------------------------- the runs


def run_once(suite: Path, against: str, timeout: float, run_timeout: float, verbose: bool) -> tuple[int, int, list[str]]:
    """Run the suite once in a fresh temporary folder; (passed, not passed, the names of those not passed)."""
    with tempfile.TemporaryDirectory(prefix="websocket-server-suite-") as tmp:
        work = Path(tmp) / "suite"
        work.mkdir()
        for path in [suite / "conftest.py", *sorted(suite.glob("test_*.py"))]:
            shutil.copy(path, work / path.name)
        report = Path(tmp) / "report.xml"
        env = dict(os.environ)
        env[ENV_AGAINST] = against
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", PLUGIN, "-p", "no:cacheprovider", "-p", "no:randomly",
            "-o", f"timeout={timeout:g}", f"--junitxml={report}", "--rootdir", str(work), str(work),
        ]  # fmt: skip
        # Each test has its own bound; the whole run, too (a hang in collection or at exit).
        try:
            child = subprocess.run(command, cwd=work, env=env, capture_output=not verbose, text=True, timeout=run_timeout)
        except subprocess.TimeoutExpired:
            return 0, 1, ["(the run did not end in time)"]
        if not report.is_file():
            if not verbose:
                sys.stdout.write(child.stdout[-4000:] + child.stderr[-4000:])
            return 0, 1, [f"(pytest wrote no report; exit {child.returncode})"]
        passed, failed = parse_report(report)
        if failed and not verbose:
            sys.stdout.write(child.stdout[-8000:])
        return len(passed), len(failed), failed


def parse_report(report: Path) -> tuple[list[str], list[str]]:
    """The tests that passed and those that did not (failed, errored or skipped), from pytest's JUnit XML."""
    passed, failed = [], []
    for case in ElementTree.parse(report).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        (failed if outcome else passed).append(name)
    return passed, failed


def main(argv: Optional[list[str]] = None) -> int:
    """Run the suite ``--runs`` times; 0 when every test passed every time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", help="the folder with websocket-server's conftest.py and test_*.py")
    parser.add_argument("--runs", type=int, default=1, help="runs in a row (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each test may take (default 60)")
    parser.add_argument("--run-timeout", type=float, default=600.0, help="seconds each run may take (default 600)")
    parser.add_argument("--against", choices=("syncws", "websocket-server"), default="syncws", help="the server the suite tests")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    args = parser.parse_args(argv)
    suite = find_suite(args.suite)
    if suite is None:
        print(f"websocket-server's test suite not found: give --suite DIR or set {ENV_SUITE}", file=sys.stderr)
        return 2
    print(f"websocket-server's test suite from {suite}, against {args.against}")
    total_passed = total_failed = 0
    for run in range(1, args.runs + 1):
        passed, failed, names = run_once(suite, args.against, args.timeout, args.run_timeout, args.verbose)
        total_passed += passed
        total_failed += failed
        print(f"run {run}: {passed} of {passed + failed} passed" + "".join(f"\n  not passed: {name}" for name in names), flush=True)
    print(f"{total_passed} passed, {total_failed} failed")
    return 0 if total_failed == 0 and total_passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

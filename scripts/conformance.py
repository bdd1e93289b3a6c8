#!/usr/bin/env python3
"""Run the Autobahn|Testsuite against syncws and summarise the results.

The suite runs only under Python 2.7, so this script builds (once, then
reuses) a cached environment as /work/shared/CONFORMANCE.md describes::

    ${XDG_CACHE_HOME:-~/.cache}/syncws-autobahn/tools   Python 3 venv with virtualenv<20.22
    ${XDG_CACHE_HOME:-~/.cache}/syncws-autobahn/py27    Python 2.7 env with autobahntestsuite

Modes:

``--mode server`` (default)
    Start ``python -m syncws serve`` on a free loopback port and point
    ``wstest -m fuzzingclient`` at its ``/echo`` endpoint.
``--mode client``
    Start ``wstest -m fuzzingserver`` on a free loopback port (through a
    launcher that binds it to 127.0.0.1 only) and run
    ``python -m syncws autobahn-client`` against it.

Usage::

    python3 scripts/conformance.py [--mode server|client] [--cases '1.*,2.*']
                                   [--outdir DIR] [--timeout SECONDS]
                                   [--details] [--require]

Exit status: 0 when no case FAILED and none closed UNCLEAN (or when the run
was skipped for want of Python 2.7); 1 when some did; 2 when the run could not
be made (environment build, a process that did not start, no report, or no
Python 2.7 with ``--require``); 130 on Ctrl-C.

Every subprocess runs in its own session with a timeout, and every one that
is still running is stopped by its process id on the way out.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
AUTOBAHN_REQUIREMENT = "autobahntestsuite==25.10.1"
AUTOBAHN_VERSION_LINE = "AutobahnTestSuite 25.10.1"
# The last virtualenv releases that can still create Python 2.7 environments.
VIRTUALENV_REQUIREMENT = "virtualenv<20.22"
PY27_VERSION = "2.7.18"
HOST = "127.0.0.1"
AGENT = "syncws"
# Every case, 1 to 13: 12.* and 13.* test permessage-deflate (the syncws server
# accepts the suite's offers, the autobahn-client offers it).
EXCLUDE_CASES: list[str] = []
OPCODES = {0: "cont", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}
BEHAVIORS = ["OK", "NON-STRICT", "FAILED", "INFORMATIONAL", "UNIMPLEMENTED"]

PORT_WAIT = 15.0  # seconds for a started server to accept connections
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
LOCK_WAIT = 900.0  # seconds to wait for another run building the environment
STEP_TIMEOUTS = {  # seconds, per environment-building step
    "venv": 120.0,
    "pip": 600.0,
    "virtualenv": 180.0,
    "version": 60.0,
}

# Python 2 source: start wstest with every WebSocket listener on loopback only.
# wstest is imported first so that its choice of Twisted reactor is made before
# anything else imports the reactor; fuzzing.startServer() looks listenWS up
# at call time, so replacing the module attribute afterwards is enough.
LOOPBACK_LAUNCHER = '''\
"""Run wstest with its WebSocket listener bound to 127.0.0.1 (from syncws scripts/conformance.py)."""
import sys

from autobahntestsuite import wstest
from autobahntestsuite import fuzzing

_listen_ws = fuzzing.listenWS


def _listen_ws_loopback(factory, contextFactory=None, backlog=50, interface=""):
    return _listen_ws(factory, contextFactory, backlog, interface="127.0.0.1")


fuzzing.listenWS = _listen_ws_loopback
sys.argv = ["wstest"] + sys.argv[1:]
wstest.run()
'''


class ConformanceError(Exception):
    """A step of the run could not be made; the message says which and why."""


class Processes:
    """The child processes this script started, so that all of them can be stopped.

    Each child is the leader of a new session, so stopping it also stops what
    it started (pip's compilers, for instance); it is signalled by its own
    process id, never by name.
    """

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str | Path], *, log: IO[bytes] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start argv with stdout and stderr going to log (or discarded)."""
        out: IO[bytes] | int = log if log is not None else subprocess.DEVNULL
        proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
        )
        self._started.append(proc)
        return proc

    def run(
        self, argv: Sequence[str | Path], timeout: float, *,
        log: IO[bytes] | None = None, cwd: Path | None = None,
    ) -> int:
        """Run argv to its end and return its exit status.

        Raises ConformanceError if it is still running after timeout seconds
        (it is stopped first).
        """
        proc = self.start(argv, log=log, cwd=cwd)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise ConformanceError(
                f"timed out after {timeout:.0f} s: {' '.join(map(str, argv))}"
            ) from None

    def capture(self, argv: Sequence[str | Path], timeout: float) -> tuple[int, str]:
        """Run argv to its end; return its exit status and its output as text."""
        with tempfile.TemporaryFile() as out:
            status = self.run(argv, timeout, log=out)
            out.seek(0)
            return status, out.read().decode(errors="replace")

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        """Stop proc's process group: SIGTERM, then SIGKILL after a grace period."""
        if proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(STOP_GRACE)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self) -> None:
        """Stop every child started here that is still running, newest first."""
        for proc in reversed(self._started):
            self.stop(proc)


# --- finding Python 2.7 and building the environment ----------------------


def find_python27(procs: Processes) -> Path | None:
    """Return the Python 2.7 interpreter: $SYNCWS_PY27, else pyenv's 2.7.18; None if absent."""
    override = os.environ.get("SYNCWS_PY27")
    if override:
        path = Path(override)
        return path if os.access(path, os.X_OK) else None
    root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    if shutil.which("pyenv"):
        try:
            status, out = procs.capture(["pyenv", "root"], timeout=30)
        except ConformanceError:
            status, out = 1, ""
        if status == 0 and out.strip():
            root = out.strip().splitlines()[-1]
    path = Path(root) / "versions" / PY27_VERSION / "bin" / "python2.7"
    return path if os.access(path, os.X_OK) else None


def cache_dir() -> Path:
    """Return ${XDG_CACHE_HOME:-~/.cache}/syncws-autobahn."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "syncws-autobahn"


def wstest_works(procs: Processes, wstest: Path) -> bool:
    """Whether `wstest -a` runs and reports the expected suite version."""
    if not os.access(wstest, os.X_OK):
        return False
    try:
        status, out = procs.capture([wstest, "-a"], STEP_TIMEOUTS["version"])
    except ConformanceError:
        return False
    return status == 0 and AUTOBAHN_VERSION_LINE in out


@contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache while building it (bounded wait)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConformanceError(f"{root} stayed locked by another run") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_environment(procs: Processes, py27: Path) -> Path:
    """Return the path of a working wstest, building the cached environment if needed."""
    root = cache_dir()
    wstest = root / "py27" / "bin" / "wstest"
    if wstest_works(procs, wstest):
        return wstest
    with build_lock(root):
        # Another run may have built it while this one waited for the lock.
        if wstest_works(procs, wstest):
            return wstest
        print(f"conformance: building the Autobahn environment in {root} (about a minute)")
        log_path = root / "build.log"
        with open(log_path, "wb") as log:
            try:
                build_environment(procs, py27, root, log)
            except ConformanceError as exc:
                raise ConformanceError(f"{exc}\n{tail(log_path)}") from None
    if not wstest_works(procs, wstest):
        raise ConformanceError(f"`{wstest} -a` fails after building; see {log_path}")
    return wstest


def build_environment(procs: Processes, py27: Path, root: Path, log: IO[bytes]) -> None:
    """Run the steps of CONFORMANCE.md: tools venv, virtualenv, py27 env, autobahntestsuite."""
    tools, py27_env = root / "tools", root / "py27"
    if not os.access(tools / "bin" / "virtualenv", os.X_OK):
        shutil.rmtree(tools, ignore_errors=True)
        step(procs, [sys.executable, "-m", "venv", tools], "venv", log)
        step(procs, [tools / "bin" / "pip", "install", VIRTUALENV_REQUIREMENT], "pip", log)
    shutil.rmtree(py27_env, ignore_errors=True)
    step(procs, [tools / "bin" / "virtualenv", "-p", py27, py27_env], "virtualenv", log)
    step(procs, [py27_env / "bin" / "pip", "install", AUTOBAHN_REQUIREMENT], "pip", log)


def step(procs: Processes, argv: Sequence[str | Path], kind: str, log: IO[bytes]) -> None:
    """Run one build step with the timeout for its kind; raise ConformanceError if it fails."""
    command = " ".join(map(str, argv))
    log.write(f"$ {command}\n".encode())
    log.flush()
    status = procs.run(argv, STEP_TIMEOUTS[kind], log=log)
    if status != 0:
        raise ConformanceError(f"exit status {status}: {command}")


def tail(path: Path, lines: int = 20) -> str:
    """Return the last lines of a log file, indented, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + one_line(line, 300) for line in text.splitlines()[-lines:])


# --- ports -----------------------------------------------------------------


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], name: str, log_path: Path) -> None:
    """Wait until a TCP connect to HOST:port succeeds, at most PORT_WAIT seconds.

    Raises ConformanceError if proc exits first or the time runs out.
    """
    deadline = time.monotonic() + PORT_WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConformanceError(
                f"{name} exited with status {proc.returncode} before listening"
                f" on {HOST}:{port}; its output ({log_path}):\n{tail(log_path)}"
            )
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise ConformanceError(
        f"{name} did not listen on {HOST}:{port} within {PORT_WAIT:.0f} s;"
        f" its output ({log_path}):\n{tail(log_path)}"
    )


# --- the two modes -----------------------------------------------------------


def write_spec(path: Path, cases: list[str], **fields: Any) -> None:
    """Write a wstest spec file with the given cases, the standard exclusions and fields."""
    spec = dict(fields, cases=cases, **{"exclude-cases": EXCLUDE_CASES, "exclude-agent-cases": {}})
    path.write_text(json.dumps(spec, indent=2))


def run_server_mode(procs: Processes, wstest: Path, workdir: Path,
                    cases: list[str], timeout: float) -> Path:
    """Test `python -m syncws serve` with wstest's fuzzingclient; return the reports directory."""
    port = free_port()
    server_log = workdir / "syncws-serve.log"
    with open(server_log, "wb") as log:
        server = procs.start(
            [sys.executable, "-m", "syncws", "serve", "--host", HOST, "--port", str(port)],
            log=log, cwd=REPO_ROOT,
        )
    wait_for_port(port, server, "python -m syncws serve", server_log)

    reports = workdir / "reports" / "servers"
    spec = workdir / "fuzzingclient.json"
    write_spec(spec, cases, outdir=str(reports),
               servers=[{"agent": AGENT, "url": f"ws://{HOST}:{port}/echo"}])
    wstest_log = workdir / "wstest.log"
    print(f"conformance: wstest fuzzingclient -> ws://{HOST}:{port}/echo (log: {wstest_log})")
    with open(wstest_log, "wb") as log:
        status = procs.run([wstest, "-m", "fuzzingclient", "-s", spec], timeout, log=log, cwd=workdir)
    if server.poll() is not None:
        print(f"conformance: warning: the syncws server exited with status {server.returncode}"
              f" during the run; its output ({server_log}):\n{tail(server_log)}")
    if status != 0:
        raise ConformanceError(f"wstest exited with status {status}:\n{tail(wstest_log)}")
    return reports


def run_client_mode(procs: Processes, wstest: Path, workdir: Path,
                    cases: list[str], timeout: float) -> Path:
    """Test `python -m syncws autobahn-client` against wstest's fuzzingserver; return the reports directory."""
    port = free_port()
    reports = workdir / "reports" / "clients"
    spec = workdir / "fuzzingserver.json"
    write_spec(spec, cases, url=f"ws://{HOST}:{port}", outdir=str(reports))
    launcher = workdir / "wstest_loopback.py"
    launcher.write_text(LOOPBACK_LAUNCHER)
    python2 = wstest.parent / "python"

    wstest_log = workdir / "wstest.log"
    with open(wstest_log, "wb") as log:
        fuzzer = procs.start([python2, launcher, "-m", "fuzzingserver", "-s", spec, "-u", "0"],
                             log=log, cwd=workdir)
    wait_for_port(port, fuzzer, "wstest fuzzingserver", wstest_log)

    client_log = workdir / "syncws-client.log"
    print(f"conformance: syncws autobahn-client -> ws://{HOST}:{port} (log: {client_log})")
    with open(client_log, "wb") as log:
        status = procs.run(
            [sys.executable, "-m", "syncws", "autobahn-client",
             "--url", f"ws://{HOST}:{port}", "--agent", AGENT],
            timeout, log=log, cwd=REPO_ROOT,
        )
    procs.stop(fuzzer)
    if status != 0:
        print(f"conformance: warning: the syncws client exited with status {status};"
              f" its output ({client_log}):\n{tail(client_log)}")
    if not (reports / "index.json").exists():
        raise ConformanceError(f"no {reports / 'index.json'}: the syncws client did not"
                               f" complete the run (wstest output: {wstest_log})")
    return reports


# --- the report ----------------------------------------------------------------


def case_key(case_id: str) -> tuple[int, ...]:
    """Sort key for case ids such as '6.4.10' (numeric, not lexical)."""
    return tuple(int(part) if part.isdigit() else 0 for part in case_id.split("."))


def load_results(reports: Path) -> dict[str, dict[str, Any]]:
    """Return index.json's cases for our agent: case id -> {behavior, behaviorClose, reportfile, ...}."""
    index_path = reports / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConformanceError(f"cannot read {index_path}: {exc}") from None
    if AGENT not in index:
        raise ConformanceError(f"{index_path} has no results for agent {AGENT!r}: {sorted(index)}")
    return dict(index[AGENT])


def load_case(reports: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Return a case's own report (the per-case json), or {} if it is missing."""
    try:
        return dict(json.loads((reports / entry["reportfile"]).read_text()))
    except (KeyError, OSError, ValueError):
        return {}


def one_line(text: Any, limit: int = 300) -> str:
    """Squeeze a value to one line of at most limit characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def summarise(results: dict[str, dict[str, Any]]) -> list[tuple[str, Counter[str]]]:
    """Count behaviors and UNCLEAN closes per top-level category, then a total row."""
    rows: dict[str, Counter[str]] = {}
    for case_id, entry in results.items():
        counts = rows.setdefault(case_id.split(".")[0], Counter())
        counts[entry.get("behavior", "?")] += 1
        counts["UNCLEAN"] += entry.get("behaviorClose") == "UNCLEAN"
        counts["cases"] += 1
    table = sorted(rows.items(), key=lambda item: case_key(item[0]))
    total: Counter[str] = Counter()
    for _, counts in table:
        total.update(counts)
    return [*table, ("total", total)]


def print_report(reports: Path, results: dict[str, dict[str, Any]], details: bool) -> int:
    """Print the table and the failing cases; return the exit status (1 if any failed)."""
    columns = [*BEHAVIORS, "UNCLEAN", "cases"]
    widths = [len(name) + 2 for name in columns]
    print(f"{'category':<9}" + "".join(f"{n:>{w}}" for n, w in zip(columns, widths)))
    for category, counts in summarise(results):
        print(f"{category:<9}" + "".join(f"{counts[n]:>{w}}" for n, w in zip(columns, widths)))

    ordered = sorted(results, key=case_key)
    non_strict = [cid for cid in ordered if results[cid].get("behavior") == "NON-STRICT"]
    if non_strict:
        print(f"NON-STRICT (allowed, but worth removing): {', '.join(non_strict)}")
    bad = [cid for cid in ordered
           if results[cid].get("behavior") == "FAILED"
           or results[cid].get("behaviorClose") == "UNCLEAN"]
    if not bad:
        print("conformance: no FAILED and no UNCLEAN cases")
        return 0
    print(f"conformance: {len(bad)} case(s) FAILED or closed UNCLEAN:")
    for case_id in bad:
        entry = results[case_id]
        case = load_case(reports, entry)
        reasons = []
        if entry.get("behavior") == "FAILED":
            reasons.append(one_line(case.get("result", "(no per-case report)")))
        if entry.get("behaviorClose") == "UNCLEAN":
            reasons.append(one_line(case.get("resultClose", "(no per-case report)")))
        print(f"  {case_id:<8} {entry.get('behavior')}/{entry.get('behaviorClose')}: "
              + " | ".join(reasons))
        if details and case:
            print_details(case)
    return 1


def print_details(case: dict[str, Any]) -> None:
    """Print what a case sent, expected and received, and how the connection closed."""
    for label, key in [("description", "description"), ("expected", "expected"),
                       ("received", "received"), ("expected close", "expectedClose")]:
        print(f"           {label}: {one_line(case.get(key, ''), 400)}")
    print(f"           close: closedByMe={case.get('closedByMe')}"
          f" failedByMe={case.get('failedByMe')} droppedByMe={case.get('droppedByMe')}"
          f" wasClean={case.get('wasClean')} remoteCloseCode={case.get('remoteCloseCode')}"
          f" wasNotCleanReason={one_line(case.get('wasNotCleanReason'), 200)}")
    print(f"           frames: {one_line(wire_frames(case.get('wirelog') or []), 800)}")


def wire_frames(wirelog: list[Any]) -> str:
    """Render the frames of a wirelog: '>' sent by the suite, '<' sent by syncws."""
    shown = []
    for event in wirelog:
        if not isinstance(event, list) or not event or event[0] not in ("TF", "RF"):
            continue
        (length, payload), opcode, fin, rsv = event[1], event[2], event[3], event[4]
        arrow = ">" if event[0] == "TF" else "<"
        name = OPCODES.get(opcode, f"op{opcode}")
        shown.append(f"{arrow} {name} fin={int(bool(fin))} rsv={rsv} len={length}"
                     f" {one_line(payload, 40)!r}")
    return " | ".join(shown)


# --- command line --------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description="Run the Autobahn|Testsuite (cases 1-13) against syncws.")
    parser.add_argument("--mode", choices=["server", "client"], default="server",
                        help="test the syncws echo server (default) or echo client")
    parser.add_argument("--cases", default="*",
                        help="comma-separated case patterns, e.g. '1.*,2.*' (default: all)")
    parser.add_argument("--outdir", type=Path,
                        help="keep the reports here (default: a temp dir, kept only on failure)")
    parser.add_argument("--timeout", type=float, default=1500.0,
                        help="seconds allowed for the test run itself (default: 1500)")
    parser.add_argument("--details", action="store_true",
                        help="print expected/received for each FAILED or UNCLEAN case")
    parser.add_argument("--require", action="store_true",
                        help="exit 2 instead of skipping when Python 2.7 is missing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the conformance suite as the command line asks; return the exit status."""
    args = parse_args(argv)
    cases = [pattern.strip() for pattern in args.cases.split(",") if pattern.strip()]
    procs = Processes()
    # Ctrl-C raises KeyboardInterrupt even where the shell started us with SIGINT
    # ignored (a background job), and SIGTERM and SIGHUP unwind the same way, so
    # that the finally below always stops the children.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    workdir: Path | None = None
    status = 2
    try:
        py27 = find_python27(procs)
        if py27 is None:
            print("conformance: skipped, no Python 2.7 interpreter")
            status = 2 if args.require else 0
            return status
        wstest = ensure_environment(procs, py27)
        if args.outdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="syncws-autobahn-"))
        else:
            workdir = args.outdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        run_mode = run_server_mode if args.mode == "server" else run_client_mode
        started = time.monotonic()
        reports = run_mode(procs, wstest, workdir, cases, args.timeout)
        print(f"conformance: {args.mode} mode ran in {time.monotonic() - started:.0f} s;"
              f" reports in {reports}")
        status = print_report(reports, load_results(reports), args.details)
        return status
    except ConformanceError as exc:
        print(f"conformance: error: {exc}", file=sys.stderr)
        return status
    except KeyboardInterrupt:
        print("conformance: interrupted", file=sys.stderr)
        status = 130
        return status
    finally:
        procs.stop_all()
        if workdir is not None and args.outdir is None:
            if status == 0:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"conformance: reports kept in {workdir}")


if __name__ == "__main__":
    sys.exit(main())

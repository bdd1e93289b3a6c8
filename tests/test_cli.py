"""The command line, run as ``python -m syncws``: help, serve, call (with and without a peer), token, bad arguments, bench."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from syncws.demo import demo_payload

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
SYNCWS = [sys.executable, "-m", "syncws"]
URL_LINE = re.compile(r"syncws serving (ws://127\.0\.0\.1:\d+)/echo")


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m syncws ARGS`` from the checkout, to its end (killed after ``timeout``)."""
    return subprocess.run([*SYNCWS, *args], cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def run_all(argvs: list[list[str]], timeout: float = 30) -> list[subprocess.CompletedProcess[str]]:
    """Several ``python -m syncws`` runs at once (their start-up dominates); results in order."""
    procs = [subprocess.Popen([*SYNCWS, *a], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in argvs]
    results = []
    deadline = time.monotonic() + timeout
    try:
        for argv, proc in zip(argvs, procs):
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    return results


class Background:
    """A long-running ``python -m syncws`` process whose output lines are read into queues."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*SYNCWS, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stdout: queue.Queue[Optional[str]] = queue.Queue()
        self.stderr: queue.Queue[Optional[str]] = queue.Queue()
        self.readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _pump(stream: Optional[object], lines: queue.Queue[Optional[str]]) -> None:
        assert stream is not None
        for line in stream:  # type: ignore[attr-defined]
            lines.put(line)
        lines.put(None)

    def wait_line(self, lines: queue.Queue[Optional[str]], pattern: str, timeout: float = 30) -> str:
        """The first line (from now) containing ``pattern``; fails at EOF or after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = []
        for _ in range(10_000):
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if pattern in line:
                return line
            seen.append(line)
        raise AssertionError(f"no line with {pattern!r} within {timeout} s (exit code {self.proc.poll()}); saw: {''.join(seen[-20:])}")

    def stop(self, sig: int = signal.SIGINT) -> Optional[int]:
        """Interrupt (or close stdin of) the process and wait for it; kill it if it hangs. Its exit code."""
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.send_signal(sig)
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                return None
        return self.proc.returncode


def start_serve(*extra: str) -> tuple[Background, str]:
    """``serve --port 0``; the server's ws:// URL from its first stdout line."""
    serve = Background("serve", "--port", "0", *extra)
    try:
        line = serve.wait_line(serve.stdout, "syncws serving")
    except AssertionError:
        serve.stop()
        raise
    match = URL_LINE.search(line)
    assert match, line
    return serve, match.group(1)


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """A ``serve --port 0`` process with a ``peer`` process connected to its /wsData; the URL."""
    serve, url = start_serve()
    peer = None
    try:
        peer = Background("--log-level", "INFO", "peer", url + "/wsData")
        peer.wait_line(peer.stderr, "connected to")
        yield url
    finally:
        if peer is not None:
            peer.stop(signal.SIGTERM)
        serve.stop()


@pytest.fixture(scope="module")
def served_with_token() -> Iterator[str]:
    """A ``serve --port 0 --token s3cret`` process, with no peer; the URL."""
    serve, url = start_serve("--token", "s3cret")
    try:
        yield url
    finally:
        serve.stop()


def reply_of(result: subprocess.CompletedProcess[str]) -> dict:
    """The JSON reply ``call`` printed."""
    try:
        return dict(json.loads(result.stdout))
    except ValueError:
        raise AssertionError(f"call printed no JSON reply: {result.stdout!r} {result.stderr!r}") from None


def test_help_of_every_subcommand() -> None:
    """``--help`` of syncws and of serve, call, demo, peer and autobahn-client exits 0 with a usage line."""
    commands = [[], ["serve"], ["call"], ["demo"], ["peer"], ["autobahn-client"]]
    results = run_all([[*c, "--help"] for c in commands])
    for command, result in zip(commands, results):
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout.startswith("usage: syncws"), (command, result.stdout)
    assert all(name in results[0].stdout for name in ("serve", "call", "demo", "peer", "bench", "autobahn-client"))
    assert "--token" in results[1].stdout and "--output" in results[2].stdout


def test_bench_help_from_the_checkout() -> None:
    """``syncws bench --help`` shows scripts/bench.py's own options and exits 0, as bench's help line says."""
    result = run("bench", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: bench" in result.stdout and "--quick" in result.stdout


def test_bad_arguments_exit_2() -> None:
    """Bad arguments exit 2: no command, an unknown one, a non-integer port, call without a URL, without a cmd, or a field that is not key=value."""
    results = run_all(
        [
            [],
            ["nonsense"],
            ["serve", "--port", "eighty"],
            ["call"],
            ["call", "ws://127.0.0.1:9"],
            ["call", "ws://127.0.0.1:9", "echo", "not-a-key-value"],
        ]
    )
    for result in results:
        assert result.returncode == 2, (result.args, result.stdout, result.stderr)
        assert result.stderr, result.args


def test_serve_prints_its_url_and_echoes_a_message(served: str) -> None:
    """serve prints its ws:// URL first; ``call URL/echo --message hi`` prints "hi"; /broadcast sends it back too."""
    echo, broadcast = run_all([["call", served + "/echo", "--message", "hi"], ["call", served + "/broadcast", "--message", "to all"]])
    assert echo.returncode == 0, echo.stderr
    assert echo.stdout == "hi\n"
    assert broadcast.returncode == 0, broadcast.stderr
    assert broadcast.stdout == "to all\n"


def test_call_echo_through_peer(served: str) -> None:
    """``call URL echo data=JSON`` returns the peer's reply: status 200 and the data, parsed as JSON."""
    result = run("call", served, "echo", 'data={"a": [1, 2], "b": "x"}')
    assert result.returncode == 0, result.stderr
    reply = reply_of(result)
    assert reply["status"] == 200 and reply["cmd"] == "echo"
    assert reply["data"] == {"a": [1, 2], "b": "x"}


def test_call_get_bytes_to_file(served: str, tmp_path: Path) -> None:
    """``call URL getBytes size= seed= --output FILE`` writes exactly the peer's bytes, in two parts with a progress bar."""
    size, seed = 8 * 1024 * 1024 + 4321, 7
    out = tmp_path / "payload.bin"
    result = run("call", served, "getBytes", f"size={size}", f"seed={seed}", "--output", str(out), "--progress")
    assert result.returncode == 0, result.stderr
    reply = reply_of(result)
    assert reply["status"] == 200
    assert reply["data"] == f"<{size} bytes written to {out}>"
    assert out.read_bytes() == demo_payload(size, seed)
    assert "100.0%" in result.stderr


def test_call_fail_and_timeout(served: str) -> None:
    """A peer function that raises gives exit 1 with status 500 and its error; one too slow for --timeout gives exit 1 with 504."""
    fail, slow = run_all([["call", served, "fail", "why=testing"], ["call", served, "sleep", "seconds=5", "--timeout", "0.5"]])
    assert fail.returncode == 1
    reply = reply_of(fail)
    assert reply["status"] == 500
    assert reply["error"] == "ValueError: asked to fail: testing"
    assert slow.returncode == 1
    assert reply_of(slow)["status"] == 504


def test_call_without_a_peer_gives_503(served_with_token: str) -> None:
    """``call URL echo`` when no peer is connected exits 1 with status 503."""
    result = run("call", served_with_token, "echo", "data=1", "--token", "s3cret")
    assert result.returncode == 1
    reply = reply_of(result)
    assert reply["status"] == 503


def test_token_is_required(served_with_token: str) -> None:
    """serve --token refuses a call without the token or with a wrong one (exit 1, HTTP 401) and accepts the right one."""
    without, wrong, right = run_all(
        [
            ["call", served_with_token + "/echo", "--message", "hi"],
            ["call", served_with_token + "/echo", "--message", "hi", "--token", "guess"],
            ["call", served_with_token + "/echo", "--message", "hi", "--token", "s3cret"],
        ]
    )
    for refused in (without, wrong):
        assert refused.returncode == 1, refused.stdout
        assert "401" in refused.stderr
        assert refused.stdout == ""
    assert right.returncode == 0, right.stderr
    assert right.stdout == "hi\n"


def test_serve_stops_on_ctrl_c() -> None:
    """serve ends with exit code 0 on SIGINT (Ctrl-C), and its port is refused afterwards."""
    serve, url = start_serve()
    code = serve.stop(signal.SIGINT)
    assert code == 0
    after = run("call", url + "/echo", "--message", "hi", "--timeout", "5")
    assert after.returncode == 1

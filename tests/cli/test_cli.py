"""The command line, run as ``python -m syncws``: help, serve, call (with and without a peer), token, bad arguments, bench."""

from __future__ import annotations

import io
import json
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from syncws.cli.demo import demo_payload
from syncws.cli.progress import ProgressBar

from ..helpers import wait_for

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
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

    def __init__(self, *args: str, stdin: int = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen([*SYNCWS, *args], cwd=ROOT, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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

    def rest(self, lines: queue.Queue[Optional[str]], timeout: float = 10) -> str:
        """Everything still to come on ``lines`` up to EOF (the process has ended or is ending)."""
        deadline = time.monotonic() + timeout
        rest = []
        for _ in range(100_000):
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                break
            rest.append(line)
        return "".join(rest)

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
        peer = Background("peer", url + "/wsData", stdin=subprocess.DEVNULL)
        peer.wait_line(peer.stdout, "syncws peer connected")
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
    """``syncws bench --help`` shows the benchmarks package's own options and exits 0, as bench's help line says."""
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
    """serve ends with exit code 0 and no traceback on SIGINT (Ctrl-C) right after its banner, and its port is refused afterwards."""
    serve, url = start_serve()
    code = serve.stop(signal.SIGINT)
    assert code == 0
    assert "Traceback" not in serve.rest(serve.stderr)
    after = run("call", url + "/echo", "--message", "hi", "--timeout", "5")
    assert after.returncode == 1


def test_serve_stops_on_a_signal_right_after_the_banner_every_time() -> None:
    """Eight serves each get SIGINT or SIGTERM the moment their banner appears: every one exits 0 without a traceback."""
    serves = [Background("serve", "--port", "0") for _ in range(8)]
    try:
        for i, serve in enumerate(serves):
            serve.wait_line(serve.stdout, "syncws serving")
            serve.proc.send_signal(signal.SIGTERM if i % 2 else signal.SIGINT)
        for serve in serves:
            assert serve.proc.wait(10) == 0
            assert "Traceback" not in serve.rest(serve.stderr)
    finally:
        for serve in serves:
            serve.stop()


def test_serve_stops_at_once_with_a_call_in_flight() -> None:
    """Ctrl-C on serve while a /call request waits on a peer: serve exits 0 within a second and logs no traceback; the call exits 1 saying why."""
    import syncws

    arrived, release = threading.Event(), threading.Event()

    def block(msg: dict) -> str:
        arrived.set()
        release.wait(20)
        return "too late"

    serve, url = start_serve()
    service = syncws.RemoteService(url + "/wsData", backoff_min=0.05, backoff_max=0.2)
    service.register("block", block)
    call = None
    try:
        service.start(timeout=10)
        call = Background("call", url, "block", "--timeout", "60")
        assert arrived.wait(20), "the request never reached the peer"
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGINT)
        assert serve.proc.wait(10) == 0
        elapsed = time.monotonic() - started
        assert "Traceback" not in serve.rest(serve.stderr)
        assert elapsed < 1.0, f"serve took {elapsed:.2f} s to stop"
        assert call.proc.wait(10) == 1
        out, err = call.rest(call.stdout), call.rest(call.stderr)
        # The gateway's 502 reply, or (when the server's close came first) the close and its reason.
        assert '"status": 502' in out or "server shutting down" in err, (out, err)
    finally:
        release.set()
        service.stop()
        if call is not None:
            call.stop()
        serve.stop()


def _serve_with_a_blocked_call(*serve_args: str) -> tuple[Background, str, Background, Any, threading.Event]:
    """serve with a RemoteService peer whose ``block`` command waits for the returned event, and a ``call`` of it in flight."""
    import syncws

    arrived, release = threading.Event(), threading.Event()

    def block(msg: dict) -> str:
        arrived.set()
        release.wait(30)
        return "finished"

    serve, url = start_serve(*serve_args)
    service = syncws.RemoteService(url + "/wsData", backoff_min=0.05, backoff_max=0.2)
    service.register("block", block)
    service.start(timeout=10)
    call = Background("call", url, "block", "--timeout", "60")
    assert arrived.wait(20), "the request never reached the peer"
    return serve, url, call, service, release


def _refused(url: str) -> bool:
    """True when nothing accepts connections at the host and port of ``url`` any more."""
    host, _, port = url.removeprefix("ws://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def test_serve_drains_on_sigterm_and_the_call_in_flight_completes() -> None:
    """SIGTERM on serve with a /call request in flight: serve stops accepting at once, the call gets its reply, then serve exits 0."""
    serve, url, call, service, release = _serve_with_a_blocked_call("--drain", "20")
    try:
        serve.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _refused(url), timeout=10)
        assert _refused(url), f"serve still accepts connections after SIGTERM (exit code {serve.proc.poll()})"
        assert serve.proc.poll() is None, "serve exited while a call was in flight"
        release.set()
        assert call.proc.wait(10) == 0
        assert '"data": "finished"' in call.rest(call.stdout)
        assert serve.proc.wait(10) == 0
        assert "Traceback" not in serve.rest(serve.stderr)
    finally:
        release.set()
        service.stop()
        call.stop()
        serve.stop()


def test_serve_refuses_a_drain_that_is_not_a_number_of_seconds() -> None:
    """serve --drain -1 (or nan) says so in one line and exits 2."""
    for bad in ("-1", "nan"):
        result = run("serve", "--port", "0", "--drain", bad)
        assert result.returncode == 2 and "--drain" in result.stderr and result.stderr.count("\n") == 1


def test_second_sigterm_ends_the_drain_at_once() -> None:
    """A second SIGTERM while serve drains stops it at once: exit 0 within a couple of seconds, and the call in flight fails."""
    serve, url, call, service, release = _serve_with_a_blocked_call("--drain", "60")
    try:
        serve.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _refused(url), timeout=10)
        assert serve.proc.poll() is None
        started = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(10) == 0
        assert time.monotonic() - started < 3.0
        assert call.proc.wait(10) == 1
    finally:
        release.set()
        service.stop()
        call.stop()
        serve.stop()


def test_serve_start_up_errors_print_one_line_and_exit_2(tmp_path: Path) -> None:
    """serve with its port in use, a port out of range, an unknown host or a missing certificate prints one line saying so and exits 2."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        missing = tmp_path / "missing.pem"
        cases = {
            "address already in use": ["serve", "--port", str(port)],
            "70000": ["serve", "--port", "70000"],
            "nosuch.invalid": ["serve", "--port", "0", "--host", "nosuch.invalid"],
            str(missing): ["serve", "--port", "0", "--certfile", str(missing)],
        }
        results = run_all(list(cases.values()), timeout=30)
    for expected, result in zip(cases, results):
        assert result.returncode == 2, (result.args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("syncws serve: "), (result.args, result.stderr)
        assert expected.lower() in lines[0].lower(), (result.args, lines)
        assert result.stdout == ""


def test_call_with_an_endpoint_url_says_what_is_wrong(served: str) -> None:
    """``call URL/echo CMD`` exits 2 saying that a request goes to the server's /call gateway (and what --message is for)."""
    result = run("call", served + "/echo", "echo", "data=1")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "/call" in result.stderr and "--message" in result.stderr and served + " " in result.stderr.replace(")", " ")


def test_peer_with_stdin_closed_runs_until_sigterm() -> None:
    """``peer URL < /dev/null`` stays connected and answers calls until SIGTERM, then exits 0."""
    serve, url = start_serve()
    peer = None
    try:
        peer = Background("peer", url + "/wsData", stdin=subprocess.DEVNULL)
        peer.wait_line(peer.stdout, "syncws peer connected")
        result = run("call", url, "echo", "data=[1, 2]")
        assert reply_of(result)["data"] == [1, 2]
        assert peer.proc.poll() is None
        peer.proc.send_signal(signal.SIGTERM)
        assert peer.proc.wait(10) == 0
        assert "Traceback" not in peer.rest(peer.stderr)
    finally:
        if peer is not None:
            peer.stop()
        serve.stop()


def test_peer_that_cannot_connect_says_so_and_exits_1() -> None:
    """``peer`` with no server to connect to prints why on its last line and exits 1 after --connect-timeout."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    result = run("peer", f"ws://127.0.0.1:{port}/wsData", "--connect-timeout", "0.5")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines()[-1].startswith("syncws peer: "), result.stderr
    assert "Traceback" not in result.stderr


def test_peer_reaches_serve_with_token_over_tls(certificate: tuple[Path, Path]) -> None:
    """``peer --token --cafile`` connects to ``serve --token --certfile --keyfile`` over wss://, and ``call`` gets its reply."""
    cert, key = certificate
    serve = Background("serve", "--port", "0", "--token", "s3cret", "--certfile", str(cert), "--keyfile", str(key))
    peer = None
    try:
        match = re.search(r"(wss://127\.0\.0\.1:\d+)/echo", serve.wait_line(serve.stdout, "syncws serving"))
        assert match
        url = match.group(1)
        peer = Background("peer", url + "/wsData", "--token", "s3cret", "--cafile", str(cert), stdin=subprocess.DEVNULL)
        peer.wait_line(peer.stdout, "syncws peer connected")
        result = run("call", url, "echo", "data=42", "--token", "s3cret", "--cafile", str(cert))
        assert result.returncode == 0, result.stderr
        assert reply_of(result)["data"] == 42
    finally:
        if peer is not None:
            peer.stop(signal.SIGTERM)
        serve.stop()


def test_help_says_how_to_get_a_peer() -> None:
    """``call --help`` says how to run a peer for it, ``peer --help`` lists the demo peer's commands and its --token and --cafile."""
    call, peer = run_all([["call", "--help"], ["peer", "--help"]])
    assert "syncws peer ws://" in call.stdout and "/wsData" in call.stdout
    for word in ("echo", "getBytes", "fail", "sleep", "--token", "--cafile"):
        assert word in peer.stdout, word


def test_progress_bar_writes_no_carriage_returns_to_a_file() -> None:
    """A ProgressBar writing to a file or pipe writes plain lines, one per quarter, ending at 100 %; on a terminal it redraws with \\r."""
    plain = io.StringIO()
    bar = ProgressBar(plain)
    for done in range(0, 101, 5):
        bar.update(done, 100)
    bar.finish()
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue()
    assert [line.split()[1] for line in lines] == ["25.0%", "50.0%", "75.0%", "100.0%"]
    terminal = io.StringIO()
    bar = ProgressBar(terminal, interactive=True)
    bar.update(1, 2)
    bar.finish()
    assert terminal.getvalue().startswith("\r") and terminal.getvalue().endswith("\n")

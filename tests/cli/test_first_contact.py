"""A new user's first mistakes get a clear answer at once, and what the docs and --help name works against serve and the demo peer."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

import syncws
from syncws.cli.demo import demo_payload

from .test_cli import ROOT, Background, reply_of, run, run_all, start_serve

pytestmark = pytest.mark.timeout(120)

#: Documents whose ``syncws call`` lines must work against ``serve`` and the demo peer.
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Commands of ``syncws call`` lines in the docs that are meant for another server than ``serve`` with the demo peer.
OTHER_SERVERS = {"rpc": "rt-cloud's format: serve --rtcloud-passwd with an rt-cloud peer (docs/migration.md)"}

CALL_LINE = re.compile(r"(?:python -m )?syncws call ([^`\n]+)")


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """A ``serve --port 0`` process with the demo ``peer`` connected to its /wsData; the URL."""
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


def _call_lines(text: str, source: str) -> list[tuple[str, list[str]]]:
    """The ``syncws call URL ...`` lines in ``text`` whose URL is a ws:// or wss:// URL: (where, arguments)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in CALL_LINE.finditer(line):
            args = shlex.split(match.group(1), comments=True)
            if args and args[0].startswith(("ws://", "wss://")):
                found.append((f"{source}:{number}", args))
    return found


def _against(served: str, args: list[str], folder: Path) -> list[str]:
    """A documented call's arguments aimed at ``served``: its path kept, --token and --cafile dropped, --output into ``folder``, --timeout 3."""
    path = re.sub(r"^wss?://[^/]+", "", args[0])
    out = [served + path]
    rest = iter(args[1:])
    for arg in rest:
        if arg in ("--token", "--cafile", "--timeout"):
            next(rest)
        elif arg == "--output":
            out += ["--output", str(folder / Path(next(rest)).name)]
        else:
            out.append(arg)
    return ["call", *out, "--timeout", "3"]


def _documented_calls() -> list[tuple[str, list[str]]]:
    """Every ``syncws call`` line of README.md, docs/*.md and the --help of call and peer."""
    lines = []
    for document in DOCUMENTS:
        lines += _call_lines(document.read_text(encoding="utf-8"), document.relative_to(ROOT).as_posix())
    for command in ("call", "peer"):
        lines += _call_lines(run(command, "--help").stdout, f"syncws {command} --help")
    return lines


def _problem(where: str, args: list[str], result: subprocess.CompletedProcess[str]) -> Optional[str]:
    """What is wrong with a documented call's result, or None: a request must be answered 200 (504 once it ran past
    --timeout, 500 for ``fail`` saying it was asked to), a message must be answered."""
    message = "--message" in args
    cmd = args[2] if not message else None
    if message:
        return None if result.returncode == 0 else f"{where}: exit {result.returncode}: {result.stderr.strip()}"
    try:
        reply = reply_of(result)
    except AssertionError as exc:
        return f"{where}: {exc}"
    status = reply.get("status")
    if status == 200 or status == 504:
        return None
    if cmd == "fail" and status == 500 and str(reply.get("error", "")).startswith("ValueError: asked to fail"):
        return None
    return f"{where}: {' '.join(args[1:])} -> status {status}: {reply.get('error')}"


@pytest.mark.parametrize(
    "argv",
    [["peer", "http://127.0.0.1:9/wsData"], ["call", "http://127.0.0.1:9", "echo"], ["call", "http://127.0.0.1:9/echo", "--message", "hi"]],
    ids=["peer", "call", "call-message"],
)
def test_an_http_url_exits_2_at_once_saying_which_ws_url_to_give(argv: list[str]) -> None:
    """peer and call given an http:// URL exit 2 at once (not after peer's 30 s) with one line naming the ws:// URL to give."""
    result = run(*argv, timeout=20)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"syncws {argv[0]}: "), result.stderr
    assert argv[1].replace("http://", "ws://", 1) in lines[0], lines[0]


def test_every_call_in_the_docs_and_help_is_answered(served: str, tmp_path: Path) -> None:
    """Every `syncws call` line of README.md, docs/*.md and --help runs against serve and the demo peer: its command is known and its fields do."""
    calls = [(where, args) for where, args in _documented_calls() if "--message" in args or args[1] not in OTHER_SERVERS]
    assert len(calls) >= 10, calls  # the README's, security.md's, cluster.md's and the help's
    argvs = [_against(served, args, tmp_path) for _, args in calls]
    results = run_all(argvs, timeout=60)
    problems = [p for (where, _), argv, result in zip(calls, argvs, results) if (p := _problem(where, argv, result))]
    assert not problems, "\n".join(problems)


def test_every_command_of_peer_help_is_answered_and_in_the_readme(served: str) -> None:
    """Each command `peer --help` lists is one the demo peer answers (not 404), and the README names it."""
    text = run("peer", "--help").stdout
    block = text.split("commands of the demo peer:\n", 1)[1].split("\n\n", 1)[0]
    names = [line.split()[0] for line in block.splitlines()]
    assert {"echo", "add", "getBytes", "fail", "sleep", "askServer"} <= set(names), names
    results = run_all([["call", served, name, "--timeout", "3"] for name in names])
    statuses = {name: reply_of(result)["status"] for name, result in zip(names, results)}
    assert 404 not in statuses.values(), statuses
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}" in readme for name in names), [name for name in names if f"`{name}" not in readme]


def test_commands_the_docs_ask_of_serve_are_answered() -> None:
    """Each command a page or peer asks `serve` for in the README's browser snippet (peer.request({cmd: ...})) is answered 200 by serve."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    asked = set(re.findall(r'peer\.request\(\{cmd: "(\w+)"', readme))
    assert asked, "the README's browser snippet asks the server nothing"
    serve, url = start_serve()
    service = syncws.RemoteService(url + "/wsData", backoff_min=0.05, backoff_max=0.2)
    try:
        service.start(timeout=10)
        for cmd in sorted(asked):
            assert service.request({"cmd": cmd}, timeout=10)["status"] == 200, cmd
    finally:
        service.stop()
        serve.stop()


def test_get_bytes_without_a_seed_uses_seed_0(served: str, tmp_path: Path) -> None:
    """`call getBytes size=1000` (no seed) answers 200 with the 1000 bytes of seed 0."""
    out = tmp_path / "bytes.bin"
    result = run("call", served, "getBytes", "size=1000", "--output", str(out))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert out.read_bytes() == demo_payload(1000, 0)


def test_a_value_that_looks_like_json_but_is_not_gets_a_warning(served: str) -> None:
    """`call echo data={bad` warns on stderr that the value is not valid JSON, and sends it as the string."""
    result = run("call", served, "echo", "data={bad")
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "not valid JSON" in result.stderr, result.stderr
    assert reply_of(result)["data"] == "{bad"


def test_help_and_readme_list_the_same_exit_codes() -> None:
    """`syncws --help` lists the exit codes, and the README's table of exit codes says the same, code for code."""
    help_text = run("--help").stdout
    assert "exit codes:" in help_text, help_text
    listed = dict(re.findall(r"^  (\d+)\s+(.+)$", help_text.split("exit codes:", 1)[1], re.M))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| (\d+) \| (.+) \|$", readme.split("| code | meaning |", 1)[1].split("\n\n", 1)[0], re.M))
    assert set(listed) == {"0", "1", "2", "130"}, listed
    assert listed == table

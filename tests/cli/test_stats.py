"""`syncws stats` and `serve --metrics`: the stats table (pure functions), the command against real servers, --watch, its errors."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

import syncws
from syncws.cli import main
from syncws.cli.stats import CLEAR, WIDTH, _watch, format_stats, human_bytes, human_count, human_uptime, status_url
from syncws.protocol.auth import bearer_token
from syncws.protocol.http import HttpResponse

from ..helpers import self_signed
from .test_cli import Background, run_all

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret"


def sample_stats(**changes: Any) -> dict[str, Any]:
    """A stats dict shaped as server.stats() returns it: two endpoints, one handler, a cluster, two kinds of refusal."""
    stats: dict[str, Any] = {
        "server": {"url": "ws://127.0.0.1:8888", "uptime": 3725.5, "connections": 3, "max_connections": 1024},
        "endpoints": {
            "/echo": {
                "connections": 2,
                "opened": 17,
                "closed": {"1000": 14, "1006": 1},
                "messages_in": 1200,
                "messages_out": 1199,
                "bytes_in": 1536,
                "bytes_out": 5 * 1024 * 1024,
                "closed_send_queue_full": 0,
            },
            "/wsData": {
                "connections": 1,
                "opened": 1,
                "closed": {},
                "messages_in": 40,
                "messages_out": 40,
                "bytes_in": 999,
                "bytes_out": 3 * 1024**3,
                "closed_send_queue_full": 0,
            },
        },
        "handshakes_refused": {"auth": 4, "origin": 0, "limit": 0, "stopping": 0, "not_found": 2, "bad_request": 0, "error": 0},
        "requests": {
            "wsData": {
                "requests": 40,
                "outcomes": {"ok": 35, "error": 2, "timeout": 1, "disconnected": 1, "cancelled": 1},
                "pending": 3,
                "latency": {"window": 60.0, "count": 40, "p50": 0.00042, "p90": 0.01, "p99": 0.1234},
                "duration": {"buckets": [[0.0005, 20], ["+Inf", 40]], "sum": 1.5, "count": 40},
                "commands": {"busy": 1, "idle": 7, "queued": 0},
            }
        },
        "send_queues": {"bytes": 2048, "closed_full": 1},
        "workers": {"busy": 2, "idle": 9, "connection_threads": 4, "handling_messages": 1, "command_threads": 8},
        "cluster": {"name": "prod", "node": "n1", "redis_up": True, "nodes": ["n1", "n2", "n3"]},
    }
    stats.update(changes)
    return stats


def row(lines: list[str], name: str) -> list[str]:
    """The cells of the table row whose first cell is ``name``."""
    for line in lines:
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in:\n" + "\n".join(lines))


# --------------------------------------------------------------------------- the table, without a server


def test_table_fits_80_columns_and_shows_the_figures() -> None:
    """format_stats gives lines of at most 80 columns with the header, each endpoint's and handler's figures, the non-zero refusals, queues and workers."""
    lines = format_stats(sample_stats())
    assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
    header = lines[0]
    for part in ("ws://127.0.0.1:8888", "up 1h02m", "conns 3/1024", "cluster prod: 3 nodes, redis up"):
        assert part in header, header
    assert row(lines, "/echo") == ["/echo", "2", "17", "15", "1200", "1199", "1.5", "KiB", "5.0", "MiB"]
    assert row(lines, "/wsData") == ["/wsData", "1", "1", "0", "40", "40", "999", "B", "3.0", "GiB"]
    assert row(lines, "wsData") == ["wsData", "40", "35", "2", "1", "1", "1", "3", "0.42", "123"]
    text = "\n".join(lines)
    assert "refused handshakes: auth 4, not_found 2" in text and "origin" not in text
    assert "send queues: 2.0 KiB waiting; 1 connection closed with a full queue" in text
    assert "workers: 2 busy, 9 idle" in text
    assert "msg/s" not in text and "req/s" not in text  # rates are --watch's


def test_table_fits_80_columns_with_huge_figures_and_long_names() -> None:
    """Counts in the quadrillions, a 60-character endpoint and handler, every refusal and rates still give lines of at most 80 columns."""
    huge = 10**15 + 7
    stats = sample_stats()
    long_path = "/" + "x" * 59
    stats["endpoints"] = {long_path: {key: huge for key in ("connections", "opened", "messages_in", "messages_out", "bytes_in", "bytes_out")}}
    stats["endpoints"][long_path]["closed"] = {"1000": huge, "1006": huge}
    handler = dict(
        stats["requests"]["wsData"], requests=huge, pending=huge, outcomes=dict.fromkeys(("ok", "error", "timeout", "disconnected", "cancelled"), huge)
    )
    handler["latency"] = {"p50": 59.9, "p99": 3600.0}
    stats["requests"] = {"h" * 60: handler}
    stats["handshakes_refused"] = dict.fromkeys(stats["handshakes_refused"], huge)
    stats["server"] = dict(stats["server"], url="wss://" + "a" * 90 + ":8888", uptime=10**9, connections=huge)
    stats["cluster"] = dict(stats["cluster"], name="c" * 70, redis_up=False)
    before = sample_stats(server=dict(stats["server"], uptime=10**9 - 1))
    for lines in (format_stats(stats), format_stats(stats, before, rates=True)):
        assert all(len(line) <= WIDTH for line in lines), [line for line in lines if len(line) > WIDTH]
        assert any("REDIS DOWN" in line for line in lines)


def test_rate_column_comes_from_two_samples() -> None:
    """With rates, the first sample shows "-", and the next messages and requests per second over the uptime between them."""
    first = sample_stats()
    later = json.loads(json.dumps(first))
    later["server"]["uptime"] += 10.0
    later["endpoints"]["/echo"]["messages_in"] += 30
    later["endpoints"]["/echo"]["messages_out"] += 20
    later["requests"]["wsData"]["requests"] += 250
    alone = format_stats(first, None, rates=True)
    assert "msg/s" in row(alone, "endpoint") and row(alone, "/echo")[-1] == "-" and row(alone, "wsData")[-1] == "-"
    lines = format_stats(later, first, rates=True)
    assert row(lines, "/echo")[-1] == "5.0"
    assert row(lines, "/wsData")[-1] == "0.0"
    assert row(lines, "wsData")[-1] == "25"
    restarted = format_stats(first, later, rates=True)  # uptime went back: the server restarted, no rate
    assert row(restarted, "/echo")[-1] == "-"


def test_human_units() -> None:
    """Bytes in binary units in at most 7 characters, counts shortened only past their width, uptimes in two units."""
    assert [human_bytes(n) for n in (0, 999, 1000, 1536, 10 * 1024**2, 1023 * 1024**3, 2 * 1024**5)] == [
        "0 B",
        "999 B",
        "1.0 KiB",
        "1.5 KiB",
        "10 MiB",
        "1.0 TiB",
        "2.0 PiB",
    ]
    assert [human_count(n, 5) for n in (0, 99999, 123456, 1234567, 10**15)] == ["0", "99999", "123k", "1.2M", "1.0P"]
    assert [human_uptime(s) for s in (0, 42.9, 245, 3725, 273600)] == ["0s", "42s", "4m05s", "1h02m", "3d04h"]


def test_status_url_from_what_the_user_gives() -> None:
    """ws:// and http:// give http, wss:// and https:// https; no path or / means /status, a path is kept; format=json is added to any query."""
    assert status_url("ws://127.0.0.1:8888") == "http://127.0.0.1:8888/status?format=json"
    assert status_url("wss://example.org:8888/") == "https://example.org:8888/status?format=json"
    assert status_url("http://127.0.0.1:1/ops/status") == "http://127.0.0.1:1/ops/status?format=json"
    assert status_url("https://[::1]:9/?token=t&format=html") == "https://[::1]:9/status?token=t&format=json"
    for bad in ("ftp://host:1", "127.0.0.1:8888", "ws://:8888", "ws://host:99999"):
        with pytest.raises(ValueError):
            status_url(bad)


def fetcher(samples: list[dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """A fetch of --watch's loop that returns ``samples`` in turn, then raises KeyboardInterrupt (Ctrl-C)."""
    remaining = iter(samples)

    def fetch() -> dict[str, Any]:
        for sample in remaining:
            return sample
        raise KeyboardInterrupt

    return fetch


class FakeTerminal(io.StringIO):
    """A StringIO that says it is a terminal, or not."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def test_watch_clears_the_screen_only_on_a_terminal() -> None:
    """--watch's loop sends the clear-screen sequence before each print on a terminal, and blank lines between prints elsewhere."""
    for terminal in (True, False):
        out = FakeTerminal(terminal)
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C at the third fetch
            _watch(fetcher([sample_stats(), sample_stats(server=dict(sample_stats()["server"], uptime=3726.5))]), 0.01, out)
        text = out.getvalue()
        assert text.count(CLEAR) == (2 if terminal else 0)
        assert text.count("ws://127.0.0.1:8888  up") == 2
        assert ("\n\nws://127.0.0.1:8888  up" in text) is not terminal


# --------------------------------------------------------------------------- against real servers


class Echo:
    """The peer's one command."""

    @staticmethod
    def echo(msg: dict[str, Any]) -> Any:
        return msg.get("x")


@pytest.fixture(scope="module")
def status_server() -> Iterator[syncws.WebSocketServer]:
    """A server on 127.0.0.1 port 0 with a status page and a /wsData RequestHandler whose connected peer answered 3 requests."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), close_timeout=1.0).start()
    service = None
    try:
        server.add_status_page()
        requests = syncws.RequestHandler("wsData", server)
        server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=requests.callback)
        service = syncws.RemoteService(server.url + "/wsData")
        service.register("echo", Echo.echo)
        service.start(timeout=10)
        for x in range(3):
            assert requests.doRequest({"cmd": "echo", "x": x}, timeout=10)["data"] == x
        yield server
    finally:
        if service is not None:
            service.stop()
        server.stop()


def test_stats_prints_the_endpoint_and_handler_rows_of_a_server(status_server: syncws.WebSocketServer, capsys: pytest.CaptureFixture[str]) -> None:
    """`syncws stats URL` exits 0 and prints /wsData's row (1 open, 1 opened, 0 closed, 3 messages each way) and the handler's (3 requests, 3 ok)."""
    assert main(["stats", status_server.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= WIDTH for line in lines)
    assert lines[0].startswith(f"{status_server.url}  up ") and f"conns 1/{status_server.max_connections}" in lines[0]
    figures = status_server.stats()["endpoints"]["/wsData"]
    assert row(lines, "/wsData")[:6] == ["/wsData", "1", "1", "0", "3", "3"]
    assert " ".join(row(lines, "/wsData")[6:]) == f"{human_bytes(figures['bytes_in'])} {human_bytes(figures['bytes_out'])}"
    assert row(lines, "wsData")[:8] == ["wsData", "3", "3", "0", "0", "0", "0", "0"]


def test_watch_reprints_until_ctrl_c_and_exits_130(status_server: syncws.WebSocketServer) -> None:
    """`stats --watch --interval 0.2` (a subprocess) reprints the table with a msg/s column, no clear-screen into a pipe, and exits 130 quietly on SIGINT."""
    watch = Background("stats", status_server.url, "--watch", "--interval", "0.2", stdin=subprocess.DEVNULL)
    try:
        first = watch.wait_line(watch.stdout, f"{status_server.url}  up ")
        assert "msg/s" in watch.wait_line(watch.stdout, "endpoint ")
        watch.wait_line(watch.stdout, f"{status_server.url}  up ")
        assert "\x1b" not in first
        watch.proc.send_signal(signal.SIGINT)
        assert watch.proc.wait(10) == 130
        assert watch.rest(watch.stderr) == ""
    finally:
        watch.stop()


def _free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_server_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """`stats` with nothing listening at the port exits 1 with one line on stderr saying it cannot reach the server, and prints nothing."""
    port = _free_port()
    assert main(["stats", f"ws://127.0.0.1:{port}", "--timeout", "5"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith(f"syncws stats: cannot reach http://127.0.0.1:{port}/status"), captured.err


def test_answers_that_are_not_the_stats_exit_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A path that is a websocket endpoint (426), an HTML page, or JSON of another shape: exit 1, one line saying what came instead."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()
    try:
        server.add_handler("/echo", syncws.BaseWebSocketHandler)
        server.add_http("/page", lambda request: HttpResponse(200, b"<!DOCTYPE html><p>hi</p>", "text/html; charset=utf-8"))
        server.add_http("/other", lambda request: HttpResponse(200, b'{"status": "fine"}', "application/json"))
        expected = {"/echo": "is no status page: it answered 426", "/page": "not JSON", "/other": "JSON that is not the stats"}
        for path, says in expected.items():
            assert main(["stats", server.url + path]) == 1, path
            captured = capsys.readouterr()
            assert captured.out == "" and captured.err.count("\n") == 1, (path, captured)
            assert says in captured.err, (path, captured.err)
    finally:
        server.stop()


def test_stats_over_tls_with_a_token_and_cafile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`stats wss://... --token T --cafile cert.pem` reads a TLS server's status page behind a token; without --cafile: "not trusted", exit 1."""
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), ssl_context=context).start()
    try:
        server.add_status_page(auth=bearer_token(TOKEN))
        assert main(["stats", server.url, "--token", TOKEN, "--cafile", str(cert)]) == 0
        assert capsys.readouterr().out.startswith(server.url + "  up ")
        assert main(["stats", server.url, "--token", TOKEN]) == 1
        assert "not trusted" in capsys.readouterr().err
    finally:
        server.stop()


def test_stats_on_a_unix_socket(capsys: pytest.CaptureFixture[str]) -> None:
    """`stats ws://localhost --unix-socket PATH` reads the status page of a server listening on that Unix socket."""
    with tempfile.TemporaryDirectory(prefix="syncws-") as folder:
        path = str(Path(folder) / "s.sock")
        server = syncws.WebSocketServer(unix_socket=path, registry=syncws.ConnectionRegistry()).start()
        try:
            server.add_status_page()
            assert main(["stats", "ws://localhost", "--unix-socket", path]) == 0
            assert "refused handshakes: none" in capsys.readouterr().out
        finally:
            server.stop()


# --------------------------------------------------------------------------- serve --metrics


@pytest.fixture(scope="module")
def metrics_serve() -> Iterator[tuple[str, str]]:
    """A ``serve --port 0 --metrics --token s3cret`` process: its http:// base URL and its banner."""
    serve = Background("serve", "--port", "0", "--metrics", "--token", TOKEN)
    try:
        banner = serve.wait_line(serve.stdout, "syncws serving")
        match = re.search(r"ws://127\.0\.0\.1:\d+", banner)
        assert match, banner
        yield "http" + match.group(0)[2:], banner
    finally:
        serve.stop()


def _get(url: str, token: str = TOKEN) -> tuple[int, str, bytes]:
    """A plain HTTP GET with the bearer token: status, Content-Type and body (errors too)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def test_serve_metrics_serves_prometheus_text_and_the_status_page(metrics_serve: tuple[str, str]) -> None:
    """serve --metrics names /metrics and /status in its banner, answers /metrics with Prometheus text and /status with HTML, both behind --token."""
    from prometheus_client.parser import text_string_to_metric_families

    base, banner = metrics_serve
    assert f"{base}/metrics" in banner and f"{base}/status" in banner, banner
    status, content_type, body = _get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    names = {family.name for family in text_string_to_metric_families(body.decode("utf-8"))}
    assert {"syncws_connections", "syncws_handshakes_refused", "syncws_worker_threads"} <= names, names
    status, content_type, body = _get(base + "/status")
    assert status == 200 and content_type.startswith("text/html") and body.lstrip().lower().startswith(b"<!doctype html"), (status, content_type)
    assert [_get(base + path, token="")[0] for path in ("/metrics", "/status", "/status?format=json")] == [401, 401, 401]


def test_stats_of_serve_with_the_right_token_and_a_wrong_one(metrics_serve: tuple[str, str]) -> None:
    """`stats` of serve --metrics --token: the right --token prints the table (exit 0); a wrong one exits 1 with one line naming the 401 refusal."""
    base, _ = metrics_serve
    right, wrong = run_all([["stats", base, "--token", TOKEN], ["stats", base + "/status", "--token", "guess"]])
    assert right.returncode == 0, right.stderr
    assert right.stdout.startswith(base.replace("http", "ws", 1) + "  up "), right.stdout
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.count("\n") == 1 and "refused the request: 401" in wrong.stderr and "Traceback" not in wrong.stderr, wrong.stderr


def test_stats_arguments_that_make_no_sense_exit_2() -> None:
    """A URL that is no server's, --interval without --watch, or an interval of 0: one line on stderr and exit 2."""
    argvs = [["stats", "ftp://127.0.0.1:1"], ["stats", "ws://127.0.0.1:1", "--interval", "1"], ["stats", "ws://127.0.0.1:1", "--watch", "--interval", "0"]]
    for argv, result in zip(argvs, run_all(argvs)):
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("syncws stats: "), (argv, result.stderr)


def test_help_of_stats_and_serve_metrics() -> None:
    """`stats --help` shows its URL, --watch, --interval, --token and --cafile; `serve --help` shows --metrics with /metrics and /status."""
    stats, serve = run_all([["stats", "--help"], ["serve", "--help"]])
    assert stats.returncode == 0 and stats.stdout.startswith("usage: syncws stats")
    for option in ("url", "--watch", "--interval", "--token", "--cafile", "--unix-socket"):
        assert option in stats.stdout, option
    assert serve.returncode == 0 and "--metrics" in serve.stdout and "/metrics" in serve.stdout and "/status" in serve.stdout

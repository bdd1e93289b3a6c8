"""What `syncws serve` offers besides its endpoints: a page at GET /, syncws.js as syncws.javascript_client(), and its
--no-compression, --subprotocol and --unix-socket flags."""

from __future__ import annotations

import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import syncws
from syncws.cli import SERVE_ENDPOINTS

from .test_cli import Background, run, start_serve

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def plain_serve() -> Iterator[str]:
    """A ``serve --port 0`` with no peer; its ws:// URL."""
    serve, url = start_serve()
    try:
        yield url
    finally:
        serve.stop()


def _get(url: str) -> tuple[int, str, bytes]:
    """A plain HTTP GET: status, Content-Type and body."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def test_get_slash_is_a_page_naming_every_endpoint(plain_serve: str) -> None:
    """A browser's GET / on serve gets an HTML page (200) that names each of serve's endpoints and /syncws.js."""
    status, content_type, body = _get(plain_serve.replace("ws://", "http://", 1) + "/")
    assert status == 200 and content_type.startswith("text/html")
    page = body.decode("utf-8")
    for path in (*SERVE_ENDPOINTS, "/syncws.js"):
        assert f"<code>{path}</code>" in page, path


def test_syncws_js_is_the_javascript_client_syncws_exports(plain_serve: str) -> None:
    """serve's /syncws.js is syncws.javascript_client(), which syncws exports."""
    assert "javascript_client" in syncws.__all__
    _, content_type, body = _get(plain_serve.replace("ws://", "http://", 1) + "/syncws.js")
    assert content_type.startswith("text/javascript")
    assert body == syncws.javascript_client()


def test_no_compression_refuses_permessage_deflate() -> None:
    """serve --no-compression answers a client's permessage-deflate offer with no extension."""
    serve, url = start_serve("--no-compression")
    try:
        with syncws.connect(url + "/echo", compression="deflate", timeout=5) as conn:
            assert conn.extensions == ""
            conn.send("plain")
            assert conn.recv(timeout=5) == "plain"
    finally:
        serve.stop()


def test_subprotocol_is_accepted_on_the_endpoints() -> None:
    """serve --subprotocol chat.v1 --subprotocol chat.v2 picks the client's offer on /echo and /wsData."""
    serve, url = start_serve("--subprotocol", "chat.v1", "--subprotocol", "chat.v2")
    try:
        for path in ("/echo", "/wsData"):
            with syncws.connect(url + path, subprotocols=["chat.v2"], require_subprotocol=True, timeout=5) as conn:
                assert conn.subprotocol == "chat.v2", path
    finally:
        serve.stop()


@pytest.fixture
def socket_path() -> Iterator[Path]:
    """A path for a Unix socket in a fresh, short directory (sun_path holds about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="syncws-") as folder:
        yield Path(folder) / "serve.sock"


def test_unix_socket_serves_call_with_the_same_flag(socket_path: Path) -> None:
    """serve --unix-socket PATH says so in its banner, and `call ws://localhost/echo --message hi --unix-socket PATH` is echoed."""
    serve = Background("serve", "--unix-socket", str(socket_path), stdin=subprocess.DEVNULL)
    try:
        banner = serve.wait_line(serve.stdout, "syncws serving")
        assert str(socket_path) in banner, banner
        result = run("call", "ws://localhost/echo", "--message", "hi", "--unix-socket", str(socket_path))
        assert result.returncode == 0, result.stderr
        assert result.stdout == "hi\n"
    finally:
        serve.stop()


def test_serve_raises_its_open_file_limit_to_hold_max_connections() -> None:
    """``serve`` started with a soft open-file limit of 1,024 (many systems' default) raises its own to max_connections + 64, within the hard limit."""
    import resource

    wanted = syncws.WebSocketServer.__init__.__kwdefaults__["max_connections"] + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"the hard open-file limit ({hard}) is too low for this test"
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # inherited by the child
    try:
        serve, _ = start_serve()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = Path(f"/proc/{serve.proc.pid}/limits").read_text()
        open_files = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert open_files.split()[3] == str(wanted), open_files
    finally:
        serve.stop()

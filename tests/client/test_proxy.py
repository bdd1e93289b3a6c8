"""connect(proxy=...) and RemoteService(proxy=...) through real proxies on loopback: tinyproxy (HTTP CONNECT) and pproxy (SOCKS5).

Each proxy runs in the foreground as a child process, on a free port of
127.0.0.1, and logs every tunnel it opens: the tests read that log to know
that a connection really went through the proxy. Skipped (failing under CI)
when tinyproxy (Debian's package) or pproxy and python-socks (the test
extra) are missing.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Optional

import pytest

import syncws
from syncws.client.proxy import display_proxy, proxy_options

pytestmark = pytest.mark.timeout(60)

needs_tinyproxy = pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="needs tinyproxy (Debian's tinyproxy package) on PATH")
needs_socks = pytest.mark.skipif(
    importlib.util.find_spec("pproxy") is None or importlib.util.find_spec("python_socks") is None,
    reason="needs pproxy and python-socks (pip install -e '.[test]')",
)


def free_port() -> int:
    """A port free on 127.0.0.1 now (the proxies cannot be given port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ProxyProcess:
    """A proxy server in the foreground; a reader thread keeps its output lines."""

    def __init__(self, argv: list[str], ready: str, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.seen: list[str] = []  # every line so far, for seen_since()
        # Synchronize access to seen between the reader thread and the test.
        self._seen_lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name="test-proxy-output", daemon=True)
        self.reader.start()
        self.wait_line(ready, timeout=15)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends at EOF, when the process exits
            with self._seen_lock:
                self.seen.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, text: str, timeout: float = 10.0) -> str:
        """The next line that contains ``text``; fails at EOF or after ``timeout``."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if text in line:
                return line
        raise AssertionError(f"the proxy printed no line with {text!r} (exit code {self.proc.poll()}): {''.join(self.seen[-10:])}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.reader.join(5)


def tinyproxy(folder: str, auth: Optional[tuple[str, str]] = None) -> ProxyProcess:
    """tinyproxy on a free port of 127.0.0.1 (with Basic credentials when ``auth``), logging each request."""
    port = free_port()
    config = os.path.join(folder, f"tinyproxy-{port}.conf")
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "MaxClients 50", "Allow 127.0.0.1", "LogLevel Info"]
    if auth is not None:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    return ProxyProcess(["tinyproxy", "-d", "-c", config], "Accepting connections", port)


@pytest.fixture(scope="module")
def folder() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="syncws-proxy-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def http_proxy(folder: str) -> Iterator[ProxyProcess]:
    """tinyproxy without credentials."""
    proxy = tinyproxy(folder)
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def http_proxy_with_auth(folder: str) -> Iterator[ProxyProcess]:
    """tinyproxy that wants alice's Basic credentials."""
    proxy = tinyproxy(folder, ("alice", "s3cret"))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def socks_proxy() -> Iterator[ProxyProcess]:
    """pproxy serving SOCKS5, logging each tunnel (-v)."""
    port = free_port()
    proxy = ProxyProcess([sys.executable, "-u", "-m", "pproxy", "-l", f"socks5://127.0.0.1:{port}", "-v"], "Serving on", port)
    yield proxy
    proxy.stop()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variables from the environment the tests run in."""
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def echo_once(url: str, **options: object) -> None:
    """Connect with ``options``, check that a message comes back, close."""
    with syncws.connect(url, timeout=10, **options) as conn:  # type: ignore[arg-type]
        conn.send("through")
        assert conn.recv(timeout=5) == "through"


@needs_tinyproxy
def test_http_connect_proxy_carries_the_connection(http_proxy: ProxyProcess, server: syncws.WebSocketServer, clean_env: pytest.MonkeyPatch) -> None:
    """proxy='http://127.0.0.1:port' tunnels the connection with CONNECT: tinyproxy logs it, and messages go both ways."""
    echo_once(server.url + "/echo", proxy=f"http://127.0.0.1:{http_proxy.port}")
    http_proxy.wait_line(f"CONNECT 127.0.0.1:{server.port}")


@needs_tinyproxy
def test_http_proxy_with_credentials(http_proxy_with_auth: ProxyProcess, server: syncws.WebSocketServer, clean_env: pytest.MonkeyPatch) -> None:
    """The user and password of the proxy URL go as Basic credentials, percent-decoded: tinyproxy lets the tunnel through."""
    echo_once(server.url + "/echo", proxy=f"http://alice:s3%63ret@127.0.0.1:{http_proxy_with_auth.port}")
    http_proxy_with_auth.wait_line(f"CONNECT 127.0.0.1:{server.port}")


@needs_tinyproxy
def test_proxy_that_refuses_gives_handshake_error_with_its_status(
    http_proxy_with_auth: ProxyProcess, server: syncws.WebSocketServer, clean_env: pytest.MonkeyPatch
) -> None:
    """Wrong or missing credentials: HandshakeError with the proxy's status, naming it without the password; permanent: RemoteService gives up."""
    for proxy in (f"http://alice:wrong@127.0.0.1:{http_proxy_with_auth.port}", f"http://127.0.0.1:{http_proxy_with_auth.port}"):
        with pytest.raises(syncws.HandshakeError) as refused:
            syncws.connect(server.url + "/echo", timeout=10, proxy=proxy)
        # tinyproxy answers 401 where RFC 9110 has 407 (Proxy Authentication Required): either is the proxy's word.
        assert refused.value.status in (401, 407) and refused.value.permanent
        assert f"127.0.0.1:{http_proxy_with_auth.port}" in str(refused.value) and "wrong" not in str(refused.value)
    service = syncws.RemoteService(server.url + "/echo", proxy=f"http://alice:wrong@127.0.0.1:{http_proxy_with_auth.port}")
    started = time.monotonic()
    with pytest.raises(syncws.HandshakeError) as gave_up:
        service.start(timeout=20)
    assert gave_up.value.status in (401, 407) and time.monotonic() - started < 10


@needs_tinyproxy
def test_environment_proxy_is_used_by_default_and_false_bypasses_it(
    http_proxy: ProxyProcess, server: syncws.WebSocketServer, clean_env: pytest.MonkeyPatch
) -> None:
    """With http_proxy set, proxy=None goes through it; proxy=False connects directly although the variable points to a dead proxy."""
    clean_env.setenv("http_proxy", f"http://127.0.0.1:{http_proxy.port}")
    echo_once(server.url + "/echo")
    http_proxy.wait_line(f"CONNECT 127.0.0.1:{server.port}")
    clean_env.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(syncws.NotConnected):
        syncws.connect(server.url + "/echo", timeout=10)
    echo_once(server.url + "/echo", proxy=False)


@needs_tinyproxy
def test_explicit_proxy_is_not_bypassed_by_no_proxy(http_proxy: ProxyProcess, server: syncws.WebSocketServer, clean_env: pytest.MonkeyPatch) -> None:
    """no_proxy=127.0.0.1 in the environment does not bypass a proxy given to connect(): the tunnel is logged."""
    clean_env.setenv("no_proxy", "127.0.0.1,localhost")
    echo_once(server.url + "/echo", proxy=f"http://127.0.0.1:{http_proxy.port}")
    http_proxy.wait_line(f"CONNECT 127.0.0.1:{server.port}")


@needs_tinyproxy
def test_remote_service_answers_through_an_http_proxy(http_proxy: ProxyProcess, clean_env: pytest.MonkeyPatch) -> None:
    """RemoteService(proxy=...) connects through the proxy and answers a RequestHandler's request."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()
    requests = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=requests.callback)
    service = syncws.RemoteService(server.url + "/wsData", proxy=f"http://127.0.0.1:{http_proxy.port}")
    service.register("add", lambda msg: msg["a"] + msg["b"])
    try:
        service.start(timeout=10)
        http_proxy.wait_line(f"CONNECT 127.0.0.1:{server.port}")
        assert requests.doRequest({"cmd": "add", "a": 2, "b": 3}, timeout=10)["data"] == 5
    finally:
        service.stop()
        server.stop()


@needs_socks
def test_socks5_proxy_carries_the_connection(socks_proxy: ProxyProcess, server: syncws.WebSocketServer, clean_env: pytest.MonkeyPatch) -> None:
    """proxy='socks5://127.0.0.1:port' tunnels through pproxy, which logs the tunnel to the server's port."""
    echo_once(server.url + "/echo", proxy=f"socks5://127.0.0.1:{socks_proxy.port}")
    socks_proxy.wait_line(f"-> 127.0.0.1:{server.port}")
    echo_once(server.url + "/echo", proxy=f"socks5h://127.0.0.1:{socks_proxy.port}")
    socks_proxy.wait_line(f"-> 127.0.0.1:{server.port}")


@needs_socks
def test_remote_service_answers_through_a_socks5_proxy(socks_proxy: ProxyProcess, clean_env: pytest.MonkeyPatch) -> None:
    """RemoteService(proxy='socks5://...') answers a request through the SOCKS proxy."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()
    requests = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=requests.callback)
    service = syncws.RemoteService(server.url + "/wsData", proxy=f"socks5://127.0.0.1:{socks_proxy.port}")
    service.register("add", lambda msg: msg["a"] + msg["b"])
    try:
        service.start(timeout=10)
        socks_proxy.wait_line(f"-> 127.0.0.1:{server.port}")
        assert requests.doRequest({"cmd": "add", "a": 20, "b": 22}, timeout=10)["data"] == 42
    finally:
        service.stop()
        server.stop()


@needs_socks
def test_unreachable_proxy_raises_not_connected_naming_it(server: syncws.WebSocketServer, clean_env: pytest.MonkeyPatch) -> None:
    """A SOCKS or HTTP proxy that nothing listens on: NotConnected that names the proxy."""
    dead = free_port()
    for scheme in ("socks5", "http"):
        with pytest.raises(syncws.NotConnected) as failed:
            syncws.connect(server.url + "/echo", timeout=10, proxy=f"{scheme}://127.0.0.1:{dead}")
        assert f"127.0.0.1:{dead}" in str(failed.value)


def test_bad_proxy_urls_are_refused_before_connecting(server: syncws.WebSocketServer) -> None:
    """An unsupported scheme, a URL without a host or with a bad port raises ValueError, from connect() and from RemoteService()."""
    for bad in ("https://127.0.0.1:3128", "ftp://127.0.0.1", "http://", "http://127.0.0.1:notaport"):
        with pytest.raises(ValueError):
            syncws.connect(server.url + "/echo", proxy=bad)
        with pytest.raises(ValueError):
            syncws.RemoteService(server.url + "/echo", proxy=bad)
    with pytest.raises(ValueError):
        syncws.connect("ws://localhost/echo", unix_socket="/nonexistent.sock", proxy="http://127.0.0.1:3128")


def test_proxy_options_and_display() -> None:
    """proxy_options maps a URL to websocket-client's options (default ports, decoded credentials); display_proxy hides the password."""
    options = proxy_options("http://al%40ice:p%3Ass@proxy.example:3128", 5.0)
    assert (options["http_proxy_host"], options["http_proxy_port"], options["proxy_type"]) == ("proxy.example", 3128, "http")
    assert options["http_proxy_auth"] == ("al@ice", "p:ss")
    assert proxy_options("http://proxy.example", None)["http_proxy_port"] == 80
    assert proxy_options(None, None) == {} and proxy_options(False, None)["http_no_proxy"] == ["*"]
    assert display_proxy("http://alice:s3cret@127.0.0.1:3128") == "http://alice:***@127.0.0.1:3128"
    assert display_proxy("socks5://127.0.0.1:1080") == "socks5://127.0.0.1:1080"


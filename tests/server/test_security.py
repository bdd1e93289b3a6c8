"""Who may connect (auth, origins), TLS, and the connection limit."""

from __future__ import annotations

import gc
import logging
import os
import queue
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from websockets.sync.client import connect as websockets_connect

import syncws
from syncws.engine.tls import server_context

from ..helpers import EchoHandler, RawClient, make_server, stop_with_a_handshake_in_progress, wait_for

pytestmark = pytest.mark.timeout(60)


def _status(server: syncws.WebSocketServer, path: str = "/echo", **options: object) -> int:
    """Connect with syncws.connect; return 101 on success or the HTTP error status."""
    try:
        syncws.connect(server.url + path, **options).close()  # type: ignore[arg-type]
    except syncws.HandshakeError as exc:
        return exc.status
    return 101


def test_bearer_token_header_and_query() -> None:
    """bearer_token accepts the token in the Authorization header or the query, and refuses others with 401."""
    srv = make_server(auth=syncws.bearer_token("s3cret"))
    assert _status(srv, header=["Authorization: Bearer s3cret"]) == 101
    assert _status(srv, "/echo?token=s3cret") == 101
    assert _status(srv, header=["Authorization: Bearer wrong"]) == 401
    assert _status(srv) == 401
    srv.stop()


def test_remote_service_sends_token() -> None:
    """RemoteService(token=...) passes a bearer_token check."""
    srv = make_server(auth=syncws.bearer_token("abc"))
    handler = syncws.RequestHandler("wsData", srv)
    srv.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    service = syncws.RemoteService(srv.url + "/wsData", token="abc")
    service.register("hi", lambda msg: "hello")
    service.start(timeout=10)
    assert handler.doRequest({"cmd": "hi"}, timeout=10)["data"] == "hello"
    service.stop()
    srv.stop()


def test_cookie_value() -> None:
    """cookie_value accepts the right cookie and refuses a wrong or missing one."""
    srv = make_server(auth=syncws.cookie_value("login", "yes-123"))
    assert _status(srv, cookie="other=1; login=yes-123") == 101
    assert _status(srv, cookie="login=no") == 401
    assert _status(srv) == 401
    srv.stop()


def test_auth_status_and_exception(caplog: pytest.LogCaptureFixture) -> None:
    """An auth check may refuse with 403; one that raises refuses with 500 and is logged."""

    def check(request: syncws.Request) -> object:
        if request.path == "/boom":
            raise RuntimeError("auth backend down")
        return 403

    srv = make_server()
    srv.add_handler("/forbidden", EchoHandler, auth=check)  # type: ignore[arg-type]
    srv.add_handler("/boom", EchoHandler, auth=check)  # type: ignore[arg-type]
    assert _status(srv, "/forbidden") == 403
    with caplog.at_level(logging.ERROR, logger="syncws"):
        assert _status(srv, "/boom") == 500
    assert "auth check failed" in caplog.text
    assert _status(srv, "/echo") == 101
    srv.stop()


def test_endpoint_auth_wins_over_server_auth() -> None:
    """An endpoint's own auth replaces the server's for that path."""
    srv = make_server(auth=lambda request: False)
    srv.add_handler("/open", EchoHandler, auth=lambda request: True)
    assert _status(srv, "/echo") == 401
    assert _status(srv, "/open") == 101
    srv.stop()


def test_origins_allow_list() -> None:
    """Origins not in the allow-list get 403; an allowed one and a request without Origin are accepted."""
    srv = make_server(origins=["https://lab.example"])
    assert _status(srv, origin="https://evil.example") == 403
    assert _status(srv, origin="https://lab.example") == 101
    raw = RawClient(srv.port)
    assert raw.handshake().startswith(b"HTTP/1.1 101")  # no Origin header: not a browser
    raw.close()
    srv.stop()


def test_connection_limit_gives_503() -> None:
    """Beyond max_connections, a handshake gets HTTP 503; a slot freed is usable again."""
    srv = make_server(max_connections=2)
    first = syncws.connect(srv.url + "/echo")
    second = syncws.connect(srv.url + "/echo")
    assert _status(srv) == 503
    first.close()
    # The server forgets the connection right after the closing handshake.
    for _ in range(100):
        if _status(srv) == 101:
            break
    else:
        pytest.fail("the freed slot was never usable")
    second.close()
    srv.stop()


def test_simultaneous_handshakes_never_exceed_the_connection_limit() -> None:
    """Twenty handshakes held together past routing and initialize(), racing for three places: three get 101, seventeen 503."""
    together = threading.Barrier(20, timeout=20)

    class HeldTogether(EchoHandler):
        def initialize(self, **kwargs: object) -> None:
            together.wait()  # every handshake has passed the first check before any is admitted

    srv = make_server(max_connections=3)
    srv.add_handler("/held", HeldTogether)
    results: queue.Queue = queue.Queue()

    def racer() -> None:
        try:
            results.put(syncws.connect(srv.url + "/held", timeout=30))
        except syncws.HandshakeError as exc:
            results.put(exc.status)
        except Exception as exc:  # reported through the queue
            results.put(exc)

    threads = [threading.Thread(target=racer) for _ in range(20)]
    for thread in threads:
        thread.start()
    outcomes = [results.get(timeout=40) for _ in threads]
    for thread in threads:
        thread.join(10)
    opened = [o for o in outcomes if isinstance(o, syncws.ClientConnection)]
    try:
        assert sorted(o for o in outcomes if not isinstance(o, syncws.ClientConnection)) == [503] * 17, outcomes
        assert len(opened) == 3
        for conn in opened:
            conn.send("still here")
            assert conn.recv(timeout=5) == "still here"
    finally:
        for conn in opened:
            conn.close()
        srv.stop()


def test_idle_sockets_beyond_max_handshakes_are_closed_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """With max_handshakes=2 taken by two silent sockets, a third socket is closed unanswered; once they go, handshakes work again."""
    srv = make_server(max_handshakes=2, handshake_timeout=30)
    silent = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
    try:
        # Accepted in order: the two silent sockets are counted before the third is looked at.
        third = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        assert third.recv(1024) == b""  # closed by the server, with no answer
        third.close()
        assert any("handshakes in progress" in r.getMessage() for r in caplog.records)
    finally:
        for sock in silent:
            sock.close()
    # The silent sockets' threads see the close and end their handshake.
    with srv._lock:
        threads = list(srv._conn_threads)
    for thread in threads:
        thread.join(10)
    assert _status(srv) == 101
    srv.stop()


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[syncws.WebSocketServer]:
    """A server with TLS on, using the test certificate (and sending no session tickets, as syncws's contexts do)."""
    srv = make_server(ssl_context=server_context(str(certificate[0]), str(certificate[1])), handshake_timeout=2.0)
    yield srv
    srv.stop()


def test_tls_echo_with_verified_certificate(tls_server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """Over wss://, syncws.connect (verifying the certificate) and the websockets client both get echoes."""
    assert tls_server.url.startswith("wss://")
    conn = syncws.connect(tls_server.url + "/echo", sslopt={"ca_certs": str(certificate[0])})
    conn.send(b"\x01" * 200_000)
    assert conn.recv() == b"\x01" * 200_000
    conn.close()
    client_context = ssl.create_default_context(cafile=str(certificate[0]))
    with websockets_connect(tls_server.url + "/echo", ssl=client_context, open_timeout=5) as ws:
        ws.send("secure")
        assert ws.recv(timeout=5) == "secure"


def _session_tickets(server_ssl: ssl.SSLContext, cafile: Path) -> bool:
    """Whether a TLS 1.3 client of a wss:// echo server with ``server_ssl`` was given a session ticket."""
    server = make_server(ssl_context=server_ssl)
    client_ssl = ssl.create_default_context(cafile=str(cafile))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, client_ssl.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(
                f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            answer = b""
            while len(answer) < 12 and (chunk := tls.recv(12 - len(answer))):
                answer += chunk
            assert answer == b"HTTP/1.1 101"  # tickets come before the answer: by now the client has them, if any
            assert tls.version() == "TLSv1.3"
            return tls.session is not None and tls.session.has_ticket
    finally:
        server.stop()


def test_server_context_sends_no_session_tickets(certificate: tuple[Path, Path]) -> None:
    """server_context() sends no TLS 1.3 session ticket, which a default server context sends."""
    default = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    default.load_cert_chain(*certificate)
    assert _session_tickets(default, certificate[0])  # the control: what the setting turns off
    assert not _session_tickets(server_context(str(certificate[0]), str(certificate[1])), certificate[0])


def test_plaintext_client_on_tls_port_fails_cleanly(
    tls_server: syncws.WebSocketServer, certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A plaintext client on the TLS port is dropped without a traceback, and the server keeps serving TLS."""
    with pytest.raises((websocket.WebSocketException, OSError)):
        websocket.create_connection(tls_server.url.replace("wss://", "ws://") + "/echo", timeout=5)
    conn = syncws.connect(tls_server.url + "/echo", sslopt={"ca_certs": str(certificate[0])})
    conn.send("still up")
    assert conn.recv() == "still up"
    conn.close()
    assert not any(r.exc_info for r in caplog.records)


def test_remote_service_over_tls(tls_server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """RemoteService with sslopt answers requests over wss://."""
    handler = syncws.RequestHandler("wsData", tls_server)
    tls_server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    service = syncws.RemoteService(tls_server.url + "/wsData", sslopt={"ca_certs": str(certificate[0])})
    service.register("blob", lambda msg: bytes(range(256)) * 4000)
    service.start(timeout=10)
    assert handler.doRequest({"cmd": "blob"}, timeout=10)["data"] == bytes(range(256)) * 4000
    service.stop()


def test_stop_cuts_short_a_tls_handshake_in_progress(certificate: tuple[Path, Path]) -> None:
    """stop() ends a connection still in its TLS handshake at once: the client sees its socket closed and no syncws thread is left."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    srv = make_server(ssl_context=context, handshake_timeout=30, close_timeout=5)
    silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    # Accepted in order: once this one is through, the silent socket is in its TLS handshake.
    syncws.connect(srv.url + "/echo", sslopt={"ca_certs": str(certificate[0])}).close()
    stop_with_a_handshake_in_progress(srv, silent)


def test_failed_tls_handshakes_close_their_sockets(tls_server: syncws.WebSocketServer) -> None:
    """A plaintext client and a refused path on the TLS port: the server closes each TLS socket itself (no unclosed-socket warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises((websocket.WebSocketException, OSError)):
            websocket.create_connection(tls_server.url.replace("wss://", "ws://") + "/echo", timeout=5)
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(tls_server.url + "/nowhere", timeout=5, sslopt={"cert_reqs": ssl.CERT_NONE})
        with tls_server._lock:
            threads = list(tls_server._conn_threads)
        for thread in threads:
            thread.join(10)
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning) and "SSLSocket" in str(w.message)]
    assert unclosed == []


def test_silent_tls_client_is_dropped(tls_server: syncws.WebSocketServer) -> None:
    """A client that opens TCP on the TLS port and says nothing is dropped after handshake_timeout."""
    sock = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
    assert sock.recv(1) == b""
    sock.close()


def test_origins_do_not_refuse_syncws_clients() -> None:
    """With an Origin allow-list, syncws.connect and RemoteService (no Origin sent) still connect."""
    srv = make_server(origins=["https://lab.example"])
    assert _status(srv) == 101
    srv.stop()


def test_tls_concurrent_requests_and_sends(tls_server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """Over TLS, many threads making requests while the peer's workers reply at once lose nothing (SSL calls never overlap)."""
    handler = syncws.RequestHandler("wsData", tls_server)
    tls_server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    service = syncws.RemoteService(tls_server.url + "/wsData", sslopt={"ca_certs": str(certificate[0])}, part_size=50_000)
    service.register("blob", lambda msg: bytes([msg["n"] % 256]) * (1000 + msg["n"] * 997))
    service.start(timeout=10)
    failures: queue.Queue[BaseException] = queue.Queue()

    def caller(base: int) -> None:
        for n in range(base, base + 25):
            try:
                data = handler.doRequest({"cmd": "blob", "n": n}, timeout=20)["data"]
                assert data == bytes([n % 256]) * (1000 + n * 997)
            except BaseException as exc:  # reported to the test thread
                failures.put(exc)

    threads = [threading.Thread(target=caller, args=(100 * i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    service.stop()
    assert failures.empty(), failures.get()
    assert not any(thread.is_alive() for thread in threads)


def test_tls_close_waits_for_an_ssl_call_in_flight(tls_server: syncws.WebSocketServer, certificate: tuple[Path, Path]) -> None:
    """A client's TLS socket is not closed under another thread's SSL call, which would go on with a reused descriptor."""
    conn = syncws.connect(tls_server.url + "/echo", sslopt={"ca_certs": str(certificate[0])})
    sock = conn._io.sock
    original_send = sock.send
    inside, go = threading.Event(), threading.Event()
    descriptors: list[int] = []

    def held_send(data: bytes) -> int:  # the SSL call, held half-way by the test
        inside.set()
        go.wait(10)
        descriptors.append(sock.fileno())  # what the call goes on with: -1 had the socket been closed meanwhile
        sent: int = original_send(data)
        return sent

    sock.send = held_send  # type: ignore[method-assign]
    sender = threading.Thread(target=conn.send, args=("held",), name="sender")
    sender.start()
    try:
        assert inside.wait(10)
        closer = threading.Thread(target=conn._io.close, name="closer")
        closer.start()
        closer.join(0.5)  # time for a close that did not wait to happen (it must not)
    finally:
        go.set()
    closer.join(10)
    sender.join(10)
    assert not closer.is_alive() and not sender.is_alive()
    assert descriptors and descriptors[0] != -1
    assert sock.fileno() == -1  # closed once the call was over
    conn.abort()


def test_failed_tls_handshakes_release_their_descriptors_while_log_records_are_kept(tls_server: syncws.WebSocketServer) -> None:
    """A log handler that keeps every record (and so each failure's exception) does not keep failed TLS sockets' descriptors open."""
    kept: list[logging.LogRecord] = []

    class Keeper(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    keeper = Keeper(logging.DEBUG)
    server_logger = logging.getLogger("syncws.server.server")
    level = server_logger.level
    server_logger.addHandler(keeper)
    server_logger.setLevel(logging.DEBUG)
    gc.disable()  # only an explicit close may free a descriptor here, not the collector
    try:
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", tls_server.port), timeout=5) as plain:
                plain.sendall(b"GET /echo HTTP/1.1\r\n\r\n")  # not a TLS ClientHello: the handshake fails
                assert plain.recv(1024) is not None
        with tls_server._lock:
            threads = list(tls_server._conn_threads)
        for thread in threads:
            thread.join(10)
        assert sum("handshake" in r.getMessage() for r in kept) >= 10
        assert len(os.listdir("/proc/self/fd")) <= before + 2
    finally:
        gc.enable()
        server_logger.removeHandler(keeper)
        server_logger.setLevel(level)


def test_tls_on_the_thread_engine_past_file_descriptor_1023(certificate: tuple[Path, Path]) -> None:
    """With over 1,100 files open, a TLS connection on the thread engine (its fd past select()'s 1023) still echoes a 2 MB message."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2048 if hard == resource.RLIM_INFINITY else min(hard, 2048)
    assert wanted >= 1300, f"the open-file limit ({hard}) is too low for this test"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    srv = make_server(ssl_context=context, engine="threads")
    try:
        conn = syncws.connect(srv.url + "/echo", sslopt={"ca_certs": str(certificate[0])}, timeout=10)
        assert wait_for(lambda: len(srv.registry.connections("echo")) == 1)
        assert srv.registry.connections("echo")[0].connection.sock.fileno() > 1023
        conn.send(b"\x02" * 2_000_000)
        assert conn.recv(timeout=10) == b"\x02" * 2_000_000
        conn.close()
    finally:
        srv.stop()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

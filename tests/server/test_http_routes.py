"""Plain HTTP beside the endpoints: WebSocketServer.add_http routes and static resources, over raw sockets."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest
import websocket

import syncws
from syncws.handlers.registry import ConnectionRegistry
from syncws.protocol.handshake import Request
from syncws.protocol.http import HttpResponse, form_fields, request_cookies, set_cookie
from syncws.server.endpoints import EchoHandler

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server() -> Iterator[syncws.WebSocketServer]:
    """A server with /echo, a GET route /hello, a POST route /form (max_body 100), a failing /boom and an auth'd /secret."""

    def hello(request: Request) -> HttpResponse:
        return HttpResponse(200, f"hello {request.query.get('name', ['?'])[0]}".encode(), "text/plain")

    def form(request: Request) -> HttpResponse:
        fields = form_fields(request)
        return HttpResponse(200, repr(sorted(fields.items())).encode(), "text/plain", headers=[set_cookie("seen", fields.get("a", ""))])

    def boom(request: Request) -> HttpResponse:
        raise RuntimeError("the page broke")

    srv = syncws.WebSocketServer(registry=ConnectionRegistry(), handshake_timeout=5)
    srv.add_handler("/echo", EchoHandler, name="echo")
    srv.add_http("/hello", hello)
    srv.add_http("/echo", lambda request: HttpResponse(200, b"a page at an endpoint's path", "text/plain"))
    srv.add_http("/form", form, methods=("POST",), max_body=100)
    srv.add_http("/boom", boom)
    srv.add_http("/secret", hello, auth=lambda request: request.headers.get("X-Key") == "k")
    srv.add_static("/page.html", b"<p>static</p>")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def exchange(server: syncws.WebSocketServer, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new socket and read the response to its end: status, headers (lower-case names), body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_a_get_route_answers_with_its_function(server: syncws.WebSocketServer) -> None:
    """GET /hello?name=x runs the route's function with the request's query and sends its response."""
    status, headers, body = exchange(server, b"GET /hello?name=ada HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body, headers["content-type"]) == (200, b"hello ada", "text/plain")


def test_head_gets_the_headers_without_the_body(server: syncws.WebSocketServer) -> None:
    """HEAD of a GET route answers its Content-Length and no body."""
    status, headers, body = exchange(server, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["content-length"], body) == (200, "7", b"")


def test_a_post_body_reaches_the_function_and_cookies_go_back(server: syncws.WebSocketServer) -> None:
    """A form POST's body, also when it comes after the head in pieces, is read by its Content-Length."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 10\r\n\r\na=1&")
        sock.sendall(b"b=two2")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"[('a', '1'), ('b', 'two2')]")
    assert b"Set-Cookie: seen=1; HttpOnly; Path=/; SameSite=Lax\r\n" in data


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /form HTTP/1.1\r\nHost: x\r\n\r\n", 411),
        (b"POST /form HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        (b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n", 413),
        (b"POST /form HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /form HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"PUT /hello HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /page.html HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /secret HTTP/1.1\r\nHost: x\r\n\r\n", 401),
    ],
    ids=["no-length", "chunked", "too-big", "bad-length", "get-on-post-route", "post-on-get-route", "put", "post-on-static", "auth"],
)
def test_a_request_the_route_cannot_take_gets_its_status(server: syncws.WebSocketServer, raw: bytes, status: int) -> None:
    """A missing or chunked length (411), a body over max_body (413), a method the path does not answer (405), a refused auth (401)."""
    assert exchange(server, raw)[0] == status


def test_a_route_that_raises_answers_500_and_is_logged(server: syncws.WebSocketServer, caplog: pytest.LogCaptureFixture) -> None:
    """A function that raises is answered 500 with its traceback in the log, and the server serves on."""
    with caplog.at_level(logging.ERROR, logger="syncws.server.plain_http"):
        assert exchange(server, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 500
    assert any("the page broke" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert exchange(server, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


def test_a_static_resource_and_an_auth_route_with_its_key(server: syncws.WebSocketServer) -> None:
    """add_static answers GET; an auth'd route lets in the request its check accepts."""
    assert exchange(server, b"GET /page.html HTTP/1.1\r\nHost: x\r\n\r\n")[2] == b"<p>static</p>"
    assert exchange(server, b"GET /secret HTTP/1.1\r\nHost: x\r\nX-Key: k\r\n\r\n")[0] == 200


def test_an_upgrade_at_a_routes_path_still_reaches_the_endpoint(server: syncws.WebSocketServer) -> None:
    """/echo answers plain GETs with its page and websocket upgrades with the echo endpoint."""
    assert exchange(server, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")[2] == b"a page at an endpoint's path"
    ws = websocket.create_connection(f"{server.url}/echo", timeout=10)
    try:
        ws.send("hi")
        assert ws.recv() == "hi"
    finally:
        ws.close()


def test_add_http_refuses_a_taken_path_and_bad_options(server: syncws.WebSocketServer) -> None:
    """A path served over HTTP already, a method outside GET/HEAD/POST, and a negative max_body raise ValueError."""
    with pytest.raises(ValueError):
        server.add_http("/hello", lambda request: HttpResponse())
    with pytest.raises(ValueError):
        server.add_http("/x", lambda request: HttpResponse(), methods=("DELETE",))
    with pytest.raises(ValueError):
        server.add_http("/y", lambda request: HttpResponse(), max_body=-1)


def test_request_cookies_reads_quoted_values() -> None:
    """A cookie sent in double quotes, as a session stores a value with | in it, is read without them."""
    request = Request("/", {}, syncws.protocol.handshake.Headers([("Cookie", 'login="2|1:0|x"; _xsrf=abc')]), ("", 0))
    assert request_cookies(request) == {"login": "2|1:0|x", "_xsrf": "abc"}

"""The opening handshake (RFC 6455 section 4) on plain bytes, without sockets."""

from __future__ import annotations

import base64
import json

import pytest

from syncws.exceptions import HandshakeError
from syncws.protocol.handshake import (
    accept_key,
    accept_response,
    check_upgrade,
    content_response,
    error_response,
    is_upgrade,
    offered_subprotocols,
    parse_http_request,
    parse_request,
)

pytestmark = pytest.mark.timeout(10)

KEY = base64.b64encode(b"0123456789abcdef").decode()
ADDRESS = ("127.0.0.1", 5000)


def head(target: str = "/echo", extra: str = "", request_line: str = "") -> bytes:
    """A valid upgrade request head, with ``extra`` header lines."""
    line = request_line or f"GET {target} HTTP/1.1"
    return (
        f"{line}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13{extra}"
    ).encode()


def test_rfc_6455_sample_accept_key() -> None:
    """accept_key gives the Sec-WebSocket-Accept of RFC 6455's own example."""
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_request_is_parsed() -> None:
    """A valid upgrade gives its path, query, headers (any case) and address."""
    request = parse_request(head("/wsData?token=a&token=b&x=1"), ADDRESS)
    assert request.path == "/wsData"
    assert request.query == {"token": ["a", "b"], "x": ["1"]}
    assert request.headers["upgrade"] == "websocket" and request.headers.get("SEC-WEBSOCKET-VERSION") == "13"
    assert request.remote_address == ADDRESS


def test_accept_response_completes_the_handshake() -> None:
    """The 101 response carries the accept key of the request's key."""
    response = accept_response(parse_request(head(), ADDRESS)).decode()
    assert response.startswith("HTTP/1.1 101 Switching Protocols\r\n") and response.endswith("\r\n\r\n")
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}\r\n" in response


@pytest.mark.parametrize(
    ("bad_head", "status"),
    [
        (b"garbage", 400),
        (head(request_line="GET /echo HTTP/1.0"), 400),
        (head(request_line="POST /echo HTTP/1.1"), 405),
        (head(target="/x#fragment"), 400),
        (head(target="http://host/x"), 400),
        (head(extra="\r\nbad header line"), 400),
        (head(extra="\r\n Leading: space"), 400),
    ],
)
def test_malformed_requests_get_their_status(bad_head: bytes, status: int) -> None:
    """A malformed request line, method, target or header line is refused with its HTTP status."""
    with pytest.raises(HandshakeError) as refused:
        parse_http_request(bad_head, ADDRESS)
    assert refused.value.status == status


def test_too_many_headers_get_431() -> None:
    """More header fields than max_headers are refused with 431."""
    many = "".join(f"\r\nX-{i}: {i}" for i in range(10))
    with pytest.raises(HandshakeError) as refused:
        parse_http_request(head(extra=many), ADDRESS, max_headers=8)
    assert refused.value.status == 431


@pytest.mark.parametrize(
    ("replace", "status"),
    [
        (("Upgrade: websocket", "Upgrade: h2c"), 426),
        (("Connection: keep-alive, Upgrade", "Connection: keep-alive"), 400),
        (("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426),
        ((f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Key: c2hvcnQ="), 400),
        ((f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Key: not base64!!"), 400),
    ],
)
def test_invalid_upgrades_get_their_status(replace: tuple[str, str], status: int) -> None:
    """A request without a valid Upgrade, Connection, version or 16-byte key is refused as RFC 6455 4.2.1 says."""
    request = parse_http_request(head().replace(replace[0].encode(), replace[1].encode()), ADDRESS)
    with pytest.raises(HandshakeError) as refused:
        check_upgrade(request.headers)
    assert refused.value.status == status


def test_plain_get_is_not_an_upgrade() -> None:
    """A GET without 'Upgrade: websocket' is told apart from an upgrade (for static resources)."""
    plain = parse_http_request(b"GET /syncws.js HTTP/1.1\r\nHost: x", ADDRESS)
    assert not is_upgrade(plain) and is_upgrade(parse_http_request(head(), ADDRESS))


def test_error_response_has_a_json_body_and_its_length() -> None:
    """An error response carries its status, a JSON body with the reason, its length, and the version for 426."""
    response = error_response(426, "upgrade required")
    header, _, body = response.partition(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13" in header
    assert json.loads(body) == {"status": 426, "error": "upgrade required"}
    assert f"Content-Length: {len(body)}".encode() in header


def test_content_response_carries_the_body() -> None:
    """A static resource's response has status 200, its type, its length and the body."""
    response = content_response(b"console.log(1)", "text/javascript")
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\nconsole.log(1)")
    assert b"Content-Type: text/javascript\r\n" in response and b"Content-Length: 14\r\n" in response


def test_offered_subprotocols_keep_the_client_order_across_repeated_headers() -> None:
    """Sec-WebSocket-Protocol lists, repeated or not, give the client's names in order, without blanks."""
    request = parse_request(head(extra="\r\nSec-WebSocket-Protocol: v2.json , v1.json,\r\nsec-websocket-protocol: chat"), ADDRESS)
    assert offered_subprotocols(request.headers) == ["v2.json", "v1.json", "chat"]
    assert offered_subprotocols(parse_request(head(), ADDRESS).headers) == []


def test_accept_response_names_the_chosen_subprotocol_only_when_there_is_one() -> None:
    """The 101 carries Sec-WebSocket-Protocol with the chosen name, and no such header without one."""
    request = parse_request(head(), ADDRESS)
    assert b"\r\nSec-WebSocket-Protocol: v1.json\r\n" in accept_response(request, "v1.json")
    assert b"Sec-WebSocket-Protocol" not in accept_response(request)

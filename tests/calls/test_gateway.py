"""The /call gateway's wire format of syncws.gateway, on plain values and bytes: no sockets, no threads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from syncws import gateway


def test_gateway_request_round_trips_with_its_timeout() -> None:
    """parse_gateway_request of encode_gateway_request's text gives the fields and cmd, and the timeout apart."""
    request, timeout = gateway.parse_gateway_request(gateway.encode_gateway_request("getFile", {"filename": "a"}, 2.5))
    assert request == {"filename": "a", "cmd": "getFile"} and timeout == 2.5


@pytest.mark.parametrize(
    ("given", "expected"), [({}, gateway.DEFAULT_GATEWAY_TIMEOUT), ({"timeout": None}, None), ({"timeout": 10**400}, None), ({"timeout": 0}, 0.0)]
)
def test_parse_gateway_request_takes_the_timeout_out(given: dict[str, Any], expected: Any) -> None:
    """A gateway request's timeout defaults to 60 s; null and huge numbers mean forever; it is not forwarded."""
    request, timeout = gateway.parse_gateway_request(json.dumps({"cmd": "q", **given}))
    assert request == {"cmd": "q"} and timeout == expected


@pytest.mark.parametrize(
    "message", ["{", "[]", '{"x": 1}', '{"cmd": 1}', '{"cmd": "q", "timeout": -1}', '{"cmd": "q", "timeout": "5"}', '{"cmd": "q", "timeout": NaN}']
)
def test_parse_gateway_request_refuses_bad_requests(message: str) -> None:
    """parse_gateway_request raises ValueError for text that is not an object with a str cmd, or a bad timeout."""
    with pytest.raises(ValueError):
        gateway.parse_gateway_request(message)


def test_gateway_error_and_progress_messages() -> None:
    """gateway_error carries the cmd when known; gateway_progress is {"progress": [received, total]}."""
    assert gateway.gateway_error(400, "bad request: x") == {"status": 400, "error": "bad request: x"}
    assert gateway.gateway_error(504, "late", "q") == {"cmd": "q", "status": 504, "error": "late"}
    assert gateway.gateway_progress(5, 10) == {"progress": [5, 10]}


def test_gateway_reply_messages_send_json_as_it_is_and_bytes_after_a_header() -> None:
    """A JSON reply is one message; a bytes reply is a header with dataType and size, then its bytes, which the
    client side (parse_gateway_message, gateway_attach_bytes) puts back together."""
    json_reply = {"cmd": "q", "callId": 1, "status": 200, "data": [1, 2]}
    assert gateway.gateway_reply_messages(json_reply) == [json_reply]
    header, data = gateway.gateway_reply_messages({"cmd": "b", "callId": 2, "status": 200, "data": b"abc"})
    assert isinstance(header, dict) and header == {"cmd": "b", "callId": 2, "status": 200, "dataType": "bytes", "size": 3}
    progress, reply = gateway.parse_gateway_message(json.dumps(header))
    assert progress is None
    assert isinstance(data, memoryview)
    assert gateway.gateway_attach_bytes(reply, bytes(data))["data"] == b"abc"


def test_gateway_reply_messages_describe_an_array() -> None:
    """An array reply's header names its dtype and shape and its size in bytes."""
    np = pytest.importorskip("numpy")
    header, data = gateway.gateway_reply_messages({"cmd": "a", "status": 200, "data": np.zeros((2, 3), dtype="<f4")})
    assert header == {"cmd": "a", "status": 200, "dataType": "ndarray", "dtype": "<f4", "shape": [2, 3], "size": 24}
    assert isinstance(data, memoryview) and len(data) == 24


def test_parse_gateway_message_tells_progress_from_the_reply() -> None:
    """parse_gateway_message returns (received, total) for progress and None with the reply otherwise."""
    assert gateway.parse_gateway_message('{"progress": [3, 9]}')[0] == (3, 9)
    assert gateway.parse_gateway_message('{"status": 200, "data": 1}') == (None, {"status": 200, "data": 1})


@pytest.mark.parametrize("message", [b"bytes", "[1]", "{", '{"progress": 5}'])
def test_parse_gateway_message_refuses_what_the_gateway_never_sends(message: Any) -> None:
    """parse_gateway_message raises ValueError for binary, non-object or malformed messages."""
    with pytest.raises(ValueError):
        gateway.parse_gateway_message(message)


@pytest.mark.parametrize("data", [b"ab", b"abcd", "abc", None])
def test_gateway_attach_bytes_refuses_bytes_that_did_not_arrive_whole(data: Any) -> None:
    """gateway_attach_bytes raises ValueError unless exactly the announced number of bytes followed."""
    with pytest.raises(ValueError, match="whole"):
        gateway.gateway_attach_bytes({"dataType": "bytes", "size": 3}, data)

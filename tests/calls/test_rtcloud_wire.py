"""Tests of rt-cloud's requests and its peers' replies (syncws.calls.rtcloud_wire).

The peer's replies are checked by reading them back as rt-cloud's server does
(``rt_server_decode``, written from RTCLOUD-WIRE.md) and with
:class:`ReplyAssembler`; ``tests/calls/test_rtcloud_reply.py`` tests reading
replies.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from syncws.calls.rtcloud_reply import ReplyAssembler
from syncws.calls.rtcloud_wire import (
    COMPRESS_THRESHOLD,
    PART_SIZE,
    decode_request,
    encode_error,
    encode_request,
    encode_result,
)
from syncws.exceptions import RequestError

MIB = 2**20


def md5(data: bytes) -> str:
    """Return the MD5 hex digest of ``data``."""
    return hashlib.md5(data).hexdigest()


def pattern(size: int) -> bytes:
    """Return ``size`` bytes whose period (251) divides no part size, so a misplaced part shows."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def assemble(parts: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """Feed ``parts`` to a new assembler; return the whole reply, which must come with the last part."""
    assembler = ReplyAssembler(**options)
    results = [assembler.feed(part) for part in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] is not None
    return results[-1]


def rt_server_decode(messages: list[str]) -> Any:
    """Decode replies as rt-cloud's server does (RequestHandler.get_response, unpackDataMessage, handleRPCRequest).

    A message completes the call when it has no ``data`` or when as many messages
    as ``numParts`` arrived; part 1 opens the multipart cache; each part's hash is
    checked after decompression; ``json`` data goes through ``json.loads``.
    """
    replies = [json.loads(message) for message in messages]
    cache: list[bytes] = []
    data: Any = None
    for count, reply in enumerate(replies, 1):
        if reply["status"] != 200:
            raise RuntimeError(reply["error"])
        chunk = base64.b64decode(reply["data"])
        chunk = zlib.decompress(chunk) if "compressed" in reply else chunk
        assert md5(chunk) == reply["hash"]
        cache.append(chunk)
        if count == reply.get("numParts", 1):
            data = b"".join(cache)
            assert md5(data) == reply["fileHash"] and len(data) == reply["fileSize"]
            break
    else:
        raise AssertionError("rt-cloud's server would still wait")
    if replies[-1]["dataSerialization"] == "json":
        return json.loads(data.decode())
    return data


class Sample:
    """A class whose objects a peer could pickle."""

    def __init__(self, value: int) -> None:
        self.value = value


# --------------------------------------------------------------- requests


def test_encode_request_sets_call_id_and_leaves_plain_arguments() -> None:
    """encode_request adds callId and no encoding fields when no argument is bytes."""
    sent = json.loads(encode_request({"cmd": "rpc", "class": "C", "attribute": "f", "args": (1, "a"), "kwargs": {"k": [1]}}, 12))
    assert sent == {"cmd": "rpc", "class": "C", "attribute": "f", "args": [1, "a"], "kwargs": {"k": [1]}, "callId": 12}


def test_encode_request_encodes_bytes_arguments_as_rtcloud_does() -> None:
    """Bytes positional arguments become tags with base64 beside them; bytes kwargs become base64 in place."""
    msg = {"cmd": "rpc", "class": "C", "attribute": "f", "args": ("a", b"\x00\xff", bytearray(b"ba"), memoryview(b"mv")), "kwargs": {"x": 1, "y": b"yy"}}
    sent = json.loads(encode_request(msg, 3))
    assert sent["args"] == ["a", "encodedBytes_1", "encodedBytes_2", "encodedBytes_3"]
    assert sent["encodedByteArgs"] == [1, 2, 3]
    assert [sent[f"encodedBytes_{i}"] for i in (1, 2, 3)] == ["AP8=", "YmE=", "bXY="]
    assert sent["kwargs"] == {"x": 1, "y": "eXk="}
    assert sent["encodedByteKwargs"] == ["y"]


def test_encode_request_leaves_the_callers_message_unchanged() -> None:
    """encode_request does not mutate the message it is given, nor its args or kwargs."""
    msg = {"cmd": "rpc", "class": "C", "attribute": "f", "args": [b"ab", 1], "kwargs": {"k": b"cd"}}
    before = copy.deepcopy(msg)
    encode_request(msg, 1)
    assert msg == before


def test_encode_request_sends_numpy_scalars_as_numbers() -> None:
    """Numpy scalar arguments go as the Python numbers they hold, as rt-cloud's server sends them."""
    sent = json.loads(encode_request({"cmd": "rpc", "args": [np.int64(4), np.float32(0.5)], "kwargs": {"n": np.bool_(True)}}, 1))
    assert sent["args"] == [4, 0.5] and sent["kwargs"] == {"n": True}


def test_encode_request_refuses_what_json_cannot_carry() -> None:
    """An argument JSON cannot carry (a numpy array, an object) raises TypeError."""
    with pytest.raises(TypeError):
        encode_request({"cmd": "rpc", "args": [np.arange(3)]}, 1)
    with pytest.raises(TypeError):
        encode_request({"cmd": "rpc", "args": [Sample(1)]}, 1)


def test_decode_request_restores_bytes_arguments() -> None:
    """decode_request inverts encode_request: bytes args and kwargs come back, the encoding fields go."""
    msg = {"cmd": "rpc", "class": "C", "attribute": "f", "args": [b"ab", 2, bytearray(b"cd")], "kwargs": {"k": b"\x00", "j": "s"}}
    decoded = decode_request(json.loads(encode_request(msg, 9)))
    assert decoded == {"cmd": "rpc", "class": "C", "attribute": "f", "args": [b"ab", 2, b"cd"], "kwargs": {"k": b"\x00", "j": "s"}, "callId": 9}


def test_decode_request_reads_an_rtcloud_server_request() -> None:
    """A request as rt-cloud's server writes it (encodeByteTypeArgs) decodes to its bytes arguments."""
    request = {
        "cmd": "rpc",
        "class": "DataInterface",
        "attribute": "putFile",
        "args": ["/tmp/x", "encodedBytes_1"],
        "kwargs": {"compress": False, "extra": "aGk="},
        "encodedBytes_1": "ZGF0YQ==",
        "encodedByteArgs": [1],
        "encodedByteKwargs": ["extra"],
        "callId": 4,
    }
    decoded = decode_request(request)
    assert decoded["args"] == ["/tmp/x", b"data"] and decoded["kwargs"] == {"compress": False, "extra": b"hi"}
    assert "encodedBytes_1" not in decoded and "encodedByteArgs" in request


@pytest.mark.parametrize(
    "changes",
    [
        {"args": ["encodedBytes_0"], "encodedByteArgs": [0]},  # the data is missing
        {"args": ["other"], "encodedByteArgs": [0], "encodedBytes_0": "YQ=="},  # the tag is not in its place
        {"args": ["encodedBytes_0"], "encodedByteArgs": [1], "encodedBytes_1": "YQ=="},  # no such argument
        {"args": ["encodedBytes_0"], "encodedByteArgs": [True], "encodedBytes_0": "YQ=="},  # an index that is no number
        {"args": ["encodedBytes_0"], "encodedByteArgs": [0, 0], "encodedBytes_0": "YQ=="},  # an index twice
        {"args": ["encodedBytes_0"], "encodedByteArgs": 0, "encodedBytes_0": "YQ=="},  # not a list
        {"args": ["encodedBytes_0"], "encodedByteArgs": [0], "encodedBytes_0": "Y!=="},  # invalid base64
        {"args": ["encodedBytes_0"], "encodedByteArgs": [0], "encodedBytes_0": 5},  # not text
        {"kwargs": {"a": 1}, "encodedByteKwargs": ["a"]},  # a value that is not base64 text
        {"kwargs": {"a": "YQ=="}, "encodedByteKwargs": ["b"]},  # no such keyword
        {"kwargs": {"a": "YQ=="}, "encodedByteKwargs": ["a", "a"]},  # a key twice
        {"kwargs": ["YQ=="], "encodedByteKwargs": ["a"]},  # kwargs not a dict
        {"kwargs": {"a": "YQ="}, "encodedByteKwargs": ["a"]},  # bad padding
    ],
)
def test_decode_request_refuses_malformed_encodings(changes: dict[str, Any]) -> None:
    """decode_request raises ValueError for an encoding that does not add up."""
    with pytest.raises(ValueError):
        decode_request(dict({"cmd": "rpc", "class": "C", "attribute": "f", "callId": 1}, **changes))


# ------------------------------------------------------------- peer side


def request_msg() -> dict[str, Any]:
    """Return a request as an rt-cloud server sends it, after decode_request."""
    return {"cmd": "rpc", "class": "ExampleInterface", "attribute": "get", "args": [b"x"], "kwargs": {"k": 1}, "callId": 5, "extra": "kept"}


def parsed(messages: list[str]) -> list[dict[str, Any]]:
    """Return the parsed JSON of reply messages."""
    return [json.loads(message) for message in messages]


@pytest.mark.parametrize("value", [b"\x00bytes", bytearray(b"ba"), memoryview(b"mv"), b""], ids=repr)
def test_encode_result_bytes_round_trip(value: Any) -> None:
    """Bytes-like results go as dataSerialization bytes and come back equal (b'' as one empty part)."""
    messages = parsed(encode_result(request_msg(), value))
    assert len(messages) == 1 and messages[0]["dataSerialization"] == "bytes"
    assert assemble(messages)["data"] == bytes(value)


@pytest.mark.parametrize("value", [None, True, False, 0, -3, 2.5, "text", [1, "a"], {"k": [None]}, (1, 2)], ids=repr)
def test_encode_result_json_round_trip(value: Any) -> None:
    """JSON values (None and booleans too, never pickled) go as dataSerialization json and come back."""
    messages = parsed(encode_result(request_msg(), value))
    assert messages[0]["dataSerialization"] == "json"
    expected = list(value) if isinstance(value, tuple) else value
    assert assemble(messages)["data"] == expected


def test_encode_result_message_format() -> None:
    """A one-part reply echoes the request without data/args/kwargs and carries every part field."""
    (message,) = parsed(encode_result(request_msg(), b"abc"))
    assert message == {
        "cmd": "rpc",
        "class": "ExampleInterface",
        "attribute": "get",
        "callId": 5,
        "extra": "kept",
        "status": 200,
        "dataSerialization": "bytes",
        "numParts": 1,
        "partId": 1,
        "fileSize": 3,
        "fileHash": md5(b"abc"),
        "dataSize": 3,
        "hash": md5(b"abc"),
        "data": "YWJj",
    }


def test_encode_result_drops_encoded_argument_fields() -> None:
    """A reply to a request still carrying encoded bytes arguments does not send them back."""
    raw = json.loads(encode_request({"cmd": "rpc", "args": [b"big"], "kwargs": {"k": b"x"}}, 1))
    (message,) = parsed(encode_result(raw, 1))
    assert not {"encodedBytes_0", "encodedByteArgs", "encodedByteKwargs", "args", "kwargs"} & set(message)


def test_encode_result_parts_and_compression() -> None:
    """25 MiB go as 3 compressed parts of 10, 10 and 5 MiB with multipart set, and come back equal."""
    data = pattern(25 * MIB)
    messages = parsed(encode_result(request_msg(), data))
    assert [(m["partId"], m["numParts"], m["dataSize"], m["multipart"], m["compressed"]) for m in messages] == [
        (1, 3, 10 * MIB, True, True),
        (2, 3, 10 * MIB, True, True),
        (3, 3, 5 * MIB, True, True),
    ]
    assert all(m["fileSize"] == len(data) and m["fileHash"] == md5(data) for m in messages)
    assert assemble(messages)["data"] == data


def test_encode_result_compresses_only_over_1_mib() -> None:
    """Exactly 1 MiB of data goes uncompressed, one byte more compressed."""
    (plain,) = parsed(encode_result(request_msg(), bytes(COMPRESS_THRESHOLD)))
    (packed,) = parsed(encode_result(request_msg(), bytes(COMPRESS_THRESHOLD + 1)))
    assert "compressed" not in plain and "multipart" not in plain and packed["compressed"] is True
    assert zlib.decompress(base64.b64decode(packed["data"])) == bytes(COMPRESS_THRESHOLD + 1)


@pytest.mark.parametrize("value", [b"", None, True, {"a": [1, 2]}, pattern(11 * MIB)], ids=lambda v: repr(v)[:20])
def test_encode_result_is_read_by_rtcloud_server_logic(value: Any) -> None:
    """rt-cloud's server logic reads our replies: b'' as one empty part, null as None, true as True, parts joined."""
    assert rt_server_decode(encode_result(request_msg(), value)) == value


@pytest.mark.parametrize("value", [np.arange(3), np.float64(1.5), Sample(1), {1, 2}, 1 + 2j, [Sample(1)], [float("nan"), {1}]], ids=repr)
def test_encode_result_refuses_what_it_would_have_to_pickle(value: Any) -> None:
    """Results other than bytes and JSON values raise TypeError; this side never pickles."""
    with pytest.raises(TypeError, match="rt-cloud server"):
        encode_result(request_msg(), value)


def test_encode_error_format() -> None:
    """encode_error writes status 400 and 'RPC Exception: <cmd>: <text>' on the request's fields."""
    message = json.loads(encode_error(request_msg(), "no such file"))
    assert message == {
        "cmd": "rpc",
        "class": "ExampleInterface",
        "attribute": "get",
        "callId": 5,
        "extra": "kept",
        "status": 400,
        "error": "RPC Exception: rpc: no such file",
    }
    with pytest.raises(RequestError, match="no such file"):
        ReplyAssembler().feed(message)


def iter_sizes() -> Iterator[int]:
    """Yield sizes around the part boundaries."""
    yield from (1, PART_SIZE - 1, PART_SIZE, PART_SIZE + 1)


def test_encode_result_part_boundaries() -> None:
    """Data of sizes around one part size splits into the right number of parts and round-trips."""
    for size in iter_sizes():
        data = pattern(size)
        messages = parsed(encode_result(request_msg(), data))
        assert len(messages) == (size + PART_SIZE - 1) // PART_SIZE
        assert assemble(messages)["data"] == data

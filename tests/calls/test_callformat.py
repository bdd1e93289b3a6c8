"""The request/reply wire format of syncws.callformat, on plain values and bytes: no sockets, no threads."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import pytest

from syncws import callformat
from syncws.calls.callformat import Kind, PartHeader, RefusedRequest
from syncws.exceptions import RequestError

pytestmark = pytest.mark.timeout(30)

# ---------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("msg", "error"),
    [
        ("getFile", TypeError),
        (["cmd", "x"], TypeError),
        ({}, ValueError),
        ({"x": 1}, ValueError),
        ({"cmd": 7}, TypeError),
        ({"cmd": None}, TypeError),
    ],
)
def test_check_request_refuses_anything_but_a_dict_with_a_str_cmd(msg: Any, error: type) -> None:
    """check_request raises TypeError for a non-dict or a non-str cmd, ValueError for a missing cmd."""
    with pytest.raises(error):
        callformat.check_request(msg)


def test_check_request_accepts_a_dict_with_a_str_cmd() -> None:
    """check_request returns None for a dict with a str cmd, whatever else it holds."""
    assert callformat.check_request({"cmd": "getFile", "filename": "a", "n": [1, 2]}) is None


def test_encode_request_keeps_the_fields_and_puts_the_call_id_last() -> None:
    """encode_request gives the request's JSON with callId added last, and leaves the caller's dict alone."""
    msg = {"cmd": "getFile", "filename": "scan.dcm"}
    text = callformat.encode_request(msg, 17)
    assert json.loads(text) == {"cmd": "getFile", "filename": "scan.dcm", "callId": 17}
    assert text.endswith('"callId": 17}')
    assert msg == {"cmd": "getFile", "filename": "scan.dcm"}


def test_parse_request_returns_what_encode_request_made() -> None:
    """parse_request of encode_request's text gives back the request with its callId."""
    text = callformat.encode_request({"cmd": "add", "a": 2, "b": 3}, 5)
    assert callformat.parse_request(text) == {"cmd": "add", "a": 2, "b": 3, "callId": 5}


@pytest.mark.parametrize(
    ("message", "cmd", "call_id", "answer"),
    [
        (b"\x00\x01", None, None, True),
        ('{"cmd": "x", "callId": 42', None, None, True),
        ('{"cmd": "x", "nested": ' + "[" * 100_000 + ', "callId": 42}', None, 42, True),
        ("[" * 100_000 + "]" * 100_000, None, None, True),
        ('[1, 2, "callId"]', None, None, True),
        ('{"callId": 3}', None, 3, True),
        ('{"cmd": 5, "callId": 4}', 5, 4, True),
        ('{"status": 200, "callId": 4, "data": 1}', None, None, False),
    ],
)
def test_parse_request_refuses_what_is_not_a_request_with_what_it_could_read(message: Any, cmd: Any, call_id: Any, answer: bool) -> None:
    """parse_request raises RefusedRequest carrying the cmd and callId it could read (a callId at the very end of
    text that does not parse included), and answer=False for a reply-like message."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_request(message)
    assert (refused.value.cmd, refused.value.call_id, refused.value.answer) == (cmd, call_id, answer)
    assert refused.value.reason and isinstance(refused.value, ValueError)


@pytest.mark.parametrize("message", ['{"status": 200, "callId": 4, "data": 1}', '{"cmd": "q", "callId": 4, "status": 404, "error": "x"}'])
def test_parse_request_refuses_a_reply_without_answering(message: str) -> None:
    """parse_request raises RefusedRequest with answer=False for a reply, with or without a cmd."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_request(message)
    assert refused.value.answer is False


def test_parse_request_refuses_a_cancel_without_answering() -> None:
    """parse_request raises RefusedRequest with answer=False for a cancel, which is not a request."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_request(callformat.encode_cancel(3))
    assert refused.value.answer is False and "cancel" in refused.value.reason


# ---------------------------------------------------------------------- parse_message and cancels


@pytest.mark.parametrize(
    "reply",
    [
        {"cmd": "q", "callId": 1, "status": 200, "data": 5},
        {"callId": 1, "status": 500, "error": "x"},
        {"status": None},
        {"status": "200", "cmd": 7},
        {"status": 200, "cancel": 3},
    ],
)
def test_parse_message_takes_any_object_with_a_status_as_a_reply(reply: dict[str, Any]) -> None:
    """Any JSON object with a status is a reply, whatever its status, cmd or other fields."""
    assert callformat.parse_message(json.dumps(reply)) == (Kind.REPLY, reply)


@pytest.mark.parametrize("request_", [{"cmd": "getSettings", "callId": 2}, {"cmd": ""}, {"cmd": "q", "cancel": 3}, {"cmd": "q", "callId": "x"}])
def test_parse_message_takes_a_str_cmd_without_status_as_a_request(request_: dict[str, Any]) -> None:
    """A JSON object with a str cmd and no status is a request, even with a cancel field or an odd callId."""
    assert callformat.parse_message(json.dumps(request_)) == (Kind.REQUEST, request_)


@pytest.mark.parametrize("cancel", [{"cancel": 7}, {"cancel": 0}, {"cancel": 2**63}, {"cancel": 7, "callId": 9}])
def test_parse_message_takes_an_int_cancel_without_cmd_or_status_as_a_cancel(cancel: dict[str, Any]) -> None:
    """A JSON object with an int cancel and no cmd or status is a cancel."""
    assert callformat.parse_message(json.dumps(cancel)) == (Kind.CANCEL, cancel)


@pytest.mark.parametrize("value", ["7", 7.0, 7.5, True, False, None, [7], {"callId": 7}])
def test_parse_message_refuses_a_cancel_of_a_call_id_that_is_not_an_int_without_answering(value: Any) -> None:
    """A cancel whose N is not an int (a bool is not) raises RefusedRequest with answer=False."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_message(json.dumps({"cancel": value}))
    assert refused.value.answer is False and "cancel" in refused.value.reason


def test_parse_message_refuses_a_call_id_without_cmd_and_answers_it() -> None:
    """{"callId": 3} is neither request, reply nor cancel: RefusedRequest with answer=True and call_id 3, to be answered 400."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_message('{"callId": 3}')
    assert (refused.value.answer, refused.value.call_id, refused.value.cmd) == (True, 3, None)


def test_parse_message_refuses_a_cmd_that_is_not_a_str_with_what_it_read() -> None:
    """A cmd that is not a str (and no status) raises RefusedRequest carrying that cmd and the callId, to be answered."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_message('{"cmd": 5, "callId": 4, "cancel": 1}')
    assert (refused.value.answer, refused.value.cmd, refused.value.call_id) == (True, 5, 4)


@pytest.mark.parametrize(
    ("message", "call_id"),
    [
        ('{"cmd": "x" "callId": 42}', 42),
        ('{"cmd": "x",, "callId": 42 }  ', 42),
        ('{"cmd": "x", "callId": 42', None),
        ("not json", None),
        ("", None),
    ],
)
def test_parse_message_refuses_text_that_is_not_json_with_the_call_id_at_its_end(message: str, call_id: Any) -> None:
    """Text that is not JSON raises RefusedRequest, to be answered, with the callId read from its very end when it is there."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_message(message)
    assert (refused.value.answer, refused.value.call_id) == (True, call_id)
    assert "not JSON" in refused.value.reason


@pytest.mark.parametrize("message", ["[1, 2]", '"text"', "7", "null"])
def test_parse_message_refuses_json_that_is_not_an_object(message: str) -> None:
    """JSON that is not an object raises RefusedRequest without a callId."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_message(message)
    assert refused.value.call_id is None and "JSON object" in refused.value.reason


@pytest.mark.parametrize("message", [b"", b'{"cancel": 7}', b'{"cmd": "q", "callId": 1}'])
def test_parse_message_refuses_a_binary_message(message: bytes) -> None:
    """A binary message is never a request, reply or cancel, even when it holds JSON: RefusedRequest without a callId."""
    with pytest.raises(RefusedRequest) as refused:
        callformat.parse_message(message)
    assert refused.value.call_id is None and "binary" in refused.value.reason


@pytest.mark.parametrize("call_id", [0, 1, 2**53, 2**64 - 1])
def test_encode_cancel_round_trips_through_parse_message(call_id: int) -> None:
    """parse_message of encode_cancel(N) is a cancel whose CANCEL_FIELD is N; the text is {"cancel": N}."""
    text = callformat.encode_cancel(call_id)
    assert json.loads(text) == {"cancel": call_id} and callformat.CANCEL_FIELD == "cancel"
    kind, parsed = callformat.parse_message(text)
    assert kind is Kind.CANCEL and parsed[callformat.CANCEL_FIELD] == call_id


# ---------------------------------------------------------------------- replies


def test_error_reply_has_cmd_call_id_status_and_error() -> None:
    """error_reply builds the {"cmd", "callId", "status", "error"} object of docs/protocol.md."""
    assert callformat.error_reply("getFile", 19, 500, "FileNotFoundError: x") == {
        "cmd": "getFile",
        "callId": 19,
        "status": 500,
        "error": "FileNotFoundError: x",
    }


@pytest.mark.parametrize(("result", "expected"), [(5, {"data": 5}), ([1, "a"], {"data": [1, "a"]}), (None, {}), ("", {"data": ""})])
def test_encode_result_gives_a_200_reply_with_data_unless_none(result: Any, expected: dict[str, Any]) -> None:
    """encode_result's JSON carries cmd, callId, status 200 and data, with no data for a None result."""
    assert json.loads(callformat.encode_result("add", 18, result)) == {"cmd": "add", "callId": 18, "status": 200, **expected}


def test_encode_result_that_is_not_json_becomes_a_500_reply() -> None:
    """A result json cannot encode becomes a 500 error reply that says so, not an exception."""
    reply = json.loads(callformat.encode_result("q", 3, {1, 2}))
    assert reply["status"] == 500 and reply["callId"] == 3 and "not JSON-serializable" in reply["error"]


def test_parse_reply_returns_a_json_object() -> None:
    """parse_reply gives the dict of a JSON object reply."""
    assert callformat.parse_reply('{"cmd": "a", "callId": 1, "status": 200}') == {"cmd": "a", "callId": 1, "status": 200}


@pytest.mark.parametrize("message", ["{", "[1, 2]", "null", "[" * 100_000, "[" * 100_000 + "]" * 100_000])
def test_parse_reply_refuses_what_is_not_a_json_object(message: str) -> None:
    """parse_reply raises ValueError for text that is not JSON, nests too deep, or is not an object."""
    with pytest.raises(ValueError, match="dropped"):
        callformat.parse_reply(message)


@pytest.mark.parametrize(("call_id", "expected"), [(7, 7), (0, 0), (True, None), ("7", None), (7.5, None), (None, None)])
def test_reply_call_id_is_an_int_and_never_a_bool(call_id: Any, expected: Any) -> None:
    """reply_call_id returns an int callId and None for anything else, bools included."""
    assert callformat.reply_call_id({"callId": call_id}) == expected


def test_is_refusal_and_is_binary_header_tell_replies_apart() -> None:
    """is_refusal is true for an error without a callId; is_binary_header for a 200 bytes or ndarray header only."""
    assert callformat.is_refusal({"callId": None, "status": 400, "error": "x"})
    assert not callformat.is_refusal({"callId": 1, "status": 400, "error": "x"})
    assert not callformat.is_refusal({"status": 200, "error": "x"})
    assert callformat.is_binary_header({"status": 200, "dataType": "bytes"})
    assert callformat.is_binary_header({"status": 200, "dataType": "ndarray"})
    assert not callformat.is_binary_header({"status": 500, "dataType": "bytes"})
    assert not callformat.is_binary_header({"status": 200, "dataType": "text"})


@pytest.mark.parametrize(("status", "expected"), [(404, 404), (500, 500), ("200", 500), (None, 500), (10**400, 10**400)])
def test_check_reply_status_raises_request_error_unless_200(status: Any, expected: int) -> None:
    """check_reply_status raises RequestError with the peer's status (500 when it is not an int) and error."""
    reply = {"cmd": "q", "callId": 1, "status": status, "error": "boom"}
    with pytest.raises(RequestError) as raised:
        callformat.check_reply_status(reply)
    assert raised.value.status == expected and raised.value.error == "boom" and raised.value.response is reply


def test_check_reply_status_returns_a_200_reply() -> None:
    """check_reply_status returns a 200 reply as it is."""
    reply = {"cmd": "q", "callId": 1, "status": 200}
    assert callformat.check_reply_status(reply) is reply


# ---------------------------------------------------------------------- part headers


def test_part_header_round_trips() -> None:
    """decode_part_header gives back what pack_part_header packed, with a CRC-32 equal to zlib's."""
    data = b"some bytes of a part"
    header = callformat.encode_part_header(2**40 + 3, 4, 9, 12345678901, data)
    assert len(header) == callformat.PART_HEADER.size == 32
    assert callformat.decode_part_header(header + data) == PartHeader(2**40 + 3, 4, 9, 12345678901, zlib.crc32(data))


def test_part_header_layout_is_the_documented_one() -> None:
    """The header is magic SWSB, callId u64, part u32, parts u32, offset u64, CRC-32 u32, big-endian (docs/protocol.md)."""
    header = callformat.pack_part_header(1, 2, 3, 4, 0xDEADBEEF)
    assert header[:4] == b"SWSB"
    assert struct.unpack("!QIIQI", header[4:]) == (1, 2, 3, 4, 0xDEADBEEF)


@pytest.mark.parametrize("message", [b"", b"SWSB", b"XXXX" + bytes(28), bytes(31)])
def test_decode_part_header_refuses_short_or_unmarked_messages(message: bytes) -> None:
    """decode_part_header returns None for a message shorter than 32 bytes or without the SWSB magic."""
    assert callformat.decode_part_header(message) is None


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 10_500])
def test_binary_parts_slice_the_bytes_in_order_with_their_crc(size: int) -> None:
    """binary_parts yields ceil(size / part_size) parts whose headers decode, pass check_part and carry each slice's CRC-32."""
    data = bytes(range(256)) * (size // 256 + 1)
    view = memoryview(data[:size])
    parts = list(callformat.binary_parts(9, view, 1000))
    assert len(parts) == -(-size // 1000)
    header = callformat.binary_reply_header("b", 9, size, len(parts), {"dataType": "bytes"})
    offset = 0
    for index, (head, chunk) in enumerate(parts):
        part = callformat.decode_part_header(head)
        assert part is not None and part.call_id == 9 and part.crc32 == zlib.crc32(chunk)
        last = callformat.check_part(part, len(chunk), index, offset, header)
        assert last == (index == len(parts) - 1)
        offset += len(chunk)
    assert b"".join(bytes(chunk) for _, chunk in parts) == data[:size]


def test_encode_binary_reply_announces_size_and_parts_then_yields_them() -> None:
    """encode_binary_reply's header text announces the size, the part count and the fields; its parts carry the bytes."""
    data = bytes(range(256)) * 10
    text, parts = callformat.encode_binary_reply("b", 3, memoryview(data), {"dataType": "bytes"}, 1000)
    assert json.loads(text) == {"cmd": "b", "callId": 3, "status": 200, "size": 2560, "parts": 3, "dataType": "bytes"}
    assert b"".join(bytes(chunk) for _, chunk in parts) == data


def test_part_checksums_match_zlib_for_every_slice() -> None:
    """part_checksums gives zlib's CRC-32 of each slice, in order, the last one short."""
    data = bytes(range(256)) * 40
    assert list(callformat.part_checksums(memoryview(data), 1000)) == [zlib.crc32(data[i : i + 1000]) for i in range(0, len(data), 1000)]


# ---------------------------------------------------------------------- binary reply headers and part order


def test_binary_reply_header_and_the_fields_the_reply_keeps() -> None:
    """binary_reply_header announces size and parts; binary_reply_fields keeps only cmd, callId, status and the like."""
    header = callformat.binary_reply_header("getFile", 20, 20971520, 3, {"dataType": "ndarray", "dtype": "<f8", "shape": [2621440]})
    assert header == {"cmd": "getFile", "callId": 20, "status": 200, "size": 20971520, "parts": 3, "dataType": "ndarray", "dtype": "<f8", "shape": [2621440]}
    assert callformat.binary_reply_fields(header) == {"cmd": "getFile", "callId": 20, "status": 200}


@pytest.mark.parametrize(
    ("size", "parts"),
    [(-1, 1), (5, -1), ("1", 1), (1, "1"), (1.0, 1), (None, 1), (0, 1), (5, 0), (101, 1), (float("inf"), 1)],
)
def test_check_binary_header_refuses_invalid_sizes_and_parts(size: Any, parts: Any) -> None:
    """check_binary_header raises ValueError for a size or parts that is not a non-negative int, zero parts for
    bytes (or the reverse), and a size over the limit."""
    with pytest.raises(ValueError):
        callformat.check_binary_header({"size": size, "parts": parts}, max_size=100)


def test_check_binary_header_accepts_an_empty_reply_and_one_at_the_limit() -> None:
    """check_binary_header accepts size 0 with 0 parts, and a size equal to max_size."""
    callformat.check_binary_header({"size": 0, "parts": 0}, max_size=100)
    callformat.check_binary_header({"size": 100, "parts": 7}, max_size=100)


_HEADER = {"size": 6, "parts": 2}


@pytest.mark.parametrize(
    ("part", "length", "index", "offset", "reason"),
    [
        (PartHeader(1, 1, 2, 3, 0), 3, 0, 0, "out of order"),
        (PartHeader(1, 0, 3, 0, 0), 3, 0, 0, "out of order"),
        (PartHeader(1, 1, 2, 4, 0), 2, 1, 3, "does not follow on"),
        (PartHeader(1, 0, 2, 0, 0), 7, 0, 0, "runs past"),
        (PartHeader(1, 1, 2, 3, 0), 2, 1, 3, "do not add up"),
    ],
)
def test_check_part_refuses_parts_out_of_order_or_size(part: PartHeader, length: int, index: int, offset: int, reason: str) -> None:
    """check_part raises ValueError for a part out of order, with another count, at the wrong offset, past the size,
    or a last part that leaves the size short."""
    with pytest.raises(ValueError, match=reason):
        callformat.check_part(part, length, index, offset, _HEADER)


# ---------------------------------------------------------------------- binary values and array layout


@pytest.mark.parametrize("value", [b"abc", bytearray(b"abc"), memoryview(b"abc"), memoryview(b"aXbXc")[::2]])
def test_as_binary_takes_bytes_like_values_as_contiguous_bytes(value: Any) -> None:
    """as_binary gives a contiguous byte view and dataType bytes for bytes, bytearray and (strided) memoryviews."""
    binary = callformat.as_binary(value)
    assert binary is not None
    view, fields = binary
    assert bytes(view) == b"abc" and view.c_contiguous and view.format == "B"
    assert fields == {"dataType": "bytes"}


@pytest.mark.parametrize("value", [None, 1, "text", [1, 2], {"a": b"x"}])
def test_as_binary_leaves_json_values_alone(value: Any) -> None:
    """as_binary returns None for what travels as JSON."""
    assert callformat.as_binary(value) is None


def test_array_layout_round_trips_plain_and_structured_arrays() -> None:
    """An array's as_binary fields, read back with array_layout, give its dtype and shape, also structured and 0-d."""
    np = pytest.importorskip("numpy")
    arrays = [np.arange(12, dtype="<f8").reshape(3, 4), np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]), np.array(5, dtype="<i2")]
    for array in arrays:
        binary = callformat.as_binary(array)
        assert binary is not None
        view, fields = binary
        dtype, shape = callformat.array_layout(json.loads(json.dumps(fields)), len(view))
        assert dtype == array.dtype and shape == array.shape
        assert np.frombuffer(bytes(view), dtype=dtype).reshape(shape).tolist() == array.tolist()


def test_as_binary_sends_a_strided_array_in_c_order() -> None:
    """A non-contiguous array travels as its C-order bytes with its own shape."""
    np = pytest.importorskip("numpy")
    array = np.arange(12, dtype="<i4").reshape(3, 4).T
    binary = callformat.as_binary(array)
    assert binary is not None
    assert bytes(binary[0]) == np.ascontiguousarray(array).tobytes() and binary[1]["shape"] == [4, 3]


@pytest.mark.parametrize("dtype", [object, "V8"])
def test_as_binary_refuses_object_and_raw_void_arrays(dtype: Any) -> None:
    """as_binary raises TypeError for an object array and for raw void, which have no layout to rebuild."""
    np = pytest.importorskip("numpy")
    with pytest.raises(TypeError):
        callformat.as_binary(np.zeros(2, dtype=dtype))


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ({"dtype": "<f8", "shape": [3]}, 10),
        ({"dtype": "|O", "shape": [1]}, 8),
        ({"dtype": "<f8", "shape": [-1]}, 8),
        ({"dtype": "<f8", "shape": [float("inf")]}, 8),
        ({"dtype": "<f8"}, 8),
        ({"dtype": "not a dtype", "shape": [1]}, 8),
        ({"dtype": 5, "shape": [1]}, 8),
        ({"dtype": "<f8", "shape": 8}, 8),
    ],
)
def test_array_layout_refuses_descriptions_that_do_not_fit(header: dict[str, Any], size: int) -> None:
    """array_layout raises ValueError for a size that does not fit, an object dtype, a negative or infinite
    dimension, a missing shape and a dtype numpy cannot read."""
    pytest.importorskip("numpy")
    with pytest.raises(ValueError):
        callformat.array_layout(header, size)

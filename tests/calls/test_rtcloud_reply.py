"""Tests of reading rt-cloud's replies (syncws.calls.rtcloud_reply): parts, restricted unpickling, limits.

The reply messages here are built by ``rt_parts``, written from RTCLOUD-WIRE.md
independently of the module under test, so that the two check each other.
"""

from __future__ import annotations

import base64
import copy
import json
import pickle
import tracemalloc
import zlib
from typing import Any, Optional

import numpy as np
import pytest

from syncws.calls.rtcloud_reply import RefusedPickle, ReplyAssembler, restricted_loads
from syncws.calls.rtcloud_wire import PART_SIZE
from syncws.exceptions import RequestError

from .test_rtcloud_wire import MIB, Sample, assemble, md5, pattern

HEADER = {"cmd": "rpc", "class": "DataInterface", "attribute": "getFile", "callId": 7}


def rt_parts(data: bytes, serialization: str = "bytes", compress: Optional[bool] = None, part_size: int = PART_SIZE) -> list[dict[str, Any]]:
    """Return the reply messages an rt-cloud peer sends for serialized ``data``, as RTCLOUD-WIRE.md describes them."""
    if compress is None:
        compress = len(data) > MIB
    count = (len(data) + part_size - 1) // part_size
    header = dict(HEADER, dataSerialization=serialization, status=200, fileSize=len(data), fileHash=md5(data), numParts=count)
    if count > 1:
        header["multipart"] = True
    parts = []
    for index in range(count):
        chunk = data[index * part_size : (index + 1) * part_size]
        part = dict(header, partId=index + 1, hash=md5(chunk), dataSize=len(chunk))
        if compress:
            part["compressed"] = True
        part["data"] = base64.b64encode(zlib.compress(chunk) if compress else chunk).decode()
        parts.append(part)
    return parts


def refused(parts: list[dict[str, Any]], **options: Any) -> RequestError:
    """Feed ``parts`` to a new assembler and return the RequestError it raises."""
    assembler = ReplyAssembler(**options)
    with pytest.raises(RequestError) as info:
        for part in parts:
            assembler.feed(part)
    return info.value


def pickled(obj: Any, protocol: int = pickle.DEFAULT_PROTOCOL) -> list[dict[str, Any]]:
    """Return the reply messages of a result rt-cloud's peer pickles."""
    return rt_parts(pickle.dumps(obj, protocol=protocol), "pickle")


class Boom:
    """A class whose unpickling would run code, to show a refused pickle never gets that far."""

    ran = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (Boom._run, ())

    @staticmethod
    def _run() -> None:
        Boom.ran = True


OS_SYSTEM_PICKLE = b"cos\nsystem\n(S'echo pwned'\ntR."


# ------------------------------------------------------ replies: one part


def test_json_reply_decodes_to_its_value_without_part_fields() -> None:
    """A json reply comes back as the value, with the request's fields and no part fields."""
    reply = assemble(rt_parts(json.dumps({"a": [1, 2.5, "x"]}).encode(), "json"))
    assert reply == dict(HEADER, dataSerialization="json", status=200, data={"a": [1, 2.5, "x"]})


def test_bytes_reply_in_one_part_is_bytes() -> None:
    """A bytes reply in one part comes back as exactly bytes."""
    data = assemble(rt_parts(b"\x00raw\xff", "bytes"))["data"]
    assert type(data) is bytes and data == b"\x00raw\xff"


def test_empty_bytes_reply_in_one_empty_part() -> None:
    """One empty part (what this side sends for b''; rt-cloud's peer sends nothing) gives b''."""
    empty = dict(rt_parts(b"x", "bytes")[0], fileSize=0, fileHash=md5(b""), hash=md5(b""), dataSize=0, data="")
    assert assemble([empty])["data"] == b""


def test_compressed_single_part_is_decompressed() -> None:
    """A compressed single part (a result over 1 MiB) is decompressed and checked."""
    data = pattern(2 * MIB)
    parts = rt_parts(data, "bytes")
    assert parts[0]["compressed"] is True and len(parts) == 1
    assert assemble(parts)["data"] == data


# ---------------------------------------------------------- replies: pickle


@pytest.mark.parametrize("protocol", [3, 4, 5])
@pytest.mark.parametrize(
    "value",
    [None, True, False, 3, 2.5, 1 + 2j, "s", b"b", bytearray(b"ba"), [1, (2,)], {"k": {1, 2}}, frozenset([3])],
    ids=repr,
)
def test_pickled_plain_values_are_allowed(value: Any, protocol: int) -> None:
    """Pickles of None, booleans, numbers, strings, bytes and containers load under the restriction."""
    assert assemble(pickled(value, protocol))["data"] == value


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_pickled_numpy_arrays_and_scalars_are_allowed(protocol: int) -> None:
    """Numpy arrays (also structured and Fortran-ordered), dtypes and scalars load under the restriction."""
    structured = np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")])
    values: list[Any] = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.eye(3)),
        structured,
        np.dtype("<u2"),
        np.float64(2.5),
        np.int32(-7),
        np.bool_(True),
    ]
    for value in values:
        got = assemble(pickled(value, protocol))["data"]
        assert type(got) is type(value)
        if isinstance(value, np.ndarray):
            assert got.dtype == value.dtype and np.array_equal(got, value)
        else:
            assert got == value


def test_numpy1_pickle_names_are_allowed() -> None:
    """An array pickled by numpy 1 (numpy.core.multiarray._reconstruct) loads too."""
    data = pickle.dumps(np.arange(3), protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in data
    assert np.array_equal(assemble(rt_parts(data, "pickle"))["data"], np.arange(3))


def test_pickled_object_of_a_class_is_refused_with_its_name() -> None:
    """A pickled object of a class is refused with status 502 naming the class."""
    error = refused(pickled(Sample(5)))
    assert error.status == 502
    assert f"refused to unpickle {Sample.__module__}.Sample" in error.error


def test_os_system_pickle_is_refused_before_it_runs() -> None:
    """A pickle calling os.system is refused, naming os.system and the allow_pickle risk."""
    error = refused(rt_parts(OS_SYSTEM_PICKLE, "pickle"))
    assert error.status == 502
    assert "refused to unpickle os.system (allow_pickle=True lets the peer run code on this server)" in error.error


def test_refused_pickle_runs_no_code() -> None:
    """A refused reduce never calls its function."""
    refused(pickled(Boom()))
    assert Boom.ran is False


def test_allow_pickle_accepts_any_object() -> None:
    """With allow_pickle=True a pickled object of a class loads."""
    got = assemble(pickled(Sample(5)), allow_pickle=True)["data"]
    assert isinstance(got, Sample) and got.value == 5


def test_restricted_loads_raises_refused_pickle() -> None:
    """restricted_loads raises RefusedPickle, an UnpicklingError, with the module and name."""
    with pytest.raises(RefusedPickle) as info:
        restricted_loads(OS_SYSTEM_PICKLE)
    assert (info.value.module, info.value.name) == ("os", "system")
    assert isinstance(info.value, pickle.UnpicklingError)


def test_restricted_loads_refuses_protocol2_bytes() -> None:
    """A protocol-2 pickle of bytes (through _codecs.encode) is refused: Python 3 peers use 3 or higher."""
    with pytest.raises(RefusedPickle, match=r"_codecs\.encode"):
        restricted_loads(pickle.dumps(b"x", protocol=2))


def test_restricted_loads_reads_a_bytearray_and_protocol_0() -> None:
    """restricted_loads reads from a bytearray and a text-protocol pickle (readline)."""
    assert restricted_loads(bytearray(pickle.dumps({"a": [1, 2]}, protocol=0))) == {"a": [1, 2]}
    assert restricted_loads(memoryview(pickle.dumps({1, 2}, protocol=2))) == {1, 2}


def test_damaged_pickle_is_a_502() -> None:
    """A truncated pickle is refused with status 502."""
    error = refused(rt_parts(pickle.dumps([1, 2, 3])[:-3], "pickle"))
    assert error.status == 502 and "not a valid pickle" in error.error


# ---------------------------------------------------- replies: many parts


@pytest.mark.parametrize("compress", [True, False])
def test_three_parts_of_25_mib_are_joined(compress: bool) -> None:
    """25 MiB in 3 parts of 10 MiB, compressed or not, come back joined and checked."""
    data = pattern(25 * MIB)
    parts = rt_parts(data, "bytes", compress)
    assert [p["dataSize"] for p in parts] == [10 * MIB, 10 * MIB, 5 * MIB] and all(p["multipart"] for p in parts)
    reply = assemble(parts)
    assert reply["data"] == data
    assert set(reply) == {"cmd", "class", "attribute", "callId", "dataSerialization", "status", "data"}


@pytest.mark.parametrize("order", [(3, 1, 2), (2, 3, 1), (1, 3, 2)])
def test_parts_out_of_order_are_placed_by_part_id(order: tuple[int, ...]) -> None:
    """Parts in any order are placed by partId (rt-cloud's server needs part 1 first; syncws does not)."""
    data = pattern(25 * 1000)
    parts = rt_parts(data, "bytes", part_size=10 * 1000)
    assert assemble([parts[i - 1] for i in order])["data"] == data


def test_multipart_json_reply() -> None:
    """A json value of several parts is decoded from the joined data."""
    value = list(range(3000))
    assert assemble(rt_parts(json.dumps(value).encode(), "json", part_size=1000))["data"] == value


def test_missing_part_never_completes() -> None:
    """Without one of its parts the reply is never returned."""
    parts = rt_parts(pattern(3000), part_size=1000)
    assembler = ReplyAssembler()
    assert [assembler.feed(part) for part in (parts[0], parts[2])] == [None, None]


def test_duplicated_part_is_refused() -> None:
    """A part that comes twice is refused."""
    parts = rt_parts(pattern(3000), part_size=1000)
    assert "part 2 came twice" in refused([parts[0], parts[1], parts[1]]).error


def test_num_parts_changing_is_refused() -> None:
    """A part whose numParts differs from the first part's is refused."""
    parts = rt_parts(pattern(3000), part_size=1000)
    error = refused([parts[0], dict(parts[1], numParts=4)])
    assert error.status == 502 and "numParts" in error.error


def test_bad_part_hash_is_refused() -> None:
    """A part whose data does not match its hash is refused, naming the part."""
    parts = rt_parts(pattern(3000), part_size=1000)
    parts[1]["hash"] = md5(b"other")
    error = refused(parts)
    assert error.status == 502 and "part 2 does not match its hash" in error.error


def test_bad_compressed_part_hash_is_refused() -> None:
    """The hash of a compressed part is checked on the decompressed bytes."""
    parts = rt_parts(pattern(3000), part_size=1000, compress=True)
    good = assemble(copy.deepcopy(parts))["data"]
    assert good == pattern(3000)
    parts[0]["hash"] = md5(zlib.compress(pattern(1000)))
    assert "part 1 does not match its hash" in refused(parts).error


def test_bad_file_hash_is_refused() -> None:
    """Parts that each match their hash but not the fileHash are refused once joined."""
    parts = [dict(part, fileHash=md5(b"other")) for part in rt_parts(pattern(3000), part_size=1000)]
    assembler = ReplyAssembler()
    assert assembler.feed(parts[0]) is None and assembler.feed(parts[1]) is None
    with pytest.raises(RequestError, match="does not match fileHash") as info:
        assembler.feed(parts[2])
    assert info.value.status == 502


def test_part_sizes_must_fit_the_file() -> None:
    """A part whose dataSize does not fit the other parts and fileSize is refused."""
    parts = rt_parts(pattern(3000), part_size=1000)
    assert "belong" in refused([parts[0], dict(parts[1], dataSize=999)]).error
    assert "does not fit" in refused([dict(parts[2], dataSize=1001)]).error


def test_data_not_matching_data_size_is_refused() -> None:
    """A part holding other than dataSize bytes is refused."""
    part = rt_parts(b"abc")[0]
    part["data"] = base64.b64encode(b"abcd").decode()
    assert "holds 4 bytes, not the 3" in refused([part]).error


def test_part_id_out_of_range_is_refused() -> None:
    """A partId outside 1..numParts is refused."""
    parts = rt_parts(pattern(2000), part_size=1000)
    assert "outside 1..2" in refused([dict(parts[0], partId=3)]).error
    assert "outside 1..2" in refused([dict(parts[0], partId=0)]).error


def test_other_call_id_is_refused() -> None:
    """A part of another callId fed to the same assembler is refused."""
    parts = rt_parts(pattern(2000), part_size=1000)
    assert "callId 8" in refused([parts[0], dict(parts[1], callId=8)]).error


def test_missing_or_mistyped_fields_are_refused() -> None:
    """A part without its hash, or with a numParts that is no number, is refused."""
    part = rt_parts(b"abc")[0]
    assert "'hash'" in refused([{k: v for k, v in part.items() if k != "hash"}]).error
    assert "'numParts'" in refused([dict(part, numParts="1")]).error


def test_part_less_message_after_parts_is_refused() -> None:
    """A message without part fields among the parts of a call is refused."""
    parts = rt_parts(pattern(2000), part_size=1000)
    assert "without part fields" in refused([parts[0], {"cmd": "rpc", "callId": 7, "status": 200}]).error


def test_invalid_base64_is_refused() -> None:
    """A part whose data is not valid base64 is refused."""
    assert "not valid base64" in refused([dict(rt_parts(b"abc")[0], data="YW*j")]).error


def test_unknown_serialization_is_refused() -> None:
    """A dataSerialization other than bytes, json and pickle is refused."""
    assert "unknown dataSerialization 'xml'" in refused(rt_parts(b"<a/>", "xml")).error


def test_invalid_json_is_refused() -> None:
    """A json reply whose data is not JSON is refused with status 502."""
    assert "not valid JSON" in refused(rt_parts(b"{nope", "json")).error


def test_feed_after_completion_is_refused() -> None:
    """A message fed after the reply was returned is refused."""
    parts = rt_parts(b"abc")
    assembler = ReplyAssembler()
    assert assembler.feed(parts[0]) is not None
    with pytest.raises(RequestError, match="already complete"):
        assembler.feed(parts[0])


# ---------------------------------------------------------- replies: limits


def test_oversize_file_size_is_refused_before_decoding() -> None:
    """A fileSize over max_size is refused at the first part, naming the limit."""
    parts = rt_parts(pattern(3000), part_size=1000)
    error = refused(parts[:1], max_size=2999)
    assert error.status == 502 and "fileSize 3000 exceeds the limit of 2999" in error.error


def test_oversize_part_less_reply_is_refused() -> None:
    """A reply without part fields whose data exceeds max_size is refused."""
    reply = {"cmd": "getResponse", "callId": 1, "status": 200, "data": base64.b64encode(json.dumps("x" * 100).encode()).decode()}
    assert "exceeds the limit" in refused([reply], max_size=50).error


def zlib_bomb(size: int) -> bytes:
    """Return zlib data that decompresses to ``size`` zero bytes, made without holding them."""
    compressor = zlib.compressobj(9)
    chunk = bytes(MIB)
    out = [compressor.compress(chunk) for _ in range(size // MIB)]
    return b"".join([*out, compressor.flush()])


def test_zlib_bomb_is_refused_without_allocating_its_size() -> None:
    """A part claiming 1000 bytes that inflates to 64 MiB is refused after at most a few KiB of output."""
    bomb = zlib_bomb(64 * MIB)
    part = dict(rt_parts(bytes(1000), "bytes", compress=True)[0], data=base64.b64encode(bomb).decode())
    tracemalloc.start()
    try:
        error = refused([part])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.status == 502 and "decompresses to more than the 1000 bytes" in error.error
    assert peak < 4 * len(bomb) + MIB


def test_truncated_zlib_stream_is_refused() -> None:
    """A compressed part cut short is refused."""
    part = rt_parts(pattern(1000), "bytes", compress=True)[0]
    part["data"] = base64.b64encode(zlib.compress(pattern(1000))[:-6]).decode()
    assert "truncated zlib stream" in refused([part]).error


def test_invalid_zlib_data_is_refused() -> None:
    """A compressed part that is not zlib data is refused."""
    part = dict(rt_parts(b"abc", "bytes", compress=True)[0], data=base64.b64encode(b"not zlib").decode())
    assert "not valid zlib data" in refused([part]).error


# ------------------------------------------------------ replies: errors, subject page


def test_status_400_raises_request_error_with_peer_text() -> None:
    """A status-400 reply raises RequestError with the peer's status and error text."""
    reply = dict(HEADER, status=400, error="RPC Exception: rpc: file not found")
    error = refused([reply])
    assert (error.status, error.error) == (400, "RPC Exception: rpc: file not found")
    assert error.response["callId"] == 7


def test_error_in_a_later_part_fails_the_call() -> None:
    """An error status after some parts fails the call and finishes the assembler."""
    parts = rt_parts(pattern(2000), part_size=1000)
    assembler = ReplyAssembler()
    assert assembler.feed(parts[0]) is None
    with pytest.raises(RequestError) as info:
        assembler.feed(dict(HEADER, status=400, error="disk gone"))
    assert info.value.status == 400
    with pytest.raises(RequestError, match="already complete or failed"):
        assembler.feed(parts[1])


def test_subject_page_reply_is_base64_of_json() -> None:
    """A subject page reply (base64 of JSON text, no dataSerialization, no parts) decodes to the JSON value."""
    value = {"responses": [{"key": "a", "rt": 512}], "note": "caf\u00e9"}
    encoded = base64.b64encode(json.dumps(value, ensure_ascii=False).encode("latin-1")).decode()  # what btoa() makes
    reply = assemble([{"cmd": "getResponses", "callId": 2, "status": 200, "data": encoded}])
    assert reply == {"cmd": "getResponses", "callId": 2, "status": 200, "data": value}


def test_subject_page_reply_marked_json_decodes_too() -> None:
    """A subject page reply that says dataSerialization json (later page versions) decodes the same way."""
    encoded = base64.b64encode(b"true").decode()
    assert assemble([{"cmd": "setResult", "callId": 2, "status": 200, "dataSerialization": "json", "data": encoded}])["data"] is True


def test_reply_without_data_is_returned_as_it_is() -> None:
    """A status-200 reply without data comes back as it is."""
    reply = {"cmd": "ping", "callId": 3, "status": 200}
    assert assemble([reply]) == reply


def test_subject_page_error_text_is_read_from_data() -> None:
    """A subject page's status-400 reply carries its error text in data; RequestError has it."""
    encoded = base64.b64encode(json.dumps("Unknown message type: foo").encode()).decode()
    error = refused([{"cmd": "foo", "callId": 2, "status": 400, "data": encoded}])
    assert (error.status, error.error) == (400, "Unknown message type: foo")


def test_reply_without_status_is_refused() -> None:
    """A reply without a numeric status is refused with status 502."""
    assert refused([{"cmd": "rpc", "callId": 1}]).status == 502

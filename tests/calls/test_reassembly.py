"""Transfer and ReplyAssembler of syncws.reassembly, fed parts by hand on one thread: no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from syncws import callformat
from syncws.calls.reassembly import ReplyAssembler, Transfer
from syncws.exceptions import RequestError, RequestTimeout

DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes


def _parts(data: bytes, part_size: int, call_id: int = 5) -> list[tuple[callformat.PartHeader, bytes]]:
    """Each part of ``data`` as (its decoded header, the whole message)."""
    messages = [head + bytes(chunk) for head, chunk in callformat.binary_parts(call_id, memoryview(data), part_size)]
    return [(part, message) for message in messages if (part := callformat.decode_part_header(message)) is not None]


def _header(size: int, parts: int, **fields: Any) -> dict[str, Any]:
    return callformat.binary_reply_header("b", 5, size, parts, {"dataType": "bytes", **fields})


def test_transfer_collects_the_parts_into_the_reply() -> None:
    """Parts added in order are collected into the reply: the header's cmd, callId and status, and the bytes as data."""
    parts = _parts(DATA, 300)
    transfer = Transfer(_header(len(DATA), len(parts)), 5, "b")
    for part, message in parts:
        transfer.add(part, message)
    assert transfer.collect(timeout=0) == {"cmd": "b", "callId": 5, "status": 200, "data": DATA}


def test_transfer_of_nothing_is_complete_at_once() -> None:
    """A zero-byte reply (no parts) collects to empty bytes without waiting."""
    assert Transfer(_header(0, 0), 5, "b").collect(timeout=0)["data"] == b""


def test_transfer_reports_progress_per_part_up_to_the_total() -> None:
    """progress(received, total) is called once per part, ending at (size, size)."""
    calls: list[tuple[int, int]] = []
    parts = _parts(DATA, 400)
    transfer = Transfer(_header(len(DATA), len(parts)), 5, "b", progress=lambda r, t: calls.append((r, t)))
    for part, message in parts:
        transfer.add(part, message)
    assert calls == [(400, len(DATA)), (800, len(DATA)), (len(DATA), len(DATA))]


def test_transfer_times_out_waiting_for_the_next_part() -> None:
    """collect raises RequestTimeout when the next part does not come within the timeout."""
    parts = _parts(DATA, 300)
    transfer = Transfer(_header(len(DATA), len(parts)), 5, "b")
    transfer.add(*parts[0])
    with pytest.raises(RequestTimeout):
        transfer.collect(timeout=0.01)


def test_transfer_refuses_a_part_out_of_order() -> None:
    """add raises ValueError for a part that is not the next one."""
    parts = _parts(DATA, 300)
    transfer = Transfer(_header(len(DATA), len(parts)), 5, "b")
    with pytest.raises(ValueError, match="out of order"):
        transfer.add(*parts[1])


def test_transfer_with_a_damaged_part_fails_with_502() -> None:
    """A part whose CRC-32 does not match fails the collect with RequestError 502 that names the part."""
    parts = _parts(DATA, 300)
    transfer = Transfer(_header(len(DATA), len(parts)), 5, "b")
    for index, (part, message) in enumerate(parts):
        if index == 2:
            message = message[:-1] + bytes([message[-1] ^ 1])
        transfer.add(part, message)
    with pytest.raises(RequestError) as raised:
        transfer.collect(timeout=0)
    assert raised.value.status == 502 and "part 2" in raised.value.error
    assert raised.value.response == {"cmd": "b", "callId": 5, "status": 200}


def test_failed_transfer_raises_its_error_and_drops_later_parts() -> None:
    """After fail(), collect raises that error, a second fail is ignored, and parts still arriving are dropped."""
    parts = _parts(DATA, 300)
    transfer = Transfer(_header(len(DATA), len(parts)), 5, "b")
    transfer.add(*parts[0])
    error = ConnectionError("closed")
    assert transfer.fail(error)
    assert not transfer.fail(RuntimeError("second"))
    transfer.add(*parts[1])
    with pytest.raises(ConnectionError) as raised:
        transfer.collect(timeout=0)
    assert raised.value is error


def test_transfer_refuses_an_array_header_that_does_not_fit() -> None:
    """A Transfer for an array header whose layout does not fit its size raises ValueError at once."""
    pytest.importorskip("numpy")
    with pytest.raises(ValueError):
        Transfer(_header(10, 1, dataType="ndarray", dtype="<f8", shape=[3]), 5, "b")


def test_array_transfer_gives_a_writable_array() -> None:
    """An ndarray reply collects into a writable array of the announced dtype and shape."""
    np = pytest.importorskip("numpy")
    array = np.arange(300, dtype="<f8").reshape(10, 30)
    binary = callformat.as_binary(array)
    assert binary is not None
    view, fields = binary
    parts = _parts(bytes(view), 1000)
    transfer = Transfer(callformat.binary_reply_header("a", 5, len(view), len(parts), fields), 5, "a")
    for part, message in parts:
        transfer.add(part, message)
    value = transfer.collect(timeout=0)["data"]
    assert value.shape == (10, 30) and value.dtype == array.dtype and (value == array).all()
    value[0, 0] = -1.0


def test_reply_assembler_refuses_parts_past_or_short_of_the_size() -> None:
    """ReplyAssembler.add raises ValueError past the announced size, value() when the parts fell short."""
    assembler = ReplyAssembler({"dataType": "bytes", "size": 4})
    assembler.add(b"abc")
    with pytest.raises(ValueError, match="past"):
        assembler.add(b"de")
    with pytest.raises(ValueError, match="not the 4 announced"):
        assembler.value()
    assembler.add(b"d")
    assert assembler.value() == b"abcd"

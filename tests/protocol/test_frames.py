"""Frames without I/O: headers, masking, close payloads."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncws import frames
from syncws.exceptions import ProtocolError

pytestmark = pytest.mark.timeout(60)


def _reference_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4))
def test_apply_mask_matches_bytewise_xor(data: bytes, key: bytes) -> None:
    """apply_mask gives the same bytes as a byte-by-byte XOR, for any length."""
    buf = bytearray(data)
    frames.apply_mask(buf, key)
    assert bytes(buf) == _reference_mask(data, key)


PURE_SIZES = [0, 1, 3, 255, 256, 1024, 1025, 65537, 262_143, 262_144, 262_145, 600_003]


@pytest.mark.parametrize("size", PURE_SIZES)
def test_apply_mask_pure_python_path(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Without numpy, masking in place (a bytearray or a memoryview) gives what one big-integer XOR of the whole gives."""
    data, key = os.urandom(size), os.urandom(4)
    expected = frames.masked(data, key)  # one big-integer XOR of the whole payload: the reference
    monkeypatch.setattr(frames, "HAVE_NUMPY", False)
    buf = bytearray(data)
    frames.apply_mask(buf, key)
    assert buf == expected
    frames.apply_mask(memoryview(buf), key)
    assert bytes(buf) == data


@pytest.mark.parametrize("size", PURE_SIZES)
def test_mask_into_pure_python_path(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Without numpy, mask_into writes the masked source into a memoryview target, leaving the source as it was."""
    data, key = os.urandom(size), os.urandom(4)
    monkeypatch.setattr(frames, "HAVE_NUMPY", False)
    target = bytearray(size)
    frames.mask_into(memoryview(target), data, key)
    assert target == frames.masked(data, key)


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 1 << 20])
def test_encode_header_length_forms(length: int) -> None:
    """The header uses the 7-bit, 16-bit or 64-bit length form as RFC 6455 5.2 says."""
    header = frames.encode_header(frames.OP_BINARY, length)
    parsed = frames.parse_header(header[0], header[1])
    assert parsed.fin and parsed.opcode == frames.OP_BINARY and not parsed.masked
    if length < 126:
        assert parsed.length_code == length and len(header) == 2
    elif length < 65536:
        assert parsed.length_code == 126 and int.from_bytes(header[2:4], "big") == length
    else:
        assert parsed.length_code == 127 and int.from_bytes(header[2:10], "big") == length


def test_encode_frame_masked_roundtrip() -> None:
    """A masked frame carries its key, and unmasking with it restores the payload."""
    key = b"\x01\x02\x03\x04"
    frame = frames.encode_frame(frames.OP_TEXT, b"hello", mask_key=key)
    assert frame[1] & 0x80 and frame[2:6] == key
    body = bytearray(frame[6:])
    frames.apply_mask(body, key)
    assert body == b"hello"


@pytest.mark.parametrize(
    "b1, b2, masked, message",
    [
        (0x81 | 0x40, 0x80, True, "reserved bits"),
        (0x83, 0x80, True, "reserved opcode"),
        (0x81, 0x00, True, "not masked"),
        (0x81, 0x80, False, "is masked"),
        (0x09, 0x80, True, "fragmented control"),
        (0x89, 0x80 | 126, True, "longer than 125"),
    ],
)
def test_check_header_rejects(b1: int, b2: int, masked: bool, message: str) -> None:
    """check_header raises ProtocolError with close code 1002 for each header RFC 6455 forbids."""
    with pytest.raises(ProtocolError, match=message) as info:
        frames.check_header(frames.parse_header(b1, b2), expect_masked=masked)
    assert info.value.code == 1002


def test_parse_close_valid_and_empty() -> None:
    """parse_close reads code and reason, and gives 1005 for an empty payload."""
    assert frames.parse_close(b"") == (1005, "")
    assert frames.parse_close(frames.encode_close(1001, "bye")) == (1001, "bye")


@pytest.mark.parametrize("payload, code", [(b"\x03", 1002), (b"\x03\xed", 1002), (b"\x03\xe8\xff", 1007), (b"\x0b\xb7", 1002)])
def test_parse_close_rejects(payload: bytes, code: int) -> None:
    """A one-byte payload or an invalid code gives 1002, a non-UTF-8 reason 1007."""
    with pytest.raises(ProtocolError) as info:
        frames.parse_close(payload)
    assert info.value.code == code


def test_encode_close_truncates_at_character_boundary() -> None:
    """A long reason is cut to 123 bytes without splitting a UTF-8 character."""
    payload = frames.encode_close(1008, "é" * 100)
    assert len(payload) <= 125
    payload[2:].decode("utf-8")


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_codes(code: int) -> None:
    """Codes that must never appear on the wire are invalid."""
    assert not frames.is_valid_close_code(code)


def test_mask_keys_are_four_fresh_bytes_from_every_thread() -> None:
    """MaskKeys hands out 4-byte keys, never the same run of them twice, to many threads at once (across refills)."""
    import threading

    keys = frames.MaskKeys()
    got: list[bytes] = []
    lock = threading.Lock()

    def take() -> None:
        mine = [keys.next() for _ in range(1500)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(got) == 6000 and all(len(k) == 4 for k in got)
    assert len(set(got)) > 5990  # 6,000 draws from 2**32: a repeat or two by chance at most, not a reused pool

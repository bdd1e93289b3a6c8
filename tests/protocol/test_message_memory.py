"""What a large message costs the reader: its size and a constant, compressed or not, text or binary (traced allocations, no sockets)."""

from __future__ import annotations

import random
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Optional

import pytest

from syncws import frames
from syncws.exceptions import PayloadTooBig
from syncws.protocol import assembly
from syncws.protocol.assembly import STAGE_AT, Assembly
from syncws.protocol.deflate import INFLATE_PIECE, Agreement, DeflateOptions, PerMessageDeflate
from syncws.protocol.payload import PartialMessage
from syncws.protocol.reader import FrameReader, Message

pytestmark = pytest.mark.timeout(120)
#: Where a message is not mapped (not Linux), it grows in a bytearray as before, and costs twice its size.
mapped_only = pytest.mark.skipif(not assembly._MAPPING, reason="large messages are mapped on Linux only")

MIB = 1 << 20
SIZE = 48 * MIB
LIMIT = 1.3  # the most a message may cost, as a multiple of its size
LINE = b'{"time": 12.5, "values": [1, 2, 3, 4], "name": "frame"}\n'


def deflated(data: bytes) -> bytes:
    """``data`` deflated as one message, as a peer sends it (tail stripped)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A frame as a server sends it to a client (unmasked)."""
    return frames.encode_header(opcode, len(payload), fin, None, rsv) + payload


def feed(reader: FrameReader, wire: bytes, step: int = 64 * 1024) -> Optional[Message]:
    """Give the reader ``wire`` ``step`` bytes at a time, as a socket would; the message it hands out."""
    for start in range(0, len(wire), step):
        reader.receive_data(wire[start : start + step])
        event = reader.next_event()
        if event is not None:
            assert isinstance(event, (bytes, str))
            return event
    return None


def read_traced(wire: bytes, compressed: bool) -> tuple[Optional[Message], int]:
    """What a client's reader hands out for ``wire``, and the peak of the memory Python allocated meanwhile."""
    codec = PerMessageDeflate(Agreement(), True, DeflateOptions()) if compressed else None
    reader = FrameReader(True, 64 * MIB, lambda code, reason: None, codec)
    tracemalloc.start()
    try:
        message = feed(reader, wire)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return message, peak


@mapped_only
@pytest.mark.parametrize(
    ("kind", "opcode", "compressed"),
    [
        ("zeros", frames.OP_BINARY, True),
        ("text-like", frames.OP_BINARY, True),
        ("text-like", frames.OP_TEXT, True),
        ("text-like", frames.OP_TEXT, False),
        ("accented", frames.OP_TEXT, True),
        ("text-like", frames.OP_BINARY, False),
    ],
)
def test_a_large_message_costs_its_size(kind: str, opcode: int, compressed: bool) -> None:
    """A 48 MiB message, compressed or not, text or binary, costs the reader at most 1.3 times its size, and comes out whole."""
    if kind == "zeros":
        data = bytes(SIZE)
    elif kind == "accented":
        data = ("\u00e9t\u00e9 " * (SIZE // 7)).encode()
    else:
        data = (LINE * (SIZE // len(LINE) + 1))[:SIZE]
    wire = frame(opcode, deflated(data) if compressed else data, rsv=frames.RSV1 if compressed else 0)
    message, peak = read_traced(wire, compressed)
    expected: Message = data if opcode == frames.OP_BINARY else data.decode()
    assert message == expected
    assert peak <= LIMIT * len(data), f"{peak / MIB:.1f} MiB for {len(data) / MIB:.1f} MiB"


@mapped_only
def test_a_compressed_message_in_many_frames_costs_its_size() -> None:
    """A compressed text message in 64 KiB frames (RSV1 on the first only) costs at most 1.3 times its size too."""
    data = (LINE * (SIZE // len(LINE) + 1))[:SIZE]
    payload = deflated(data)
    step = 64 * 1024
    pieces = [payload[start : start + step] for start in range(0, len(payload), step)]
    wire = b"".join(
        frame(frames.OP_TEXT if i == 0 else frames.OP_CONTINUATION, piece, fin=i == len(pieces) - 1, rsv=frames.RSV1 if i == 0 else 0)
        for i, piece in enumerate(pieces)
    )
    message, peak = read_traced(wire, True)
    assert message == data.decode()
    assert peak <= LIMIT * len(data), f"{peak / MIB:.1f} MiB for {len(data) / MIB:.1f} MiB"


def test_inflating_comes_out_in_bounded_pieces() -> None:
    """64 KiB on the wire that inflate to 48 MiB come out in pieces of at most INFLATE_PIECE bytes, not one block."""
    data = bytes(SIZE)
    codec = PerMessageDeflate(Agreement(), False, DeflateOptions())
    sizes: list[int] = []
    codec.inflate_into(deflated(data), None, 0, lambda piece: sizes.append(len(piece)))
    codec.end_message_into(None, sum(sizes), lambda piece: sizes.append(len(piece)))
    assert sum(sizes) == SIZE
    assert max(sizes) <= INFLATE_PIECE


def test_the_size_limit_holds_for_pieces() -> None:
    """Inflating in pieces still stops one byte past the room with PayloadTooBig (1009), having given out no more than the room."""
    codec = PerMessageDeflate(Agreement(), False, DeflateOptions())
    given: list[int] = []
    with pytest.raises(PayloadTooBig) as info:
        codec.inflate_into(deflated(bytes(4 * MIB)), MIB, 0, lambda piece: given.append(len(piece)))
    assert info.value.code == 1009
    assert sum(given) <= MIB


# ---------------------------------------------------------------------- the assembly: every width of text


TEXTS = {
    "ASCII": "abc xyz",
    "Latin-1": "\u00e9t\u00e9 \u00ff",
    "two bytes": "\u0100 \u20ac \u6f22",
    "four bytes": "a\U0001f600 b",
    "all widths": "x\u00e9\u20ac\U0001f600",
    "controls": "\x00\x7f\x80\xff",
}


def chunks(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """``data`` cut at random places, characters split between chunks too."""
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 3, 7, 4093, 65536, 300_000, MIB])
        yield data[pos : pos + step]
        pos += step


@pytest.fixture(params=["C API", "without it"])
def made_in_place(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each assembly test runs with messages made in place (CPython) and with the plain copy that stands in elsewhere."""
    if request.param == "without it":
        monkeypatch.setattr(assembly, "_fresh_bytes", None)
        monkeypatch.setattr(assembly, "_fresh_str", None)
    elif assembly._fresh_str is None:
        pytest.skip("no C API here")
    return str(request.param)


@pytest.mark.parametrize("name", sorted(TEXTS))
@pytest.mark.parametrize("size", [100, STAGE_AT - 5, STAGE_AT + 1, 3 * STAGE_AT + 12_345])
def test_text_of_every_width_comes_out_as_it_went_in(name: str, size: int, made_in_place: str) -> None:
    """Text of each storage width (and mixed, with an ASCII run first), small or mapped, cut anywhere, is the str it was."""
    rng = random.Random(f"{name} {size}")
    sample = TEXTS[name]
    text = ("y" * (size // 3) + sample * (size // len(sample.encode()) + 1))[: size // 2]
    message = PartialMessage(frames.OP_TEXT)
    for chunk in chunks(text.encode(), rng):
        message.add(bytearray(chunk))
    out = message.result()
    assert out == text
    assert hash(out) == hash(text) and out.isascii() == text.isascii() and len(out) == len(text)


@pytest.mark.parametrize("size", [0, 100, STAGE_AT, STAGE_AT + 1, 5 * STAGE_AT + 3])
def test_binary_comes_out_as_it_went_in(size: int, made_in_place: str) -> None:
    """Binary of any size, small or mapped, appended in pieces, is the bytes it was."""
    data = random.Random(size).randbytes(size)
    whole = Assembly()
    for chunk in chunks(data, random.Random(size)):
        whole.append(chunk)
    assert whole.mapped == (size > STAGE_AT and assembly._MAPPING)
    out = whole.take_bytes()
    assert out == data and type(out) is bytes and hash(out) == hash(data)


@mapped_only
def test_a_message_given_up_lets_go_of_its_map() -> None:
    """Clearing an assembly that grew a map (a connection that fails) unmaps it and starts empty."""
    whole = Assembly()
    whole.append(bytes(2 * STAGE_AT))
    assert whole.mapped
    whole.clear()
    assert not whole.mapped and whole.size == 0
    whole.append(b"again")
    assert whole.take_bytes() == b"again"

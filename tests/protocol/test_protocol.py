"""The sans-I/O protocol core on plain bytes, without sockets: every rule the Autobahn|Testsuite checks."""

from __future__ import annotations

import os
import struct
import tracemalloc
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncws import frames
from syncws.exceptions import ConnectionClosed, PayloadTooBig, ProtocolError
from syncws.protocol.protocol import Close, CloseCode, Event, Ping, Pong, Protocol, State

pytestmark = pytest.mark.timeout(60)


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A frame as a client sends it (masked), for a server-side Protocol to read."""
    frame = bytearray(frames.encode_frame(opcode, payload, fin=fin, mask_key=os.urandom(4)))
    frame[0] |= rsv << 4
    return bytes(frame)


def server_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A frame as a server sends it (unmasked), for a client-side Protocol to read."""
    return frames.encode_frame(opcode, payload, fin=fin)


def events(protocol: Protocol, data: bytes = b"") -> list[Event]:
    """Feed ``data`` and return every event it completes."""
    protocol.receive_data(data)
    out: list[Event] = []
    while (event := protocol.next_event()) is not None:
        out.append(event)
    return out


def refused(protocol: Protocol, data: bytes) -> ProtocolError:
    """Feed ``data``, expecting a ProtocolError; return it."""
    protocol.receive_data(data)
    with pytest.raises(ProtocolError) as caught:
        while protocol.next_event() is not None:
            pass
    return caught.value


@pytest.fixture
def server() -> Protocol:
    """A server-side Protocol with a 1 KiB message limit."""
    return Protocol(is_client=False, max_message_size=1024)


# ---------------------------------------------------------------------- messages


def test_small_text_and_binary_messages(server: Protocol) -> None:
    """A whole text frame comes out as str and a binary frame as bytes, in order."""
    assert events(server, client_frame(frames.OP_TEXT, "héllo".encode()) + client_frame(frames.OP_BINARY, b"\x00\xff")) == ["héllo", b"\x00\xff"]


def test_client_side_reads_unmasked_frames() -> None:
    """A client-side Protocol reads a server's unmasked frames, small and large."""
    client = Protocol(is_client=True)
    big = os.urandom(70_000)
    assert events(client, server_frame(frames.OP_TEXT, b"hi") + server_frame(frames.OP_BINARY, big)) == ["hi", big]


def test_empty_messages(server: Protocol) -> None:
    """Empty text and binary messages come out as '' and b''."""
    assert events(server, client_frame(frames.OP_TEXT) + client_frame(frames.OP_BINARY)) == ["", b""]


def test_large_payload_in_one_feed(server: Protocol) -> None:
    """A payload past the fast-path size, fed at once, comes out whole and unmasked."""
    big = Protocol(is_client=False, max_message_size=None)
    payload = os.urandom(200_003)
    message = events(big, client_frame(frames.OP_BINARY, payload))
    assert message == [payload] and type(message[0]) is bytes


def test_large_payload_read_into_its_own_buffer() -> None:
    """While a large payload arrives, payload_buffer offers its own memory; bytes written there complete the message."""
    protocol = Protocol(is_client=False, max_message_size=None)
    payload = os.urandom(300_001)
    frame = client_frame(frames.OP_BINARY, payload)
    protocol.receive_data(frame[:1000])
    assert protocol.next_event() is None
    offset = 1000
    while (view := protocol.payload_buffer()) is not None:
        with view:
            count = min(len(view), 65_537, len(frame) - offset)
            view[:count] = frame[offset : offset + count]
        protocol.payload_received(count)
        offset += count
        event = protocol.next_event()
        if event is not None:
            break
    assert offset == len(frame)
    assert event == payload


@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_any_split_of_the_stream_gives_the_same_events(data: st.DataObject) -> None:
    """Feeding a stream in pieces of any sizes gives the same events as feeding it at once."""
    stream = (
        client_frame(frames.OP_TEXT, "a€b".encode()[:3], fin=False)
        + client_frame(frames.OP_PING, b"p")
        + client_frame(frames.OP_CONTINUATION, "a€b".encode()[3:])
        + client_frame(frames.OP_BINARY, bytes(range(256)) * 300)
        + client_frame(frames.OP_PONG, b"q")
        + client_frame(frames.OP_CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    protocol = Protocol(is_client=False, max_message_size=None)
    got: list[Event] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += events(protocol, stream[start:cut])
        start = cut
    assert got == [Ping(b"p"), "a€b", bytes(range(256)) * 300, Pong(b"q"), Close(1000, "bye")]


# ---------------------------------------------------------------------- fragmentation


def test_fragmented_text_and_binary_are_joined(server: Protocol) -> None:
    """Fragments of a text and of a binary message come out as one message each."""
    stream = (
        client_frame(frames.OP_TEXT, b"ab", fin=False)
        + client_frame(frames.OP_CONTINUATION, b"", fin=False)
        + client_frame(frames.OP_CONTINUATION, b"cd")
        + client_frame(frames.OP_BINARY, b"\x01", fin=False)
        + client_frame(frames.OP_CONTINUATION, b"\x02")
    )
    assert events(server, stream) == ["abcd", b"\x01\x02"]


def test_control_frames_inside_a_fragmented_message(server: Protocol) -> None:
    """Pings and pongs between fragments come out at once, before the message they interrupt."""
    stream = (
        client_frame(frames.OP_TEXT, b"a", fin=False)
        + client_frame(frames.OP_PING, b"1")
        + client_frame(frames.OP_CONTINUATION, b"b", fin=False)
        + client_frame(frames.OP_PONG, b"2")
        + client_frame(frames.OP_CONTINUATION, b"c")
    )
    assert events(server, stream) == [Ping(b"1"), Pong(b"2"), "abc"]


def test_continuation_without_a_message_is_refused(server: Protocol) -> None:
    """A continuation frame with no message to continue is a protocol error (1002)."""
    assert refused(server, client_frame(frames.OP_CONTINUATION, b"x")).code == CloseCode.PROTOCOL_ERROR


def test_new_message_inside_a_fragmented_one_is_refused(server: Protocol) -> None:
    """A text or binary frame while a message is still in fragments is a protocol error (1002)."""
    error = refused(server, client_frame(frames.OP_TEXT, b"a", fin=False) + client_frame(frames.OP_BINARY, b"b"))
    assert error.code == CloseCode.PROTOCOL_ERROR


def test_fragmented_control_frame_is_refused(server: Protocol) -> None:
    """A ping without FIN is a protocol error (1002)."""
    assert refused(server, client_frame(frames.OP_PING, b"x", fin=False)).code == CloseCode.PROTOCOL_ERROR


def test_control_frame_over_125_bytes_is_refused(server: Protocol) -> None:
    """A ping with a 126-byte payload is a protocol error (1002)."""
    assert refused(server, client_frame(frames.OP_PING, bytes(126))).code == CloseCode.PROTOCOL_ERROR


def test_empty_fragments_cost_no_memory_each() -> None:
    """200,000 empty continuation frames hold no memory per fragment while the message is in progress."""
    protocol = Protocol(is_client=False, max_message_size=1024)
    empty = client_frame(frames.OP_CONTINUATION, b"", fin=False)
    assert events(protocol, client_frame(frames.OP_BINARY, b"a", fin=False)) == []
    batch = empty * 10_000
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(20):
            assert events(protocol, batch) == []
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 64 * 1024
    assert events(protocol, client_frame(frames.OP_CONTINUATION, b"z")) == [b"az"]


# ---------------------------------------------------------------------- UTF-8


def test_invalid_utf8_text_is_refused_with_1007(server: Protocol) -> None:
    """A text message that is not UTF-8 closes with 1007."""
    assert refused(server, client_frame(frames.OP_TEXT, b"\xff")).code == CloseCode.INVALID_DATA


def test_invalid_utf8_fails_at_the_first_fragment(server: Protocol) -> None:
    """An invalid byte in the first fragment fails the message at once, before the last fragment comes."""
    assert refused(server, client_frame(frames.OP_TEXT, b"ok\xc0\xaf", fin=False)).code == CloseCode.INVALID_DATA


def test_character_split_across_fragments_is_valid(server: Protocol) -> None:
    """A UTF-8 character split between two fragments is put back together."""
    euro = "€".encode()
    stream = client_frame(frames.OP_TEXT, euro[:1], fin=False) + client_frame(frames.OP_CONTINUATION, euro[1:])
    assert events(server, stream) == ["€"]


def test_text_ending_inside_a_character_is_refused(server: Protocol) -> None:
    """A text message whose last fragment ends inside a character closes with 1007."""
    stream = client_frame(frames.OP_TEXT, b"a", fin=False) + client_frame(frames.OP_CONTINUATION, "€".encode()[:2])
    assert refused(server, stream).code == CloseCode.INVALID_DATA


def test_close_reason_must_be_utf8(server: Protocol) -> None:
    """A close frame whose reason is not UTF-8 closes with 1007."""
    assert refused(server, client_frame(frames.OP_CLOSE, struct.pack("!H", 1000) + b"\xff")).code == CloseCode.INVALID_DATA


# ---------------------------------------------------------------------- reserved bits, opcodes, lengths


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_reserved_bits_are_refused(server: Protocol, rsv: int) -> None:
    """A frame with any RSV bit set (no extension negotiated) is a protocol error (1002)."""
    assert refused(server, client_frame(frames.OP_TEXT, b"x", rsv=rsv)).code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_are_refused(server: Protocol, opcode: int) -> None:
    """A frame with a reserved opcode is a protocol error (1002)."""
    assert refused(server, client_frame(opcode, b"")).code == CloseCode.PROTOCOL_ERROR


def test_unmasked_frame_from_a_client_is_refused(server: Protocol) -> None:
    """A server refuses an unmasked frame (section 5.1)."""
    assert refused(server, server_frame(frames.OP_TEXT, b"x")).code == CloseCode.PROTOCOL_ERROR


def test_masked_frame_from_a_server_is_refused() -> None:
    """A client refuses a masked frame (section 5.1)."""
    assert refused(Protocol(is_client=True), client_frame(frames.OP_TEXT, b"x")).code == CloseCode.PROTOCOL_ERROR


def test_64_bit_length_with_the_high_bit_is_refused(server: Protocol) -> None:
    """A 64-bit payload length with its most significant bit set is a protocol error."""
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + os.urandom(4)
    assert refused(server, header).code == CloseCode.PROTOCOL_ERROR


# ---------------------------------------------------------------------- limits


def test_oversize_message_is_refused_from_its_header(server: Protocol) -> None:
    """A frame announcing more than max_message_size raises PayloadTooBig (1009) before any payload byte is there."""
    header = frames.encode_header(frames.OP_BINARY, 2048, mask_key=os.urandom(4))
    error = refused(server, header)
    assert isinstance(error, PayloadTooBig) and error.code == CloseCode.MESSAGE_TOO_BIG


def test_oversize_fragmented_message_is_refused(server: Protocol) -> None:
    """Fragments that together pass max_message_size raise PayloadTooBig at the fragment that crosses it."""
    stream = client_frame(frames.OP_BINARY, bytes(1000), fin=False) + frames.encode_header(frames.OP_CONTINUATION, 100, mask_key=os.urandom(4))
    assert refused(server, stream).code == CloseCode.MESSAGE_TOO_BIG


def test_claimed_length_no_memory_can_hold_is_1009() -> None:
    """Without a limit, a frame claiming 2**62 bytes is refused with 1009 instead of raising MemoryError."""
    protocol = Protocol(is_client=False, max_message_size=None)
    assert refused(protocol, frames.encode_header(frames.OP_BINARY, 1 << 62, mask_key=os.urandom(4))).code == CloseCode.MESSAGE_TOO_BIG


# ---------------------------------------------------------------------- close codes and the closing handshake


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999])
def test_valid_close_codes_come_out(server: Protocol, code: int) -> None:
    """A close frame with a valid code comes out as Close with that code and reason."""
    assert events(server, client_frame(frames.OP_CLOSE, struct.pack("!H", code) + b"why")) == [Close(code, "why")]
    assert server.close_code == code


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_invalid_close_codes_are_refused(server: Protocol, code: int) -> None:
    """A close frame with a code that may not be sent is a protocol error (1002)."""
    assert refused(server, client_frame(frames.OP_CLOSE, struct.pack("!H", code))).code == CloseCode.PROTOCOL_ERROR


def test_one_byte_close_payload_is_refused(server: Protocol) -> None:
    """A close frame with a one-byte payload is a protocol error (1002)."""
    assert refused(server, client_frame(frames.OP_CLOSE, b"\x03")).code == CloseCode.PROTOCOL_ERROR


def test_empty_close_is_1005(server: Protocol) -> None:
    """A close frame without a payload comes out with code 1005 (no status received)."""
    assert events(server, client_frame(frames.OP_CLOSE)) == [Close(CloseCode.NO_STATUS_RCVD, "")]


def test_peer_begins_the_closing_handshake(server: Protocol) -> None:
    """After the peer's close frame, our answer closes the connection: OPEN, then CLOSED once answered."""
    assert server.state is State.OPEN
    events(server, client_frame(frames.OP_CLOSE, struct.pack("!H", 1001)))
    answer = server.send_close(1001)
    assert answer == frames.encode_frame(frames.OP_CLOSE, struct.pack("!H", 1001))
    assert server.state is State.CLOSED


def test_we_begin_the_closing_handshake(server: Protocol) -> None:
    """After our close frame the state is CLOSING; data that still arrives is dropped, and the peer's close frame comes out."""
    server.send_close(1000, "bye")
    assert server.state is State.CLOSING
    stream = client_frame(frames.OP_TEXT, b"late") + client_frame(frames.OP_BINARY, b"late") + client_frame(frames.OP_CLOSE, struct.pack("!H", 1000))
    assert events(server, stream) == [Close(1000, "")]


def test_nothing_is_sent_after_our_close_frame(server: Protocol) -> None:
    """Once our close frame is out, check_open, send_ping and a second send_close raise ConnectionClosed."""
    server.send_close()
    with pytest.raises(ConnectionClosed):
        server.check_open()
    with pytest.raises(ConnectionClosed):
        server.send_ping(b"")
    with pytest.raises(ConnectionClosed):
        server.send_close()


def test_ping_payload_limit() -> None:
    """send_ping refuses a payload over 125 bytes with ValueError."""
    with pytest.raises(ValueError):
        Protocol(is_client=True).send_ping(bytes(126))


def test_client_frames_are_masked_and_server_frames_are_not() -> None:
    """A client's control frames carry a mask; a server's do not."""
    assert Protocol(is_client=True).send_ping(b"x")[1] & 0x80
    assert not Protocol(is_client=False).send_ping(b"x")[1] & 0x80


def test_fail_sends_one_close_frame_with_its_code(server: Protocol) -> None:
    """fail() returns our close frame with the error's code once, then None; the close code is ours."""
    frame: Optional[bytes] = server.fail(CloseCode.INVALID_DATA, "bad text")
    assert frame == frames.encode_frame(frames.OP_CLOSE, struct.pack("!H", 1007) + b"bad text")
    assert server.fail(CloseCode.PROTOCOL_ERROR, "again") is None
    assert server.close_code == CloseCode.INVALID_DATA


def test_discard_until_close_skips_frames_in_pieces(server: Protocol) -> None:
    """After a failure, frames are dropped, a large one across several feeds, until the peer's close frame."""
    server.fail(CloseCode.PROTOCOL_ERROR, "")
    big = client_frame(frames.OP_BINARY, bytes(5000))
    server.receive_data(big[:100])
    assert server.discard_until_close() is None
    server.receive_data(big[100:] + client_frame(frames.OP_TEXT, b"x") + client_frame(frames.OP_CLOSE, struct.pack("!H", 1002)))
    assert server.discard_until_close() is True


def test_eof_without_close_is_1006(server: Protocol) -> None:
    """The stream ending without a close frame leaves the connection CLOSED with 1006."""
    server.receive_eof()
    assert server.state is State.CLOSED and server.close_code == CloseCode.ABNORMAL_CLOSURE

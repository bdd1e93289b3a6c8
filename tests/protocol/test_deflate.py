"""permessage-deflate without sockets: the header grammar, offers and responses, the codec, and the protocol core reading compressed frames."""

from __future__ import annotations

import os
import tracemalloc
import zlib
from typing import Optional

import pytest

from syncws import frames
from syncws.exceptions import PayloadTooBig, ProtocolError
from syncws.protocol.deflate import (
    Agreement,
    DeflateOptions,
    NegotiationError,
    PerMessageDeflate,
    accept_offers,
    check_response,
    client_offer,
    parse_extensions,
    resolve,
)
from syncws.protocol.protocol import Ping, Protocol

pytestmark = pytest.mark.timeout(60)

DEFAULTS = DeflateOptions()
PLAIN = Agreement()


def agreed(offer: str, options: DeflateOptions = DEFAULTS) -> Optional[Agreement]:
    """The server's agreement for an offer header, or None when it declines every offer."""
    accepted = accept_offers(offer, options)
    return accepted[1] if accepted is not None else None


def pair(agreement: Agreement = PLAIN, options: DeflateOptions = DEFAULTS) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A client's and a server's codec for the same agreement."""
    return PerMessageDeflate(agreement, True, options), PerMessageDeflate(agreement, False, options)


def roundtrip(sender: PerMessageDeflate, receiver: PerMessageDeflate, data: bytes, room: Optional[int] = None) -> bytes:
    """Compress one message with ``sender`` and inflate it with ``receiver``."""
    wire = sender.compress(data)
    out = receiver.inflate(wire, room)
    return out + receiver.end_message(None if room is None else room - len(out), len(out))


def raw_deflate(data: bytes, wbits: int = 15) -> bytes:
    """``data`` deflated as one message by plain zlib (tail stripped), as any peer would send it."""
    c = zlib.compressobj(9, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0) -> bytes:
    """A masked frame with the given RSV bits (4 = RSV1), for a server-side Protocol."""
    frame = bytearray(frames.encode_frame(opcode, payload, fin=fin, mask_key=os.urandom(4)))
    frame[0] |= rsv << 4
    return bytes(frame)


def server_protocol(max_message_size: Optional[int] = 1 << 20, agreement: Agreement = PLAIN) -> Protocol:
    """A server-side Protocol with permessage-deflate agreed."""
    return Protocol(False, max_message_size, PerMessageDeflate(agreement, False, DEFAULTS))


def next_message(protocol: Protocol, data: bytes) -> object:
    protocol.receive_data(data)
    return protocol.next_event()


# ---------------------------------------------------------------------- the header's grammar


def test_parse_extensions_reads_several_offers_with_parameters() -> None:
    """Several comma-separated extensions with ';' parameters come out in order, names lowered, values unquoted."""
    parsed = parse_extensions('permessage-deflate; client_max_window_bits; server_max_window_bits="10", x-webkit-deflate-frame , Permessage-Deflate')
    assert parsed == [
        ("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")]),
        ("x-webkit-deflate-frame", []),
        ("permessage-deflate", []),
    ]


@pytest.mark.parametrize("header", ["permessage-deflate;", "permessage-deflate; =3", "permessage-deflate x", 'permessage-deflate; a="b c"', "@"])
def test_parse_extensions_refuses_malformed_headers(header: str) -> None:
    """A header that breaks RFC 6455 section 9.1's grammar raises NegotiationError."""
    with pytest.raises(NegotiationError):
        parse_extensions(header)


# ---------------------------------------------------------------------- the server's answer


def test_server_accepts_a_plain_offer() -> None:
    """An offer without parameters is accepted as it is: the response is the bare extension name."""
    accepted = accept_offers("permessage-deflate", DEFAULTS)
    assert accepted == ("permessage-deflate", Agreement())


def test_server_answers_a_browser_offer() -> None:
    """A browser's offer (client_max_window_bits without a value) is accepted; nothing is asked back by default."""
    assert accept_offers("permessage-deflate; client_max_window_bits", DEFAULTS) == ("permessage-deflate", Agreement())


def test_server_honours_server_no_context_takeover_and_window_bits() -> None:
    """server_no_context_takeover and server_max_window_bits in the offer appear in the response and bind the server."""
    value, agreement = accept_offers("permessage-deflate; server_no_context_takeover; server_max_window_bits=10", DEFAULTS) or ("", Agreement())
    assert value == "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"
    codec = PerMessageDeflate(agreement, False, DEFAULTS)
    assert codec.local_no_context_takeover and codec.local_window_bits == 10


def test_server_echoes_client_no_context_takeover() -> None:
    """A client that offers client_no_context_takeover hears it back, so the server may drop its inflater between messages."""
    agreement = agreed("permessage-deflate; client_no_context_takeover")
    assert agreement is not None and agreement.client_no_context_takeover
    assert PerMessageDeflate(agreement, False, DEFAULTS).remote_no_context_takeover


def test_server_asks_for_client_window_only_where_the_client_allows() -> None:
    """client_max_window_bits goes into the response only when the offer has it, at the smaller of the two values."""
    options = DeflateOptions(client_max_window_bits=11)
    assert agreed("permessage-deflate", options) == Agreement()
    assert agreed("permessage-deflate; client_max_window_bits", options) == Agreement(client_max_window_bits=11)
    assert agreed("permessage-deflate; client_max_window_bits=9", options) == Agreement(client_max_window_bits=9)


def test_server_states_its_configured_window() -> None:
    """A server configured with server_max_window_bits states it even when not asked, and takes the client's if smaller."""
    options = DeflateOptions(server_max_window_bits=11)
    assert agreed("permessage-deflate", options) == Agreement(server_max_window_bits=11)
    assert agreed("permessage-deflate; server_max_window_bits=9", options) == Agreement(server_max_window_bits=9)


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=abc",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; unknown_parameter",
        "x-webkit-deflate-frame",
        "permessage-deflate;;",
    ],
)
def test_server_declines_an_offer_it_cannot_accept(offer: str) -> None:
    """A bad, out-of-range, repeated or unknown parameter (or another extension) makes the server decline: no compression."""
    assert accept_offers(offer, DEFAULTS) is None


def test_server_takes_the_first_acceptable_of_several_offers() -> None:
    """Offers are tried in order: a declined one is skipped, the next acceptable one wins."""
    accepted = accept_offers("permessage-deflate; server_max_window_bits=99, permessage-deflate; client_no_context_takeover, permessage-deflate", DEFAULTS)
    assert accepted == ("permessage-deflate; client_no_context_takeover", Agreement(client_no_context_takeover=True))


# ---------------------------------------------------------------------- the client's side


def test_client_offer_carries_its_options() -> None:
    """The offer asks for what the options ask, and always allows client_max_window_bits."""
    assert client_offer(DEFAULTS) == "permessage-deflate; client_max_window_bits"
    options = DeflateOptions(server_no_context_takeover=True, client_no_context_takeover=True, server_max_window_bits=10, client_max_window_bits=11)
    assert client_offer(options) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=11"
    )


def test_client_offer_is_accepted_by_the_server_side() -> None:
    """What a client offers, a server with the same options accepts."""
    options = DeflateOptions(server_no_context_takeover=True, server_max_window_bits=10, client_max_window_bits=11)
    accepted = accept_offers(client_offer(options), options)
    assert accepted is not None
    assert check_response(accepted[0], options) == accepted[1]


def test_client_takes_a_response_with_window_bits() -> None:
    """A response with server and client window bits within the offer gives the client its windows."""
    agreement = check_response("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9", DEFAULTS)
    assert agreement == Agreement(server_max_window_bits=10, client_max_window_bits=9)
    codec = PerMessageDeflate(agreement, True, DEFAULTS)
    assert (codec.local_window_bits, codec.remote_window_bits) == (9, 10)


def test_client_without_a_response_header_has_no_compression() -> None:
    """No Sec-WebSocket-Extensions in the response: the server declined, the connection is uncompressed."""
    assert check_response(None, DEFAULTS) is None
    assert check_response("  ", DEFAULTS) is None


@pytest.mark.parametrize(
    ("response", "options"),
    [
        ("x-other", DEFAULTS),
        ("permessage-deflate, permessage-deflate", DEFAULTS),
        ("permessage-deflate; unknown", DEFAULTS),
        ("permessage-deflate; server_max_window_bits=20", DEFAULTS),
        ("permessage-deflate; client_max_window_bits", DEFAULTS),  # needs a value in a response
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", DEFAULTS),
        ("permessage-deflate", DeflateOptions(server_no_context_takeover=True)),
        ("permessage-deflate", DeflateOptions(server_max_window_bits=10)),
        ("permessage-deflate; server_max_window_bits=12", DeflateOptions(server_max_window_bits=10)),
        ("permessage-deflate; client_max_window_bits=12", DeflateOptions(client_max_window_bits=10)),
    ],
)
def test_client_refuses_a_bad_response(response: str, options: DeflateOptions) -> None:
    """A response the offer does not allow (other or several extensions, unknown or unhonoured parameters) raises NegotiationError."""
    with pytest.raises(NegotiationError):
        check_response(response, options)


def test_options_refuse_out_of_range_values() -> None:
    """DeflateOptions refuses window bits, memory levels, levels and sizes out of range; resolve refuses unknown names."""
    for bad in ({"server_max_window_bits": 16}, {"client_max_window_bits": 7}, {"window_bits": 8}, {"mem_level": 0}, {"level": 10}, {"min_size": -1}):
        with pytest.raises(ValueError):
            DeflateOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        resolve("gzip")
    assert resolve(None) is None and resolve("deflate") == DeflateOptions()


# ---------------------------------------------------------------------- the codec


def test_codec_round_trips_and_strips_the_tail() -> None:
    """A message compresses without its 00 00 ff ff tail and inflates back as it was, both ways."""
    client, server = pair()
    data = b'{"cmd": "tick", "values": [1, 2, 3]}' * 20
    wire = client.compress(data)
    assert not wire.endswith(b"\x00\x00\xff\xff") and len(wire) < len(data) // 4
    assert server.inflate(wire, None) + server.end_message(None) == data
    assert roundtrip(server, client, data) == data
    assert roundtrip(client, server, b"") == b""


def test_context_takeover_makes_repeats_smaller() -> None:
    """With context takeover, a message repeated compresses to a few bytes the second time."""
    client, server = pair()
    data = os.urandom(300).hex().encode()
    first, second = client.compress(data), client.compress(data)
    assert len(second) < 20 < len(first)
    assert server.inflate(first, None) + server.end_message(None) == data
    assert server.inflate(second, None) + server.end_message(None) == data


def test_no_context_takeover_starts_every_message_afresh() -> None:
    """With server_no_context_takeover, a repeated message costs as much as the first and inflates with a fresh inflater."""
    client, server = pair(Agreement(server_no_context_takeover=True))
    data = os.urandom(300).hex().encode()
    first, second = server.compress(data), server.compress(data)
    assert abs(len(first) - len(second)) < 8
    fresh = PerMessageDeflate(Agreement(server_no_context_takeover=True), True, DEFAULTS)
    assert fresh.inflate(second, None) + fresh.end_message(None) == data  # needs nothing of the first
    assert roundtrip(server, client, data) == data
    assert client._decompressor is None  # dropped after the message


def test_window_bits_bound_what_the_peer_may_refer_to() -> None:
    """A sender limited to 9 window bits is inflated by a receiver that has only a 512-byte window."""
    agreement = Agreement(client_max_window_bits=9)
    client, server = pair(agreement)
    assert client.local_window_bits == 9 and server.remote_window_bits == 9
    data = (os.urandom(400).hex() * 3).encode()
    for _ in range(3):
        assert roundtrip(client, server, data) == data


def test_eight_window_bits_are_agreed_but_never_used_to_compress() -> None:
    """zlib cannot deflate into a 256-byte window: with 8 bits agreed the side sends uncompressed, and still inflates."""
    client, server = pair(Agreement(client_max_window_bits=8))
    assert not client.can_compress and not client.wants(False, 10_000)
    assert server.can_compress
    data = os.urandom(400) * 3  # repeats 400 bytes back: past a 256-byte window
    assert roundtrip(server, client, data) == data
    # A peer's zlib asked for 8 bits deflates into 9; the inflater takes that too.
    assert server.inflate(raw_deflate(data, 9), None) + server.end_message(None) == data


def test_wants_follows_min_size_and_kind() -> None:
    """By default text from min_size up is compressed, binary is not (unless compress_binary)."""
    codec = PerMessageDeflate(Agreement(), False, DeflateOptions(min_size=100))
    assert not codec.wants(False, 99) and codec.wants(False, 100)
    assert not codec.wants(True, 10_000)
    assert PerMessageDeflate(Agreement(), False, DeflateOptions(compress_binary=True)).wants(True, 10_000)


def test_inflate_refuses_past_the_room_without_making_the_whole() -> None:
    """A 100 MB message of zeros, compressed to about 100 KB, fails with PayloadTooBig after at most room + 1 bytes."""
    bomb = raw_deflate(bytes(100 * 1024 * 1024))
    assert len(bomb) < 200_000
    _, server = pair()
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig) as info:
            server.inflate(bomb, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert peak < 4 * (1 << 20), peak


def test_inflate_refuses_data_that_is_not_deflate() -> None:
    """Bytes that are not a deflate stream fail the message with ProtocolError 1007."""
    _, server = pair()
    with pytest.raises(ProtocolError) as info:
        server.inflate(b"\xff\xff\xff\xff garbage", None)
    assert info.value.code == 1007


# ---------------------------------------------------------------------- the protocol core


def test_protocol_reads_a_small_compressed_text_message() -> None:
    """A one-frame compressed text message (RSV1 set) comes out inflated and decoded."""
    protocol = server_protocol()
    assert next_message(protocol, client_frame(frames.OP_TEXT, raw_deflate(b"hello hello hello"), rsv=4)) == "hello hello hello"


def test_protocol_reads_a_large_compressed_binary_message_in_fragments() -> None:
    """A compressed binary message in several frames (RSV1 on the first only) is inflated as it arrives."""
    data = os.urandom(50_000) * 4
    wire = raw_deflate(data)
    third = len(wire) // 3
    stream = (
        client_frame(frames.OP_BINARY, wire[:third], fin=False, rsv=4)
        + client_frame(frames.OP_CONTINUATION, wire[third : 2 * third], fin=False)
        + client_frame(frames.OP_CONTINUATION, wire[2 * third :])
    )
    protocol = server_protocol()
    for i in range(0, len(stream), 7001):  # in pieces, as a socket would give them
        protocol.receive_data(stream[i : i + 7001])
    assert protocol.next_event() == data


def test_protocol_still_reads_uncompressed_messages() -> None:
    """With the extension agreed, messages without RSV1 are read as before, between compressed ones."""
    protocol = server_protocol()
    assert next_message(protocol, client_frame(frames.OP_TEXT, b"plain")) == "plain"
    assert next_message(protocol, client_frame(frames.OP_BINARY, raw_deflate(b"z" * 500), rsv=4)) == b"z" * 500
    assert next_message(protocol, client_frame(frames.OP_BINARY, b"\x01" * 70_000)) == b"\x01" * 70_000


@pytest.mark.parametrize(
    ("stream", "what"),
    [
        (client_frame(frames.OP_TEXT, b"a", fin=False) + client_frame(frames.OP_CONTINUATION, b"b", rsv=4), "continuation"),
        (client_frame(frames.OP_PING, b"", rsv=4), "ping"),
        (client_frame(frames.OP_TEXT, raw_deflate(b"x"), rsv=2), "RSV2"),
        (client_frame(frames.OP_TEXT, raw_deflate(b"x"), rsv=6), "RSV1 and RSV2"),
    ],
)
def test_protocol_refuses_rsv_bits_where_the_extension_defines_none(stream: bytes, what: str) -> None:
    """RSV1 on a continuation or control frame, or any other RSV bit, fails the connection with 1002 even with deflate agreed."""
    protocol = server_protocol()
    with pytest.raises(ProtocolError) as info:
        next_message(protocol, stream)
        protocol.next_event()
    assert info.value.code == 1002, what


def test_protocol_without_the_extension_refuses_rsv1() -> None:
    """Without permessage-deflate agreed, a frame with RSV1 fails with 1002."""
    protocol = Protocol(False, None)
    with pytest.raises(ProtocolError) as info:
        next_message(protocol, client_frame(frames.OP_TEXT, raw_deflate(b"x"), rsv=4))
    assert info.value.code == 1002


def test_protocol_checks_utf8_after_inflating() -> None:
    """A compressed text message whose inflated bytes are not UTF-8 fails with 1007."""
    protocol = server_protocol()
    with pytest.raises(ProtocolError) as info:
        next_message(protocol, client_frame(frames.OP_TEXT, raw_deflate(b"ok \xff\xfe not utf-8" * 10), rsv=4))
    assert info.value.code == 1007


def test_protocol_refuses_a_small_message_that_inflates_past_the_limit() -> None:
    """A compressed message under the limit on the wire but over it inflated fails with 1009; one at the limit passes."""
    protocol = server_protocol(max_message_size=10_000)
    assert next_message(protocol, client_frame(frames.OP_BINARY, raw_deflate(bytes(10_000)), rsv=4)) == bytes(10_000)
    with pytest.raises(PayloadTooBig):
        next_message(protocol, client_frame(frames.OP_BINARY, raw_deflate(bytes(10_001)), rsv=4))


def test_protocol_refuses_a_fragmented_message_that_inflates_past_the_limit() -> None:
    """The limit holds across fragments: the inflated total counts, not the compressed frames."""
    protocol = server_protocol(max_message_size=50_000)
    wire = raw_deflate(bytes(60_000))
    with pytest.raises(PayloadTooBig):
        next_message(protocol, client_frame(frames.OP_TEXT, wire[:20], fin=False, rsv=4) + client_frame(frames.OP_CONTINUATION, wire[20:]))


def test_control_frames_between_compressed_fragments_pass() -> None:
    """A ping between the fragments of a compressed message is delivered, and the message after it."""
    protocol = server_protocol()
    wire = raw_deflate(b"fragmented " * 50)
    first, ping = client_frame(frames.OP_TEXT, wire[:10], fin=False, rsv=4), client_frame(frames.OP_PING, b"p")
    protocol.receive_data(first + ping + client_frame(frames.OP_CONTINUATION, wire[10:]))
    assert protocol.next_event() == Ping(b"p")
    assert protocol.next_event() == "fragmented " * 50


def test_compressed_frame_sets_rsv1() -> None:
    """Protocol.compressed_frame returns a header with RSV1 and the compressed payload a peer inflates."""
    client = Protocol(True, None, PerMessageDeflate(Agreement(), True, DEFAULTS))
    server = server_protocol()
    header, data = client.compressed_frame(frames.OP_TEXT, b"compress me " * 10, None)
    assert header[0] == 0x80 | frames.RSV1 | frames.OP_TEXT
    masked = bytearray(data)
    key = os.urandom(4)
    frames.apply_mask(masked, key)
    wire = frames.encode_header(frames.OP_TEXT, len(data), True, key, frames.RSV1) + bytes(masked)
    assert next_message(server, wire) == "compress me " * 10

"""permessage-deflate (RFC 7692) without I/O: the negotiation and the per-message codec.

Negotiation is a pure function of header values:

* a server answers a client's ``Sec-WebSocket-Extensions`` offers with
  :func:`accept_offers`: the first ``permessage-deflate`` offer it can take
  gives the response value and the :class:`Agreement`; an offer with an
  unknown, repeated or out-of-range parameter is declined (the next one is
  tried; with none left, the connection opens without compression);
* a client builds its offer with :func:`client_offer` and checks the server's
  response with :func:`check_response`, which raises :class:`NegotiationError`
  for anything it did not offer or cannot honour: the client then fails the
  handshake (RFC 7692 section 5).

:class:`PerMessageDeflate` is the codec of one connection once agreed: its
compressing half runs on the thread that holds the connection's send lock
(frames must leave in the order the compressor saw them), its inflating half
on the reader thread. Both zlib objects are made on first use, so an idle
connection with compression agreed costs no zlib memory at all. Inflating is
bounded: every call takes the number of bytes the message may still grow by,
and zlib stops one byte past it (``max_length``), so a small message that
would inflate past ``max_message_size`` is refused with 1009 before more
than that is ever allocated; and what it makes comes out in pieces of at
most :data:`INFLATE_PIECE` bytes, which the reader puts straight where the
message is put together (:mod:`syncws.protocol.assembly`).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Union

from ..exceptions import PayloadTooBig, ProtocolError, SyncWSError

__all__ = [
    "EXTENSION_NAME",
    "DeflateOptions",
    "Agreement",
    "NegotiationError",
    "PerMessageDeflate",
    "parse_extensions",
    "accept_offers",
    "client_offer",
    "check_response",
    "resolve",
    "INFLATE_PIECE",
]

EXTENSION_NAME = "permessage-deflate"
Buffer = Union[bytes, bytearray, memoryview]
Params = list[tuple[str, Optional[str]]]

#: The most bytes one call to zlib inflates at a time (PerMessageDeflate.inflate_into).
INFLATE_PIECE = 256 * 1024
_TAIL = b"\x00\x00\xff\xff"  # the empty stored block that ends each message on the wire, and is stripped (section 7.2.1)
_WINDOW_BITS = range(8, 16)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_SPACE = re.compile(r"[ \t]*")
_BITS_VALUE = re.compile(r"[1-9][0-9]?")  # a decimal integer without leading zeros (section 7.1.2)


class NegotiationError(SyncWSError, ValueError):
    """An extensions header, offer or response that cannot be taken (malformed, or breaking RFC 7692's rules)."""


@dataclass(frozen=True)
class DeflateOptions:
    """How one side compresses, and what it asks of its peer.

    ``server_*`` and ``client_*`` are RFC 7692's parameters, as they go into
    the handshake: ``server_*`` is about what the server compresses (and the
    client inflates), ``client_*`` about what the client compresses.

    Args:
        server_max_window_bits: a limit (8 to 15) on the server's LZ77
            window: a client asks for it in its offer (a server that cannot
            honour it declines); a server states it in its response. None:
            nothing asked.
        client_max_window_bits: a limit on the client's window: a client
            offers it with this value (without one when None, so that the
            server may choose); a server asks for it when the client allows.
        server_no_context_takeover, client_no_context_takeover: ask that
            side to start every message afresh (less memory kept between
            messages, a worse ratio).
        window_bits: the largest window (9 to 15) this side compresses with,
            whatever was agreed (a smaller window than agreed is always
            allowed): the compressor's memory is about
            ``2 ** (window_bits + 2) + 2 ** (mem_level + 9)`` bytes.
        mem_level: zlib's memory level (1 to 9) for compressing.
        level: zlib's compression level (0 to 9).
        min_size: messages shorter than this many bytes go uncompressed.
        compress_binary: whether binary messages are compressed by default
            (text always is, from ``min_size`` up); ``send(..., compress=True)``
            compresses one anyway. The binary parts of a reply never are.

    The defaults are chosen by measurement: docs/tuning.md.
    """

    server_max_window_bits: Optional[int] = None
    client_max_window_bits: Optional[int] = None
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    window_bits: int = 12
    mem_level: int = 5
    level: int = 1
    min_size: int = 64
    compress_binary: bool = False

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            bits = getattr(self, name)
            if bits is not None and (type(bits) is not int or bits not in _WINDOW_BITS):
                raise ValueError(f"{name} must be None or an int from 8 to 15, not {bits!r}")
        if type(self.window_bits) is not int or not 9 <= self.window_bits <= 15:
            raise ValueError(f"window_bits must be an int from 9 to 15, not {self.window_bits!r}")
        if type(self.mem_level) is not int or not 1 <= self.mem_level <= 9:
            raise ValueError(f"mem_level must be an int from 1 to 9, not {self.mem_level!r}")
        if type(self.level) is not int or not 0 <= self.level <= 9:
            raise ValueError(f"level must be an int from 0 to 9, not {self.level!r}")
        if type(self.min_size) is not int or self.min_size < 0:
            raise ValueError(f"min_size must be a non-negative int, not {self.min_size!r}")


def resolve(compression: Union[str, DeflateOptions, None]) -> Optional[DeflateOptions]:
    """The options behind a ``compression=`` argument: ``"deflate"`` (the defaults), a DeflateOptions, or None (off)."""
    if compression is None or isinstance(compression, DeflateOptions):
        return compression
    if compression == "deflate":
        return DeflateOptions()
    raise ValueError(f"compression must be 'deflate', a syncws.deflate.DeflateOptions or None, not {compression!r}")


@dataclass(frozen=True)
class Agreement:
    """The parameters both sides agreed on (None for a window: 15, the protocol's default)."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: Optional[int] = None
    client_max_window_bits: Optional[int] = None

    def header_value(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value that states this agreement (a server's response)."""
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


# ---------------------------------------------------------------------- the header's grammar


def parse_extensions(value: str) -> list[tuple[str, Params]]:
    """Split a ``Sec-WebSocket-Extensions`` value into ``(name, [(param, value or None), ...])`` elements.

    The grammar is RFC 6455 section 9.1 (tokens, ``;`` between parameters,
    ``,`` between extensions, quoted-string values unquoted). Empty list
    elements are skipped. Raises NegotiationError for anything else.
    """
    elements: list[tuple[str, Params]] = []
    pos, end = 0, len(value)
    while True:
        pos = _skip(value, pos)
        if pos < end and value[pos] == ",":
            pos += 1
            continue
        if pos >= end:
            return elements
        name, pos = _token(value, pos)
        params: Params = []
        while True:
            pos = _skip(value, pos)
            if pos >= end or value[pos] == ",":
                break
            if value[pos] != ";":
                raise NegotiationError(f"unexpected {value[pos]!r} in extensions header")
            param, pos = _token(value, _skip(value, pos + 1))
            pos = _skip(value, pos)
            argument: Optional[str] = None
            if pos < end and value[pos] == "=":
                argument, pos = _argument(value, _skip(value, pos + 1))
            params.append((param.lower(), argument))
        elements.append((name.lower(), params))


def _skip(value: str, pos: int) -> int:
    match = _SPACE.match(value, pos)
    return match.end() if match else pos


def _token(value: str, pos: int) -> tuple[str, int]:
    match = _TOKEN.match(value, pos)
    if match is None:
        raise NegotiationError(f"expected a token at {value[pos : pos + 20]!r} in extensions header")
    return match.group(), match.end()


def _argument(value: str, pos: int) -> tuple[str, int]:
    match = _QUOTED.match(value, pos)
    if match is None:
        return _token(value, pos)
    text = re.sub(r"\\(.)", r"\1", match.group(1))
    if not _TOKEN.fullmatch(text):  # section 9.1: once unquoted, a value must be a token
        raise NegotiationError(f"quoted value {match.group()!r} is not a token")
    return text, match.end()


def _read_params(params: Params) -> dict[str, Optional[str]]:
    """The parameters by name; NegotiationError for an unknown or repeated one (section 7, 7.1)."""
    known = ("server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits")
    seen: dict[str, Optional[str]] = {}
    for name, argument in params:
        if name not in known:
            raise NegotiationError(f"unknown parameter {name!r}")
        if name in seen:
            raise NegotiationError(f"parameter {name!r} given twice")
        if name.endswith("takeover") and argument is not None:
            raise NegotiationError(f"parameter {name!r} takes no value")
        seen[name] = argument
    return seen


def _bits(name: str, argument: Optional[str]) -> int:
    """A window-bits value: 8 to 15 written without leading zeros; NegotiationError otherwise."""
    if argument is None or not _BITS_VALUE.fullmatch(argument) or int(argument) not in _WINDOW_BITS:
        raise NegotiationError(f"{name} must be a number from 8 to 15, not {argument!r}")
    return int(argument)


def _smaller(a: Optional[int], b: Optional[int]) -> Optional[int]:
    return b if a is None else a if b is None else min(a, b)


# ---------------------------------------------------------------------- server side


def accept_offers(header: str, options: DeflateOptions) -> Optional[tuple[str, Agreement]]:
    """The server's answer to a client's ``Sec-WebSocket-Extensions``: ``(response value, agreement)``, or None.

    The first ``permessage-deflate`` offer that the server can accept wins;
    offers it cannot (a bad, unknown or repeated parameter) are declined,
    and so are other extensions. None: no compression on this connection.
    A malformed header is declined as a whole (NegotiationError is not raised).
    """
    try:
        elements = parse_extensions(header)
    except NegotiationError:
        return None
    for name, params in elements:
        if name != EXTENSION_NAME:
            continue
        try:
            agreement = _accept(_read_params(params), options)
        except NegotiationError:
            continue
        return agreement.header_value(), agreement
    return None


def _accept(offer: dict[str, Optional[str]], options: DeflateOptions) -> Agreement:
    """What the server answers to one offer (section 7.1); NegotiationError to decline it."""
    asked_server_bits = _bits("server_max_window_bits", offer["server_max_window_bits"]) if "server_max_window_bits" in offer else None
    client_bits: Optional[int] = None
    if "client_max_window_bits" in offer:
        hint = offer["client_max_window_bits"]
        offered = _bits("client_max_window_bits", hint) if hint is not None else None
        # The client allows a limit: ask for ours, or echo its own (then we know the window it inflates into).
        client_bits = _smaller(offered, options.client_max_window_bits)
    return Agreement(
        server_no_context_takeover="server_no_context_takeover" in offer or options.server_no_context_takeover,
        # A client that offers client_no_context_takeover will not keep its context anyway (section
        # 7.1.1.2): saying so back lets the server drop its inflater between messages.
        client_no_context_takeover="client_no_context_takeover" in offer or options.client_no_context_takeover,
        server_max_window_bits=_smaller(asked_server_bits, options.server_max_window_bits),
        client_max_window_bits=client_bits,
    )


# ---------------------------------------------------------------------- client side


def client_offer(options: DeflateOptions) -> str:
    """The ``Sec-WebSocket-Extensions`` value a client sends: one ``permessage-deflate`` offer."""
    parts = [EXTENSION_NAME]
    if options.server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if options.client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if options.server_max_window_bits is not None:
        parts.append(f"server_max_window_bits={options.server_max_window_bits}")
    # Always offered, so that the server may choose a window for us (section 7.1.2.2).
    bits = options.client_max_window_bits
    parts.append("client_max_window_bits" if bits is None else f"client_max_window_bits={bits}")
    return "; ".join(parts)


def check_response(header: Optional[str], options: DeflateOptions) -> Optional[Agreement]:
    """Check the server's ``Sec-WebSocket-Extensions`` against the client's offer: the agreement, or None without one.

    Raises NegotiationError when the response names another extension, more
    than one, or parameters the offer does not allow (section 7.1): the client
    must then fail the connection.
    """
    if header is None or not header.strip():
        return None
    elements = parse_extensions(header)
    if len(elements) != 1 or elements[0][0] != EXTENSION_NAME:
        raise NegotiationError(f"the server accepted extensions that were not offered: {header!r}")
    response = _read_params(elements[0][1])
    if options.server_no_context_takeover and "server_no_context_takeover" not in response:
        raise NegotiationError("the server did not accept server_no_context_takeover")
    server_bits = _bits("server_max_window_bits", response["server_max_window_bits"]) if "server_max_window_bits" in response else None
    if options.server_max_window_bits is not None and (server_bits is None or server_bits > options.server_max_window_bits):
        raise NegotiationError(f"the server did not accept server_max_window_bits={options.server_max_window_bits}")
    client_bits = _bits("client_max_window_bits", response["client_max_window_bits"]) if "client_max_window_bits" in response else None
    if client_bits is not None and options.client_max_window_bits is not None and client_bits > options.client_max_window_bits:
        raise NegotiationError(f"the server asked for client_max_window_bits={client_bits}, over the {options.client_max_window_bits} offered")
    return Agreement(
        server_no_context_takeover="server_no_context_takeover" in response,
        client_no_context_takeover="client_no_context_takeover" in response or options.client_no_context_takeover,
        server_max_window_bits=server_bits,
        # The value offered is a promise: a response without one leaves it standing.
        client_max_window_bits=client_bits if client_bits is not None else options.client_max_window_bits,
    )


# ---------------------------------------------------------------------- the codec


class PerMessageDeflate:
    """The permessage-deflate codec of one connection, after an :class:`Agreement`.

    Args:
        agreement: what the handshake agreed on.
        is_client: which side of it this is.
        options: the local compression settings (mem_level, level, min_size, compress_binary).

    Threads: :meth:`compress` belongs to the holder of the connection's send
    lock; :meth:`inflate` and :meth:`end_message` to the reader thread. The
    halves share nothing.
    """

    def __init__(self, agreement: Agreement, is_client: bool, options: DeflateOptions) -> None:
        self.agreement = agreement
        if is_client:
            local_bits, self.remote_window_bits = agreement.client_max_window_bits, agreement.server_max_window_bits or 15
            self.local_no_context_takeover = agreement.client_no_context_takeover
            self.remote_no_context_takeover = agreement.server_no_context_takeover
        else:
            local_bits, self.remote_window_bits = agreement.server_max_window_bits, agreement.client_max_window_bits or 15
            self.local_no_context_takeover = agreement.server_no_context_takeover
            self.remote_no_context_takeover = agreement.client_no_context_takeover
        #: The window this side compresses with: the agreed limit or less (section 7.1.2 allows any smaller one).
        self.local_window_bits = min(local_bits or 15, options.window_bits)
        self.mem_level = options.mem_level
        self.level = options.level
        #: Messages shorter than this go uncompressed.
        self.min_size = options.min_size
        self.compress_binary = options.compress_binary
        # zlib cannot deflate into a 256-byte window (it refuses wbits 8 for raw deflate), and
        # a larger one would break the agreement; a message may always go uncompressed.
        self.can_compress = (local_bits or 15) > 8
        self._compressor: Optional[zlib._Compress] = None  # made on first use (send lock)
        self._decompressor: Optional[zlib._Decompress] = None  # made on first use (reader thread)

    # ------------------------------------------------------------------ sending (send lock)

    def wants(self, binary: bool, length: int) -> bool:
        """Whether a message of this kind and size is compressed by default."""
        return self.can_compress and length >= self.min_size and (self.compress_binary or not binary)

    def compress(self, data: Buffer) -> bytes:
        """One whole message's payload, deflated, its ``00 00 ff ff`` tail stripped. Requires the send lock."""
        compressor = self._compressor
        if compressor is None:
            compressor = self._compressor = zlib.compressobj(self.level, zlib.DEFLATED, -self.local_window_bits, self.mem_level)
        # Without context takeover a full flush both ends the message and forgets the
        # window, so the next message refers to nothing before it (section 7.1.1.1).
        flush = zlib.Z_FULL_FLUSH if self.local_no_context_takeover else zlib.Z_SYNC_FLUSH
        out = compressor.compress(data) + compressor.flush(flush)
        return out[:-4] if out.endswith(_TAIL) else out

    # ------------------------------------------------------------------ receiving (reader thread)

    def inflate_whole(self, payload: Buffer, limit: Optional[int]) -> bytes:
        """A small compressed message, whole in one frame, inflated within ``limit`` bytes (None: no limit)."""
        data = self.inflate(payload, limit)
        return data + self.end_message(None if limit is None else limit - len(data), len(data))

    def inflate(self, data: Buffer, room: Optional[int], size: int = 0) -> bytes:
        """Inflate the next stretch of a compressed message, in one ``bytes``: for small payloads (see :meth:`inflate_into`)."""
        pieces: list[bytes] = []
        self.inflate_into(data, room, size, pieces.append)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def inflate_into(self, data: Buffer, room: Optional[int], size: int, put: Callable[[bytes], None]) -> None:
        """Inflate the next stretch of a compressed message into ``put``, a piece at a time; at most ``room`` bytes in all (None: no limit).

        Each piece is at most :data:`INFLATE_PIECE` bytes.
        ``size`` is how much of the message came out already, for the error:
        PayloadTooBig (1009) once the message would grow past ``room``, before
        more than one byte past it is made; ProtocolError 1007 for data that
        is not deflate. Pieces, not one ``bytes``: a few KiB on the wire may
        inflate to the whole size limit, and zlib would build that in blocks
        and join them, twice the message for a moment, before the caller
        could put it where it belongs.
        """
        decompressor = self._decompressor
        if decompressor is None:
            # Never below 9: zlib, which most peers use, deflates into a 512-byte window when
            # asked for 8 bits, and a 9-bit inflater reads a true 8-bit stream as well.
            decompressor = self._decompressor = zlib.decompressobj(-max(9, self.remote_window_bits))
        made = 0
        while True:
            # At most a piece, and at most one byte past the room (never 0: zlib's "no limit").
            limit = INFLATE_PIECE if room is None or room - made >= INFLATE_PIECE else room - made + 1
            try:
                out = decompressor.decompress(data, limit)
            except zlib.error as exc:
                self._decompressor = None
                raise ProtocolError(f"compressed message cannot be inflated: {exc}", 1007) from None
            if out:
                made += len(out)
                if room is not None and made > room:
                    self._decompressor = None  # what is left is never inflated; the connection is failing
                    raise PayloadTooBig(size + made, size + room)
                put(out)
            data = decompressor.unconsumed_tail
            if not data and len(out) < limit:
                return  # all the input taken, and zlib holds nothing more back (a full piece may leave some)

    def end_message(self, room: Optional[int], size: int = 0) -> bytes:
        """The last bytes of a compressed message, in one ``bytes`` (see :meth:`end_message_into`)."""
        pieces: list[bytes] = []
        self.end_message_into(room, size, pieces.append)
        return b"".join(pieces)

    def end_message_into(self, room: Optional[int], size: int, put: Callable[[bytes], None]) -> None:
        """The last bytes of a compressed message (its stripped tail put back), given to ``put``; then forget the context if agreed."""
        self.inflate_into(_TAIL, room, size, put)
        decompressor = self._decompressor
        if self.remote_no_context_takeover or (decompressor is not None and decompressor.eof):
            # A fresh inflater for the next message: nothing is kept between messages
            # (and a peer that ended its deflate stream with BFINAL starts a new one).
            self._decompressor = None

    def reset_receiving(self) -> None:
        """Forget a message being inflated (the connection is failing)."""
        self._decompressor = None

"""Property-based fuzzing of the server over real sockets (hypothesis).

Each example opens a fresh TCP connection to one module-wide server and sends
it something: random bytes after a valid handshake, valid frames mutated in
every way a broken or hostile client could, or a random or mutated handshake
request. It then sends a well-formed close frame, half-closes its side and
reads until the server closes. The property, for every example:

* the server answers within 5 s (the socket timeout) and ends the TCP
  connection by itself: nothing hangs;
* what it sent is well-formed: an HTTP error status from the known set, or a
  101 followed by unmasked server frames, the last of them at most one close
  frame whose code is a valid RFC 6455 code (or empty);
* its connection thread ends (no syncws-conn thread left over), no log
  record carries a traceback, and a well-behaved websocket-client connection
  on the same server still gets its messages echoed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

import pytest
import websocket
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from syncws import frames

from .helpers import RawClient, make_server, wait_for

#: SYNCWS_FUZZ_SCALE=10 runs ten times the examples (and allows ten times the time), for a longer run by hand.
SCALE = max(0.01, float(os.environ.get("SYNCWS_FUZZ_SCALE", "1")))

pytestmark = pytest.mark.timeout(120 * max(1.0, SCALE))

IO_TIMEOUT = 5.0  # no socket operation of a fuzz client waits longer than this
HTTP_ERRORS = {400, 401, 403, 404, 405, 426, 431, 500, 503}
MAX_MESSAGE = 1 << 20


def examples(count: int) -> int:
    """``count`` examples, times SCALE."""
    return max(1, int(count * SCALE))


FUZZ_SETTINGS = dict(
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------- the module's server


class FuzzEnv:
    """The module's server, the well-behaved client that must keep working, and the thread bookkeeping."""

    def __init__(self) -> None:
        self.threads_before = {t for t in threading.enumerate() if t.name.startswith("syncws-conn")}
        self.server = make_server(max_message_size=MAX_MESSAGE, close_timeout=1.0, handshake_timeout=2.0)
        self.port = self.server.port
        self.good = websocket.create_connection(self.server.url + "/echo", timeout=IO_TIMEOUT)
        self.rounds = 0
        assert wait_for(lambda: len(self.server.clients) == 1, 5), "the good client's connection was not admitted"
        if self.server.engine == "threads":  # its thread, for good; on the reactor, its handshake's, which ends
            assert wait_for(lambda: len(self.new_conn_threads()) == 1, 5), "the good client's connection thread did not start"
        else:
            assert wait_for(lambda: not self.new_conn_threads(), 5), "the good client's handshake thread did not end"
        self.baseline = set(self.new_conn_threads())

    def new_conn_threads(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("syncws-conn") and t not in self.threads_before]

    def leftovers(self) -> list[str]:
        """What the fuzz connections left behind: connection threads beyond the good client's, connections still open beyond it."""
        threads = [t.name for t in self.new_conn_threads() if t not in self.baseline]
        extra = len(self.server.clients) - 1
        return threads + ([f"{extra} connections still open"] if extra > 0 else [])

    def settle(self) -> None:
        """After an example: every fuzz connection ended (its thread too), and the good client still gets its echo."""
        assert wait_for(lambda: not self.leftovers(), 5), f"left behind: {self.leftovers()}"
        self.rounds += 1
        text = f"still here {self.rounds}"
        self.good.send(text)
        assert self.good.recv() == text

    def close(self) -> None:
        try:
            self.good.close()
        finally:
            left = wait_for(lambda: not self.new_conn_threads(), 5)
            self.server.stop()
        assert left, f"connection threads left after the clients closed: {[t.name for t in self.new_conn_threads()]}"


@pytest.fixture(scope="module")
def env() -> Iterator[FuzzEnv]:
    """One server for the module; at the end no connection thread of it is left."""
    fuzz_env = FuzzEnv()
    try:
        yield fuzz_env
    finally:
        fuzz_env.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, with syncws's INFO lines (protocol errors, refused handshakes) emitted too."""
    caplog.set_level(logging.INFO, logger="syncws")
    return caplog


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info]
    assert not bad, f"log records with a traceback: {[(r.name, r.getMessage()) for r in bad]}"


# ---------------------------------------------------------------------- wire helpers


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return frames.encode_frame(opcode, payload, fin, os.urandom(4))


CLIENT_CLOSE = masked_frame(frames.OP_CLOSE, struct.pack("!H", 1000))


def upgrade_request(path: str = "/echo", key: Optional[str] = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def read_until_eof(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends until it closes: ``(data, reset)``; fails if it does not close in time."""
    deadline = time.monotonic() + IO_TIMEOUT
    data = bytearray()
    for _ in range(100_000):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the server did not close the connection within {IO_TIMEOUT} s (got {bytes(data[:200])!r})"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), True
        except socket.timeout:
            raise AssertionError(f"the server did not close the connection within {IO_TIMEOUT} s (got {bytes(data[:200])!r})") from None
        if not chunk:
            return bytes(data), False
        data += chunk
    raise AssertionError("the server sent more than 6 GB")  # pragma: no cover


def exchange(port: int, data: bytes, handshake: bool) -> tuple[bytes, bytes, bool]:
    """Connect, (shake hands,) send ``data`` and a close frame, half-close, read to the end.

    Returns ``(response head or b"", what followed it, reset)``.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        head = b""
        if handshake:
            sock.sendall(upgrade_request())
            got = bytearray()
            for _ in range(1000):
                if b"\r\n\r\n" in got:
                    break
                chunk = sock.recv(4096)
                assert chunk, "the server closed during a valid handshake"
                got += chunk
            head, _, rest = bytes(got).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head
            assert not rest, "the server sent frames before the client did"
        try:
            sock.sendall(data + (CLIENT_CLOSE if handshake else b""))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server already closed: that is an allowed answer
        body, reset = read_until_eof(sock)
        if not handshake:
            head, sep, body = body.partition(b"\r\n\r\n")
            if not sep:
                body, head = head, b""
        return head, body, reset
    finally:
        sock.close()


def parse_server_frames(data: bytes) -> tuple[list[tuple[bool, int, int, bool, bytes]], bytes]:
    """Split what a server sent into ``(fin, rsv, opcode, masked, payload)`` frames; also the incomplete rest."""
    out = []
    pos = 0
    for _ in range(len(data) + 1):
        if len(data) - pos < 2:
            break
        b1, b2 = data[pos], data[pos + 1]
        length, hdr = b2 & 0x7F, 2
        if length == 126:
            if len(data) - pos < 4:
                break
            (length,) = struct.unpack_from("!H", data, pos + 2)
            hdr = 4
        elif length == 127:
            if len(data) - pos < 10:
                break
            (length,) = struct.unpack_from("!Q", data, pos + 2)
            hdr = 10
        if b2 & 0x80:
            hdr += 4
        if len(data) - pos < hdr + length:
            break
        out.append((bool(b1 & 0x80), b1 & 0x70, b1 & 0x0F, bool(b2 & 0x80), data[pos + hdr : pos + hdr + length]))
        pos += hdr + length
    return out, data[pos:]


def check_server_frames(data: bytes, reset: bool) -> Optional[int]:
    """Assert ``data`` is a well-formed stream of server frames; return the close code it ended with, if any."""
    parsed, rest = parse_server_frames(data)
    if not reset:
        assert rest == b"", f"the server sent an incomplete frame: {rest[:50]!r}"
    close_code = None
    for index, (fin, rsv, opcode, masked, payload) in enumerate(parsed):
        assert fin and rsv == 0 and not masked, "server frames are unfragmented, without RSV bits, unmasked"
        assert opcode in (frames.OP_TEXT, frames.OP_BINARY, frames.OP_CLOSE, frames.OP_PING, frames.OP_PONG), opcode
        if opcode == frames.OP_TEXT:
            payload.decode("utf-8")  # the server only ever echoes valid text
        if opcode == frames.OP_CLOSE:
            assert index == len(parsed) - 1, "the server sent a frame after its close frame"
            assert len(payload) != 1
            if payload:
                close_code = struct.unpack("!H", payload[:2])[0]
                assert frames.is_valid_close_code(close_code), f"invalid close code {close_code}"
                payload[2:].decode("utf-8")
            else:
                close_code = 1005
    return close_code


def check_http_answer(head: bytes, body: bytes, reset: bool) -> str:
    """Assert ``head``/``body`` is no answer at all, an HTTP error from the known set, or a 101 and frames; say which."""
    if not head:
        assert not body or reset, f"the server sent something that is not HTTP: {body[:100]!r}"
        return "reset" if reset else "closed without an answer"
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split(b" ")[1])
    if status == 101:
        assert b"\r\nSec-WebSocket-Accept: " in head
        code = check_server_frames(body, reset)
        return f"101, then close {code}"
    assert status in HTTP_ERRORS, status_line
    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    if not reset:
        assert len(body) == length
        assert json.loads(body)["status"] == status
    return f"HTTP {status}"


# ---------------------------------------------------------------------- strategies


def some_bytes(draw: Any, max_size: int) -> bytes:
    """Random bytes; large sizes come from a seeded generator, not from hypothesis's buffer."""
    if draw(st.integers(0, 9)) == 0:
        size = draw(st.integers(0, max_size))
        return random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    return draw(st.binary(max_size=min(max_size, 200)))


def encode(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True, declared: Optional[int] = None, form: Optional[int] = None
) -> bytes:
    """A client frame; ``declared`` overrides the length field, ``form`` forces the 7/16/64-bit length encoding."""
    length = len(payload) if declared is None else declared
    if form is None:
        form = 7 if length < 126 else 16 if length < 65536 else 64
    b1 = (0x80 if fin else 0) | (rsv << 4) | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    if form == 7:
        header = bytes((b1, mask_bit | (length & 0x7F)))
    elif form == 16:
        header = struct.pack("!BBH", b1, mask_bit | 126, length & 0xFFFF)
    else:
        header = struct.pack("!BBQ", b1, mask_bit | 127, length & 0xFFFFFFFFFFFFFFFF)
    if not mask:
        return header + payload
    key = os.urandom(4)
    body = bytearray(payload)
    frames.apply_mask(body, key)
    return header + key + bytes(body)


@st.composite
def close_payload(draw: Any) -> bytes:
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return b""
    if choice == 1:
        return draw(st.binary(min_size=1, max_size=1))
    if choice == 2:
        code = draw(st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999]))
        return struct.pack("!H", code) + draw(st.text(max_size=40)).encode("utf-8")[:123]
    if choice == 3:
        return struct.pack("!H", draw(st.integers(0, 65535))) + draw(st.binary(max_size=123))
    return draw(st.binary(max_size=130))


@st.composite
def frame_piece(draw: Any) -> bytes:
    """One frame, or a few, valid or not."""
    kind = draw(st.sampled_from(["data", "fragments", "control", "close", "raw", "wrong_length", "unmasked", "junk"]))
    if kind == "data":
        opcode = draw(st.sampled_from([frames.OP_TEXT, frames.OP_BINARY]))
        payload = draw(st.text(max_size=100)).encode("utf-8") if draw(st.booleans()) else some_bytes(draw, 70_000)
        return encode(opcode, payload)
    if kind == "fragments":
        opcode = draw(st.sampled_from([frames.OP_TEXT, frames.OP_BINARY, frames.OP_CONTINUATION]))
        text = draw(st.text(max_size=60)).encode("utf-8")
        cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        out = []
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            out.append(encode(opcode if index == 0 else frames.OP_CONTINUATION, piece, fin=last and draw(st.booleans())))
            if draw(st.integers(0, 3)) == 0:  # a control frame between fragments
                out.append(encode(draw(st.sampled_from([frames.OP_PING, frames.OP_PONG, frames.OP_TEXT])), draw(st.binary(max_size=20))))
        return b"".join(out)
    if kind == "control":
        opcode = draw(st.sampled_from([frames.OP_PING, frames.OP_PONG]))
        return encode(opcode, draw(st.binary(max_size=130)), fin=draw(st.integers(0, 5)) > 0)
    if kind == "close":
        return encode(frames.OP_CLOSE, draw(close_payload()), fin=draw(st.integers(0, 5)) > 0)
    if kind == "raw":
        # Any first byte (FIN, RSV bits, opcode), any mask bit and length code.
        return encode(
            draw(st.integers(0, 15)),
            draw(st.binary(max_size=150)),
            fin=draw(st.booleans()),
            rsv=draw(st.integers(0, 7)),
            mask=draw(st.integers(0, 4)) > 0,
        )
    if kind == "wrong_length":
        payload = draw(st.binary(max_size=150))
        declared = draw(st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1), st.sampled_from([MAX_MESSAGE, MAX_MESSAGE + 1, 2**63, 2**63 - 1, 2**64 - 1])))
        form = draw(st.sampled_from([None, 7, 16, 64]))
        return encode(draw(st.sampled_from([frames.OP_TEXT, frames.OP_BINARY, frames.OP_PING, frames.OP_CLOSE])), payload, declared=declared, form=form)
    if kind == "unmasked":
        return encode(draw(st.sampled_from([frames.OP_TEXT, frames.OP_BINARY, frames.OP_PING])), draw(st.binary(max_size=50)), mask=False)
    return draw(st.binary(max_size=64))


@st.composite
def mutated_stream(draw: Any) -> bytes:
    """A few frame pieces, then bit flips, truncation, inserted junk or a duplicated slice."""
    data = bytearray(b"".join(draw(st.lists(frame_piece(), min_size=1, max_size=5))))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "byte"]))
        at = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "duplicate":
            end = draw(st.integers(at, len(data)))
            data[at:at] = data[at:end]
        else:
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


HEADER_NAMES = ["Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Origin", "Cookie", "Authorization", "Sec-WebSocket-Protocol"]


@st.composite
def handshake_bytes(draw: Any) -> bytes:
    """A handshake request: valid, mutated line by line, or junk."""
    if draw(st.integers(0, 7)) == 0:
        return some_bytes(draw, 20_000)
    method = draw(st.sampled_from(["GET"] * 24 + ["POST", "get", "", "GET GET", "\x00"]))
    if draw(st.integers(0, 4)) == 0:
        target = draw(st.text(alphabet="/?#[]:@%&=.x1 \t", max_size=12))
    else:
        target = draw(st.sampled_from(["/echo"] * 30 + ["/echo?x=1&x=2", "/", "/nope", "echo", "*", "//echo", "/echo#frag", "", "/%ff%00", "/echo?%zz"]))
    version = draw(st.sampled_from(["HTTP/1.1"] * 24 + ["HTTP/1.0", "HTTP/2", "http/1.1", "", "HTTP/1.1 x"]))
    key = base64.b64encode(os.urandom(16)).decode()
    headers: list[tuple[str, str]] = [
        ("Host", "127.0.0.1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    lines: list[bytes] = []
    for name, value in headers:
        action = draw(st.sampled_from(["keep"] * 30 + ["drop", "value", "case", "dup", "huge", "space"]))
        if action == "drop":
            continue
        if action == "value":
            value = draw(st.binary(max_size=40)).decode("latin-1")
        elif action == "case":
            name, value = name.upper(), value.upper()
        elif action == "dup":
            lines.append(f"{name}: {value}".encode("latin-1"))
        elif action == "huge":
            value = "v" * draw(st.integers(1000, 20_000))
        elif action == "space":
            name = name + " "
        lines.append(f"{name}: {value}".encode("latin-1"))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        extra = draw(st.sampled_from(["random", "binary", "many", "no_colon", "empty_name"]))
        if extra == "random":
            lines.append(f"{draw(st.sampled_from([*HEADER_NAMES, 'X-Fuzz']))}: {draw(st.text(max_size=30))}".encode())
        elif extra == "binary":
            lines.append(draw(st.binary(max_size=60)))
        elif extra == "many":
            lines.extend(f"X-H{i}: {i}".encode() for i in range(draw(st.integers(50, 150))))
        elif extra == "no_colon":
            lines.append(b"NoColonHere")
        else:
            lines.append(b": value")
        lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop())
    eol = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r"]))
    head = f"{method} {target} {version}".encode() + eol + eol.join(lines)
    ending = draw(st.sampled_from([b"\r\n\r\n"] * 12 + [b"\r\n", b"", b"\n\n"]))
    after = draw(st.sampled_from([b"", b"", masked_frame(frames.OP_TEXT, b"early"), b"\x00\xff junk"]))
    return head + ending + after


# ---------------------------------------------------------------------- the properties


@settings(max_examples=examples(150), **FUZZ_SETTINGS)
@given(junk=st.binary(max_size=3000))
def test_random_bytes_after_handshake(env: FuzzEnv, logs: pytest.LogCaptureFixture, junk: bytes) -> None:
    """Random bytes after a valid handshake get well-formed frames and a valid close code (or a TCP close), never a hang."""
    _, body, reset = exchange(env.port, junk, handshake=True)
    event(f"close {check_server_frames(body, reset)}" + (" (reset)" if reset else ""))
    env.settle()
    no_tracebacks(logs)


@settings(max_examples=examples(500), **FUZZ_SETTINGS)
@given(stream=mutated_stream())
@example(stream=encode(frames.OP_CLOSE, b"\x03\xe8\xff"))  # close reason that is not UTF-8
@example(stream=encode(frames.OP_TEXT, b"x", declared=2**63, form=64))  # 64-bit length with the high bit set
@example(stream=encode(frames.OP_BINARY, b"", declared=MAX_MESSAGE + 1))  # over max_message_size
@example(stream=encode(frames.OP_TEXT, b"a", fin=False) + encode(frames.OP_TEXT, b"b"))  # new message inside a fragmented one
def test_mutated_frames(env: FuzzEnv, logs: pytest.LogCaptureFixture, stream: bytes) -> None:
    """Mutated frames (bit flips, truncation, wrong lengths, random opcodes/RSV, fragments, control/close payloads) end in a valid close or TCP close."""
    _, body, reset = exchange(env.port, stream, handshake=True)
    event(f"close {check_server_frames(body, reset)}" + (" (reset)" if reset else ""))
    env.settle()
    no_tracebacks(logs)


@settings(max_examples=examples(400), **FUZZ_SETTINGS)
@given(request=handshake_bytes())
@example(request=upgrade_request())
@example(request=upgrade_request("//["))  # a target urllib cannot split
def test_mutated_handshakes(env: FuzzEnv, logs: pytest.LogCaptureFixture, request: bytes) -> None:
    """Random and mutated handshake requests get a 101, an HTTP error status from the known set, or a TCP close, never a hang."""
    head, body, reset = exchange(env.port, request, handshake=False)
    event(check_http_answer(head, body, reset))
    env.settle()
    no_tracebacks(logs)


# ---------------------------------------------------------------------- pinned cases


def test_valid_request_through_the_fuzz_harness_is_accepted(env: FuzzEnv) -> None:
    """The harness's own valid request gets 101, and a valid masked frame is echoed before the close 1000 echo."""
    head, body, reset = exchange(env.port, upgrade_request() + masked_frame(frames.OP_TEXT, b"hi"), handshake=False)
    assert head.startswith(b"HTTP/1.1 101 ") and not reset
    parsed, _ = parse_server_frames(body)
    assert [(opcode, payload) for _, _, opcode, _, payload in parsed] == [(frames.OP_TEXT, b"hi")]  # no close: half-closed before one
    head, body, reset = exchange(env.port, masked_frame(frames.OP_TEXT, b"hi"), handshake=True)
    parsed, _ = parse_server_frames(body)
    assert [(opcode, payload) for _, _, opcode, _, payload in parsed] == [(frames.OP_TEXT, b"hi"), (frames.OP_CLOSE, struct.pack("!H", 1000))]
    env.settle()


def test_request_target_urllib_cannot_split_gets_400(env: FuzzEnv, logs: pytest.LogCaptureFixture) -> None:
    """A request target like '//[' (urlsplit raises ValueError) is answered 400, with no traceback logged."""
    raw = RawClient(env.port, timeout=IO_TIMEOUT)
    try:
        raw.send_raw(upgrade_request("//["))
        head = raw.read_head()
        assert head.startswith(b"HTTP/1.1 400 "), head
        assert raw.at_eof(IO_TIMEOUT)
    finally:
        raw.close()
    env.settle()
    no_tracebacks(logs)


def test_request_target_with_double_slash_is_not_routed_to_another_path(env: FuzzEnv) -> None:
    """'GET //other/echo' names the path '//other/echo' (RFC 7230 origin-form), so it gets 404, not the /echo endpoint."""
    raw = RawClient(env.port, timeout=IO_TIMEOUT)
    try:
        raw.send_raw(upgrade_request("//other/echo"))
        head = raw.read_head()
        assert head.startswith(b"HTTP/1.1 404 "), head
    finally:
        raw.close()
    env.settle()


def test_incomplete_handshake_is_dropped_after_handshake_timeout(env: FuzzEnv) -> None:
    """A client that sends half a request head and waits is disconnected after handshake_timeout (2 s here)."""
    raw = RawClient(env.port, timeout=IO_TIMEOUT)
    try:
        started = time.monotonic()
        raw.send_raw(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        assert raw.at_eof(IO_TIMEOUT)
        assert 1.5 <= time.monotonic() - started < 4.5
    finally:
        raw.close()
    env.settle()


def test_huge_frame_length_gets_1009_before_any_payload(env: FuzzEnv) -> None:
    """A frame announcing more than max_message_size is refused with 1009 at once, while the client keeps its side open."""
    raw = RawClient(env.port, timeout=IO_TIMEOUT)
    try:
        assert raw.handshake().startswith(b"HTTP/1.1 101")
        raw.send_raw(encode(frames.OP_BINARY, b"", declared=2**40, form=64))
        assert raw.recv_close()[0] == 1009
    finally:
        raw.close()
    env.settle()

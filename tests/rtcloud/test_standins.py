"""The rt-cloud stand-ins talk to each other, so they can be trusted to test syncws against."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The stand-ins need what rt-cloud's own code uses; say so plainly when one is missing.
for _module in ("bcrypt", "requests", "tornado", "websocket"):
    pytest.importorskip(_module, reason=f"needs {_module} for the rt-cloud stand-ins (pip install bcrypt requests tornado websocket-client)")

from .rtcloud_peer import EXAMPLE_CLASS_NAME, RtCloudPeer, SampleObject, make_bytes, rtcloud_login  # noqa: E402 - after the skips above
from .rtcloud_server import AUTH_FAILED, RemoteCallError, RtCloudServer, hash_password  # noqa: E402 - after the skips above

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every wait is bounded by this; the stand-ins answer in milliseconds, so it only matters on failure.
WAIT = 10.0
MiB = 2**20


@pytest.fixture
def server() -> Iterator[RtCloudServer]:
    """A started rt-cloud stand-in server in test mode, with one bcrypt user (alice/secret)."""
    srv = RtCloudServer(users={"alice": hash_password("secret")})
    srv.start()
    try:
        yield srv
    finally:
        assert srv.stop()


@pytest.fixture
def peer(server: RtCloudServer) -> Iterator[RtCloudPeer]:
    """A stand-in peer logged in to the server and connected to /wsData."""
    p = RtCloudPeer(server.ws_url, server.base_url, "test", "test", retry_delay=0.05, reconnect_delay=0.05)
    p.start()
    try:
        assert server.wait_connected(timeout=WAIT)
        yield p
    finally:
        assert p.stop()


def call(server: RtCloudServer, attribute: str, *args: Any, timeout: float = WAIT, **kwargs: Any) -> Any:
    """Call a method of the peer's ExampleInterface through the server."""
    return server.request(EXAMPLE_CLASS_NAME, attribute, args, kwargs, timeout=timeout)


def replies_for(server: RtCloudServer, call_id: int) -> list[dict[str, Any]]:
    """Return the reply messages the server received for one callId."""
    return [m for m in server.received_json() if isinstance(m, dict) and m.get("callId") == call_id]


def test_peer_logs_in_and_answers_echo(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """The peer logs in (GET form, POST, 302, cookie) and answers echo with one JSON part."""
    assert call(server, "echo", "hi") == "Echo: hi"
    assert ("test", True) in server.logins()
    (reply,) = replies_for(server, 1)
    assert list(reply) == [
        "cmd",
        "class",
        "attribute",
        "callId",
        "dataSerialization",
        "status",
        "fileSize",
        "fileHash",
        "numParts",
        "partId",
        "hash",
        "data",
        "dataSize",
    ]
    assert reply["dataSerialization"] == "json" and reply["numParts"] == 1 and reply["status"] == 200
    # The peer's cookie is the server's signed value for "test" (the jar keeps Tornado's quotes).
    assert peer.last_cookie is not None
    assert server.read_login_cookie(peer.last_cookie.strip('"')) == "test"


def test_bytes_arguments(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """A bytes positional argument arrives as bytes; a bytes keyword stays base64 text, as in rt-cloud."""
    assert call(server, "bytesLen", b"\x00\x01abc") == 5
    request = peer.received_json()[0]
    assert request["args"] == ["encodedBytes_0"] and request["encodedByteArgs"] == [0]
    assert request["encodedBytes_0"] == "AAFhYmM="
    assert call(server, "bytesType", data=b"ab") == "str"
    (reply,) = replies_for(server, 2)
    assert reply["encodedByteKwargs"] == ["data"]


def test_large_result_comes_in_three_compressed_parts(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """A 25 MiB bytes result comes in 3 zlib-compressed parts of 10, 10 and 5 MiB."""
    assert call(server, "getBytes", 25 * MiB, 7) == make_bytes(25 * MiB, 7)
    parts = replies_for(server, 1)
    assert [p["partId"] for p in parts] == [1, 2, 3]
    assert all(p["numParts"] == 3 and p["multipart"] is True and p["compressed"] is True for p in parts)
    assert [p["dataSize"] for p in parts] == [10 * MiB, 10 * MiB, 5 * MiB]
    assert {p["fileSize"] for p in parts} == {25 * MiB} and {p["dataSerialization"] for p in parts} == {"bytes"}


def test_small_result_is_not_compressed(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """A result of exactly 1 MiB is sent uncompressed; one byte more and it is compressed."""
    assert call(server, "getBytes", MiB, 1) == make_bytes(MiB, 1)
    assert call(server, "getBytes", MiB + 1, 1) == make_bytes(MiB + 1, 1)
    assert "compressed" not in replies_for(server, 1)[0]
    assert replies_for(server, 2)[0]["compressed"] is True


def test_pickled_results(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """None, a numpy array and an object come pickled; a tuple comes as JSON."""
    assert call(server, "none") is None
    array = call(server, "array", 4)
    assert array.dtype == np.float32 and array.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert call(server, "obj") == SampleObject()
    assert call(server, "add", 1, 2, c=3) == 6
    serializations = [replies_for(server, i)[0]["dataSerialization"] for i in (1, 2, 3, 4)]
    assert serializations == ["pickle", "pickle", "pickle", "json"]


def test_errors_are_status_400(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """An exception, an unknown class and an unencodable result come back as status 400."""
    with pytest.raises(RemoteCallError) as info:
        call(server, "fail", "boom")
    assert (info.value.status, info.value.error) == (400, "RPC Exception: rpc: boom")
    with pytest.raises(RemoteCallError) as info:
        server.request("Nope", "echo", ["x"], timeout=WAIT)
    assert info.value.error == "RPC Exception: rpc: RemoteHandler: class Nope not registered"


def test_message_without_class_is_malformed(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """A {"cancel": N} message is answered as a malformed call, with status 400."""
    server.send_raw({"cancel": 5})
    assert server.wait_until(lambda s: any(isinstance(m, dict) and "cancel" in m for m in s.received_json()), WAIT)
    (reply,) = [m for m in server.received_json() if "cancel" in m]
    assert reply == {
        "cancel": 5,
        "status": 400,
        "error": "RPC Exception: None: Malformed remote call struct: missing one of class None, attribute None",
    }


def test_requests_run_in_their_own_threads(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """An echo is answered while a sleep call blocks; the sleep returns once woken."""
    results: queue.Queue[Any] = queue.Queue()
    caller = threading.Thread(target=lambda: results.put(call(server, "sleep", WAIT)), name="sleep-caller", daemon=True)
    caller.start()
    assert peer.example.wait_sleeping(1, WAIT)
    assert call(server, "echo", "meanwhile") == "Echo: meanwhile"
    peer.example.wake()
    assert results.get(timeout=WAIT) == "slept"
    caller.join(WAIT)


def test_zero_byte_result_sends_nothing(server: RtCloudServer, peer: RtCloudPeer) -> None:
    """A b"" result yields no reply at all, so the caller times out."""
    with pytest.raises(TimeoutError):
        call(server, "zero", timeout=0.3)
    assert peer.wait_until(lambda p: p.busy() == 0, WAIT)
    assert replies_for(server, 1) == [] and peer.sent_messages() == []


def test_wrong_password_gets_no_cookie(server: RtCloudServer) -> None:
    """A wrong password is answered 200 with the form and no cookie; bcrypt users log in."""
    assert rtcloud_login(server.base_url, "test", "wrong") is None
    cookie = rtcloud_login(server.base_url, "alice", "secret")
    assert cookie is not None and server.read_login_cookie(cookie.strip('"')) == "alice"
    assert rtcloud_login(server.base_url, "alice", "wrong") is None
    # After a failure the name must wait, even with the right password.
    assert rtcloud_login(server.base_url, "alice", "secret") is None
    assert server.logins() == [("test", False), ("alice", True), ("alice", False), ("alice", False)]


def test_peer_with_wrong_password_keeps_retrying(server: RtCloudServer) -> None:
    """A peer whose login gives no cookie never connects and logs in again after its delay."""
    p = RtCloudPeer(server.ws_url, server.base_url, "test", "wrong", retry_delay=0.01)
    p.start()
    try:
        assert p.wait_until(lambda q: q.login_failures >= 2, WAIT)
        assert server.connection_count() == 0 and server.refused == 0 and p.connections == 0
    finally:
        assert p.stop()


@pytest.mark.parametrize("cookie", [None, "garbage", "other-secret"])
def test_peer_without_valid_cookie_is_refused(server: RtCloudServer, cookie: Any) -> None:
    """A websocket without a valid login cookie gets the JSON 401 error and is closed."""
    if cookie == "other-secret":
        cookie = RtCloudServer(cookie_secret="x" * 32).make_login_cookie("test")
    p = RtCloudPeer(server.ws_url, None, cookie=cookie, reconnect_delay=WAIT)
    p.start()
    try:
        assert server.wait_refused(timeout=WAIT)
        assert p.wait_for_message(lambda m: m == AUTH_FAILED, WAIT) == AUTH_FAILED
        assert p.wait_until(lambda q: q.disconnections >= 1, WAIT)
        assert server.connection_count() == 0
    finally:
        assert p.stop()


def test_subprocess_peer(server: RtCloudServer, tmp_path: Path) -> None:
    """The peer run as a subprocess prints READY once connected and answers, pickles included."""
    record = tmp_path / "received.jsonl"
    cmd = [sys.executable, "-m", "tests.rtcloud.rtcloud_peer", "--url", server.ws_url, "--login-url", server.base_url]
    cmd += ["--user", "test", "--password", "test", "--retry-delay", "0.05", "--reconnect-delay", "0.05", "--record", str(record)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read_lines() -> None:
        """Queue each stdout line, so the test can wait for READY with a bound."""
        for line in proc.stdout or []:
            lines.put(line)

    reader = threading.Thread(target=read_lines, name="peer-stdout", daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=30) == "READY\n"
        assert server.wait_connected(timeout=WAIT)
        assert call(server, "echo", "sub") == "Echo: sub"
        assert call(server, "obj") == SampleObject()
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT)
            reader.join(WAIT)
            if proc.stdout is not None:
                proc.stdout.close()
    received = [json.loads(json.loads(line)) for line in record.read_text().splitlines()]
    assert [m["attribute"] for m in received] == ["echo", "obj"]

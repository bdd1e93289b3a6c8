"""A syncws RemoteService in rt-cloud mode (wire="rtcloud", login=...) against the rt-cloud web server stand-in.

The server (``rtcloud_server.RtCloudServer``) logs the peer in as rt-cloud's
web server does and sends rt-cloud's rpc requests; every message the peer
sends it is recorded, so the tests check the wire as well as the values.
"""

from __future__ import annotations

import http.server
import random
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np
import pytest

import syncws
from syncws.calls.commands import current_call
from syncws.client.login import login, login_url

from .rtcloud_server import RemoteCallError, RtCloudServer, hash_password

pytestmark = pytest.mark.timeout(60)

MIB = 2**20
EXAMPLE = "ExampleInterface"


@pytest.fixture
def srv() -> Iterator[RtCloudServer]:
    """An rt-cloud web server stand-in in test mode (test/test) on 127.0.0.1, port 0."""
    server = RtCloudServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def peer(srv: RtCloudServer) -> Iterator[Callable[..., syncws.RemoteService]]:
    """Make a RemoteService in rt-cloud mode logged in to ``srv`` as test/test, stopped at the end."""
    made: list[syncws.RemoteService] = []

    def make(commands: dict[str, Callable[..., Any]], **options: Any) -> syncws.RemoteService:
        options.setdefault("login", ("test", "test"))
        service = syncws.RemoteService(srv.ws_url, wire="rtcloud", backoff_min=0.05, backoff_max=0.2, **options)
        made.append(service)
        for name, fn in commands.items():
            service.register(name, fn)
        service.start(timeout=10)
        # The peer sees the 101 before the server's open() lists the connection.
        assert srv.wait_connected(1)
        return service

    try:
        yield make
    finally:
        for service in made:
            service.stop()


def replies(srv: RtCloudServer) -> list[dict[str, Any]]:
    """The JSON objects the server received from the peer."""
    return [message for message in srv.received_json() if isinstance(message, dict)]


def payload(size: int, seed: int) -> bytes:
    """``size`` deterministic bytes that zlib cannot shrink."""
    return random.Random(seed).randbytes(size)


def returning(value: Any) -> Callable[[dict[str, Any]], Any]:
    """A command that returns ``value``."""
    return lambda request: value


class Example:
    """An object exposed with register_object, as rt-cloud's ExampleInterface is."""

    def __init__(self) -> None:
        self.prefix = "got "

    def echo(self, text: str) -> str:
        return self.prefix + text

    def add(self, a: int, b: int, c: int = 0) -> int:
        return a + b + c

    def _secret(self) -> str:
        return "hidden"

    @property
    def expensive(self) -> str:
        raise AssertionError("a property is not read at registration")


# ------------------------------------------------------------------ answering


def test_echo_is_answered(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """rt-cloud's call of ExampleInterface.echo runs the command registered as "ExampleInterface.echo"."""
    peer({f"{EXAMPLE}.echo": lambda request: request["args"][0]})
    assert srv.request(EXAMPLE, "echo", ["hello"]) == "hello"
    assert srv.logins() == [("test", True)]


def test_args_and_kwargs_reach_the_command(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """The command gets the request with its args (a list) and kwargs as rt-cloud sent them."""
    peer({f"{EXAMPLE}.both": lambda request: {"args": request["args"], "kwargs": request["kwargs"]}})
    assert srv.request(EXAMPLE, "both", [1, "two", [3]], {"k": 4.5}) == {"args": [1, "two", [3]], "kwargs": {"k": 4.5}}


def test_bytes_arguments_are_restored(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """A bytes argument (base64 with encodedByteArgs/encodedByteKwargs on the wire) reaches the command as bytes."""
    peer({f"{EXAMPLE}.kinds": lambda request: [type(request["args"][1]).__name__, request["args"][1].hex(), request["kwargs"]["blob"].hex()]})
    assert srv.request(EXAMPLE, "kinds", ["a", b"\x00\xff"], {"blob": b"\x01"}) == ["bytes", "00ff", "01"]


@pytest.mark.parametrize(("size", "parts"), [(2 * MIB, 1), (25 * MIB, 3)])
def test_large_bytes_results_arrive_whole_in_compressed_parts(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService], size: int, parts: int) -> None:
    """A bytes result over 1 MiB goes as rt-cloud's peers send it: 10 MiB parts, each zlib-compressed, and arrives whole."""
    data = payload(size, seed=size)
    peer({f"{EXAMPLE}.getBytes": lambda request: data})
    assert srv.request(EXAMPLE, "getBytes", timeout=30) == data
    sent = [reply for reply in replies(srv) if reply.get("attribute") == "getBytes"]
    assert [reply["partId"] for reply in sent] == list(range(1, parts + 1))
    assert all(reply["compressed"] is True and reply["dataSerialization"] == "bytes" and reply["numParts"] == parts for reply in sent)
    assert all(reply.get("multipart", False) is (parts > 1) for reply in sent)


@pytest.mark.parametrize("value", [None, True])
def test_none_and_true_go_as_json(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService], value: Any) -> None:
    """None and True, which rt-cloud's own peer pickles, go as dataSerialization json and read back as themselves."""
    peer({f"{EXAMPLE}.value": lambda request: value})
    assert srv.request(EXAMPLE, "value") is value
    assert [reply["dataSerialization"] for reply in replies(srv)] == ["json"]


def test_an_error_is_status_400_in_rtclouds_words(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """A command that raises is answered with status 400 and "RPC Exception: rpc: ..." carrying its message."""

    def fail(request: dict[str, Any]) -> None:
        raise ValueError("no such file")

    peer({f"{EXAMPLE}.fail": fail})
    with pytest.raises(RemoteCallError) as info:
        srv.request(EXAMPLE, "fail")
    assert info.value.status == 400
    assert info.value.error == "RPC Exception: rpc: ValueError: no such file"
    assert info.value.reply["class"] == EXAMPLE and info.value.reply["attribute"] == "fail"


def test_unknown_class_and_attribute_get_rtclouds_words(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """An unregistered class is "RemoteHandler: class X not registered", an unknown attribute of a known one an AttributeError's words; both 400."""
    peer({f"{EXAMPLE}.echo": lambda request: "x"})
    with pytest.raises(RemoteCallError) as unknown_class:
        srv.request("DataInterface", "getFile")
    assert (unknown_class.value.status, unknown_class.value.error) == (400, "RPC Exception: rpc: RemoteHandler: class DataInterface not registered")
    with pytest.raises(RemoteCallError) as unknown_attribute:
        srv.request(EXAMPLE, "nothing")
    assert (unknown_attribute.value.status, unknown_attribute.value.error) == (400, f"RPC Exception: rpc: '{EXAMPLE}' object has no attribute 'nothing'")


def test_an_ndarray_result_is_refused_clearly(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """A result that could only go pickled (an ndarray) is answered 400 saying so; its bytes or list go fine."""
    peer(
        {
            f"{EXAMPLE}.array": lambda request: np.arange(4),
            f"{EXAMPLE}.arrayBytes": lambda request: np.arange(4, dtype=np.uint8).tobytes(),
            f"{EXAMPLE}.arrayList": lambda request: np.arange(4).tolist(),
        }
    )
    with pytest.raises(RemoteCallError) as info:
        srv.request(EXAMPLE, "array")
    assert info.value.status == 400
    assert "numpy.ndarray" in info.value.error and "never pickle" in info.value.error
    assert srv.request(EXAMPLE, "arrayBytes") == b"\x00\x01\x02\x03"
    assert srv.request(EXAMPLE, "arrayList") == [0, 1, 2, 3]


def test_nothing_is_ever_pickled(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """Whatever the commands return, every message the peer sends is JSON text without dataSerialization pickle."""
    results: dict[str, Any] = {"none": None, "flag": False, "array": np.zeros(2), "scalar": np.float64(1.5), "object": object(), "set": {1}, "text": "t"}
    peer({f"{EXAMPLE}.{name}": returning(value) for name, value in results.items()})
    for name in results:
        try:
            srv.request(EXAMPLE, name)
        except RemoteCallError as exc:
            assert exc.status == 400
    received = srv.received_messages()
    assert len(received) == len(results) and all(isinstance(message, str) for message in received)
    assert all(reply.get("dataSerialization") in ("json", "bytes", None) for reply in replies(srv))


def test_a_message_without_class_is_malformed(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """A message without class or attribute (a syncws cancel here) is answered 400 "Malformed remote call struct", as rt-cloud's peers answer it."""
    peer({f"{EXAMPLE}.echo": lambda request: "x"})
    srv.send_raw({"cmd": "rpc", "attribute": "echo", "callId": 77})
    srv.send_raw({"cancel": 5})
    assert srv.wait_until(lambda s: len(replies(s)) == 2)
    first, second = replies(srv)
    assert first["status"] == 400 and first["callId"] == 77
    assert first["error"] == "RPC Exception: rpc: Malformed remote call struct: missing one of class None, attribute echo"
    assert second["status"] == 400 and second["error"].startswith("RPC Exception: unknown: Malformed remote call struct")


def test_register_object_answers_its_public_methods(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """register_object answers every public method of the object as "name.method" with method(*args, **kwargs), and no private one."""
    service = peer({})
    service.register_object(EXAMPLE, Example())
    assert srv.request(EXAMPLE, "echo", ["x"]) == "got x"
    assert srv.request(EXAMPLE, "add", [1, 2], {"c": 3}) == 6
    with pytest.raises(RemoteCallError) as info:
        srv.request(EXAMPLE, "_secret")
    assert info.value.error == f"RPC Exception: rpc: '{EXAMPLE}' object has no attribute '_secret'"


# ------------------------------------------------------------------ logging in


def test_a_wrong_password_raises_handshake_error_401_at_once() -> None:
    """start() with a wrong password raises HandshakeError 401 at once (a permanent refusal) and stops trying."""
    server = RtCloudServer(users={"alice": hash_password("right")}, test_mode=False)
    server.start()
    service = syncws.RemoteService(server.ws_url, wire="rtcloud", login=("alice", "wrong"), backoff_min=0.05)
    try:
        began = time.monotonic()
        with pytest.raises(syncws.HandshakeError) as info:
            service.start(timeout=10)
        assert time.monotonic() - began < 5.0
        assert info.value.status == 401 and info.value.permanent
        assert server.logins() == [("alice", False)]
        assert not service.connected and server.opened == 0
    finally:
        service.stop()
        server.stop()


def test_a_bcrypt_login_connects() -> None:
    """A name and password checked against a bcrypt hash log in, and the websocket opens with the login cookie."""
    server = RtCloudServer(users={"alice": hash_password("right")}, test_mode=False)
    server.start()
    service = syncws.RemoteService(server.ws_url, wire="rtcloud", login=("alice", "right"))
    service.register(f"{EXAMPLE}.echo", lambda request: request["args"][0])
    try:
        service.start(timeout=10)
        assert server.wait_connected(1)
        assert server.request(EXAMPLE, "echo", ["in"]) == "in"
        assert server.logins() == [("alice", True)] and server.refused == 0
    finally:
        service.stop()
        server.stop()


def test_the_peer_logs_in_again_before_each_connection(srv: RtCloudServer, peer: Callable[..., syncws.RemoteService]) -> None:
    """After its connection drops, the peer logs in again before it reconnects, as rt-cloud's peers do."""

    def drop(request: dict[str, Any]) -> str:
        call = current_call()
        assert call is not None
        call.conn.abort()  # type: ignore[attr-defined]
        return "dropped"

    peer({f"{EXAMPLE}.drop": drop, f"{EXAMPLE}.echo": lambda request: request["args"][0]})
    srv.send_raw({"cmd": "rpc", "class": EXAMPLE, "attribute": "drop", "args": [], "kwargs": {}, "callId": 1})
    assert srv.wait_until(lambda s: s.opened == 2 and s.connection_count() == 1, 10)
    assert srv.logins() == [("test", True), ("test", True)]
    assert srv.request(EXAMPLE, "echo", ["again"]) == "again"


def test_login_follows_a_redirect_to_the_login_page(srv: RtCloudServer) -> None:
    """A login page reached through a redirect is posted to where the form came from, and its cookie opens the websocket."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", srv.base_url + "/login")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=front.serve_forever, name="redirecting-front", daemon=True)
    thread.start()
    try:
        value = login(f"ws://127.0.0.1:{front.server_address[1]}/wsData", "test", "test", timeout=10)
    finally:
        front.shutdown()
        front.server_close()
        thread.join(5)
    assert value.startswith('"2|1:0|')  # kept as Tornado sent it, quotes included
    service = syncws.RemoteService(srv.ws_url, wire="rtcloud", cookie=f"login={value}")
    try:
        service.start(timeout=10)
        assert srv.wait_connected(1) and srv.refused == 0
    finally:
        service.stop()


def test_login_to_an_unreachable_server_is_transient() -> None:
    """A login page that cannot be reached raises NotConnected, which the service retries."""
    with RtCloudServer() as server:
        url = server.ws_url
    with pytest.raises(syncws.NotConnected):
        login(url, "test", "test", timeout=5)


def test_login_url_follows_the_websocket_url() -> None:
    """The login page is on the websocket's host and port: http for ws://, https for wss://, path /login."""
    assert login_url("ws://host:8888/wsData") == "http://host:8888/login"
    assert login_url("wss://[::1]:443/wsData?x=1") == "https://[::1]:443/login"
    with pytest.raises(ValueError):
        login_url("http://host/wsData")


# ------------------------------------------------------------------ what rt-cloud mode refuses


def test_request_and_unknown_wires_and_plain_names_are_refused(srv: RtCloudServer) -> None:
    """wire other than syncws/rtcloud is a ValueError; in rt-cloud mode request() raises RuntimeError and a name without a class ValueError."""
    with pytest.raises(ValueError):
        syncws.RemoteService(srv.ws_url, wire="tornado")
    service = syncws.RemoteService(srv.ws_url, wire="rtcloud")
    with pytest.raises(RuntimeError, match="rt-cloud"):
        service.request({"cmd": "getSettings"}, timeout=1)
    with pytest.raises(ValueError):
        service.register("echo", lambda request: None)

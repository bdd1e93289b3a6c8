"""A syncws server set up for rt-cloud (syncws.rtcloud) against rt-cloud's peer, as it is deployed.

The peer (``rtcloud_peer.RtCloudPeer``) follows RTCLOUD-WIRE.md byte for byte:
it logs in with ``requests``, connects with the ``login`` cookie and answers
``rpc`` requests in rt-cloud's parts. Everything it received is recorded, so
the tests check the wire (no cancel, base64 arguments) as well as the values.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import numpy as np
import pytest
import requests
import tornado.web
import websocket

import syncws
from syncws.handlers.registry import ConnectionRegistry
from syncws.rtcloud import add_endpoints, add_login, create_signed_value

from .rtcloud_peer import EXAMPLE_CLASS_NAME, RtCloudPeer, make_bytes
from .rtcloud_server import hash_password

pytestmark = pytest.mark.timeout(60)

MIB = 2**20
SECRET = "a cookie secret shared with the rt-cloud web server"
USER, PASSWORD = "alice", "correct horse"


class Site:
    """A syncws server with rt-cloud's login, /wsData and /wsSubject, and the peers started against it."""

    def __init__(self, **endpoint_options: Any) -> None:
        self.server = syncws.WebSocketServer(registry=ConnectionRegistry())
        self.login = add_login(self.server, users={USER: hash_password(PASSWORD)}, cookie_secret=SECRET)
        self.handlers = add_endpoints(self.server, cookie_secret=SECRET, **endpoint_options)
        self.server.start()
        self.http_url = f"http://127.0.0.1:{self.server.port}"
        self.peers: list[RtCloudPeer] = []

    def peer(self, user: str = USER, password: str = PASSWORD, *, wait: bool = True, **options: Any) -> RtCloudPeer:
        """Start an rt-cloud peer on /wsData that logs in as ``user``; wait until the server lists it."""
        options.setdefault("retry_delay", 0.2)
        options.setdefault("reconnect_delay", 0.2)
        options.setdefault("login_url", f"{self.http_url}/login")
        peer = RtCloudPeer(f"{self.server.url}/wsData", user=user, password=password, **options)
        self.peers.append(peer)
        peer.start()
        if wait:
            assert peer.wait_connected(10), peer.last_error
            assert wait_for(lambda: self.server.registry.newest("wsData") is not None)
        return peer

    def rpc(self, attribute: str, *args: Any, timeout: Optional[float] = 20, **kwargs: Any) -> dict[str, Any]:
        """Ask the newest /wsData peer to run ExampleInterface.<attribute>; the whole reply."""
        msg = {"cmd": "rpc", "class": EXAMPLE_CLASS_NAME, "attribute": attribute, "args": list(args), "kwargs": kwargs}
        return self.handlers["wsData"].doRequest(msg, timeout=timeout)

    def close(self) -> None:
        for peer in self.peers:
            peer.stop()
        self.server.stop()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Wait until ``predicate()`` holds, looking again every few milliseconds; False at the timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.005)
    return True


@pytest.fixture
def site() -> Iterator[Site]:
    """A syncws server for rt-cloud on 127.0.0.1, port 0, stopped with its peers at the end."""
    made = Site()
    try:
        yield made
    finally:
        made.close()


# ----------------------------------------------------------------------------- calls


def test_echo_returns_the_peer_result_decoded(site: Site) -> None:
    """rt-cloud's peer logs in, connects, and its echo comes back as the str it returned, not base64."""
    site.peer()
    reply = site.rpc("echo", "hi")
    assert reply["status"] == 200 and reply["data"] == "Echo: hi"


def test_arguments_and_keyword_arguments_reach_the_method(site: Site) -> None:
    """Positional and keyword arguments arrive as given: testMethod returns [args, kwargs]."""
    site.peer()
    reply = site.rpc("testMethod", 1, "two", [3.5], key="value", n=4)
    assert reply["data"] == [[1, "two", [3.5]], {"key": "value", "n": 4}]


@pytest.mark.parametrize("size", [2 * MIB, 25 * MIB], ids=["2MiB-one-part", "25MiB-three-parts"])
def test_a_large_bytes_result_arrives_whole(site: Site, size: int) -> None:
    """A bytes result comes back whole and checked, in one part or joined from three of 10 MiB."""
    peer = site.peer()
    reply = site.rpc("getBytes", size, seed=7)
    assert bytes(reply["data"]) == make_bytes(size, 7)
    parts = [m for m in peer.sent_messages() if m.get("attribute") == "getBytes"]
    assert len(parts) == (size + 10 * MIB - 1) // (10 * MIB) and all(p["compressed"] for p in parts)


def test_a_failing_method_raises_request_error_400_with_the_peer_text(site: Site) -> None:
    """An exception in the peer's method raises RequestError 400 carrying rt-cloud's error text."""
    site.peer()
    with pytest.raises(syncws.RequestError) as info:
        site.rpc("fail", "the scanner is off")
    assert info.value.status == 400 and "the scanner is off" in str(info.value)


def test_a_timeout_sends_no_cancel_and_the_connection_stays_usable(site: Site) -> None:
    """After a timeout nothing but the request went to the peer, its late reply is dropped, and the next call works."""
    peer = site.peer()
    with pytest.raises(syncws.RequestTimeout):
        site.rpc("sleep", 30, timeout=0.3)
    assert peer.example.wait_sleeping(1)
    peer.example.wake()
    assert peer.wait_until(lambda p: any(m.get("attribute") == "sleep" for m in p.sent_messages()))  # the late reply went out
    assert site.rpc("echo", "after")["data"] == "Echo: after"
    received = peer.received_json()
    assert [m.get("attribute") for m in received] == ["sleep", "echo"], received  # no {"cancel": N}
    assert not any(m.get("status") == 400 for m in peer.sent_messages())


def test_a_bytes_argument_travels_as_rtclouds_encoded_byte_args(site: Site) -> None:
    """A bytes positional argument goes out in base64 under encodedByteArgs and reaches the method as bytes."""
    peer = site.peer()
    data = make_bytes(100_000, 3)
    assert site.rpc("bytesLen", data)["data"] == len(data)
    request = peer.received_json()[-1]
    assert request["encodedByteArgs"] == [0] and request["args"] == ["encodedBytes_0"]
    assert base64.b64decode(request["encodedBytes_0"]) == data
    assert site.rpc("bytesType", data)["data"] == "bytes"


def test_a_pickled_none_and_ndarray_are_decoded(site: Site) -> None:
    """The restricted unpickler loads what rt-cloud pickles routinely: None and a numpy array."""
    site.peer()
    assert site.rpc("none")["data"] is None
    array = site.rpc("array", 1000)["data"]
    assert isinstance(array, np.ndarray) and array.dtype == np.float32
    np.testing.assert_array_equal(array, np.arange(1000, dtype=np.float32))


def test_a_pickled_object_is_refused_by_default(site: Site) -> None:
    """A pickled instance of an arbitrary class fails the call with 502 naming the refused global."""
    site.peer()
    with pytest.raises(syncws.RequestError) as info:
        site.rpc("obj")
    assert info.value.status == 502 and "SampleObject" in str(info.value)
    assert site.rpc("echo", "still fine")["data"] == "Echo: still fine"


def test_allow_pickle_loads_any_object() -> None:
    """With allow_pickle=True, the server's owner opts into loading the object itself."""
    made = Site(allow_pickle=True)
    try:
        made.peer()
        value = made.rpc("obj")["data"]
        assert type(value).__name__ == "SampleObject"
    finally:
        made.close()


def test_a_zero_byte_result_times_out(site: Site) -> None:
    """rt-cloud's peer sends nothing for an empty result: the caller times out instead of hanging."""
    site.peer()
    with pytest.raises(syncws.RequestTimeout):
        site.rpc("zero", timeout=0.5)


def test_wsSubject_takes_the_subject_pages_base64_json_replies(site: Site) -> None:
    """The subject page's reply, btoa(JSON.stringify(result)) without dataSerialization, decodes to the value."""
    ws = websocket.create_connection(f"{site.server.url}/wsSubject", cookie=f"login={_cookie(site)}", timeout=10)
    try:
        result: dict[str, Any] = {}

        def ask() -> None:
            result["reply"] = site.handlers["wsSubject"].doRequest({"cmd": "setResult", "value": 3}, timeout=10)

        asker = threading.Thread(target=ask)
        asker.start()
        request = json.loads(ws.recv())
        encoded = base64.b64encode(json.dumps({"response": "left", "rt": 512}).encode("latin-1")).decode()
        ws.send(json.dumps({"cmd": request["cmd"], "callId": request["callId"], "status": 200, "data": encoded}))
        asker.join(10)
        assert result["reply"]["data"] == {"response": "left", "rt": 512}
    finally:
        ws.close()


# ----------------------------------------------------------------------------- damaged replies


@pytest.mark.parametrize("damage", ["bad hash", "missing part"])
def test_a_damaged_reply_raises_502_and_the_connection_goes_on(site: Site, damage: str) -> None:
    """A part whose MD5 does not match fails the call with 502; a missing part leaves it to time out; the next call works."""
    ws = websocket.create_connection(f"{site.server.url}/wsData", cookie=f"login={_cookie(site)}", timeout=10)
    outcome: dict[str, Any] = {}

    def ask(timeout: float) -> None:
        try:
            outcome["reply"] = site.handlers["wsData"].doRequest({"cmd": "rpc", "class": "X", "attribute": "y"}, timeout=timeout)
        except Exception as exc:
            outcome["error"] = exc

    try:
        asker = threading.Thread(target=ask, args=(1.0 if damage == "missing part" else 10.0,))
        asker.start()
        request = json.loads(ws.recv())
        data = b"x" * 300
        for part_id, chunk in enumerate([data[:100], data[100:200], data[200:]], 1):
            if damage == "missing part" and part_id == 2:
                continue
            part_hash = "0" * 32 if damage == "bad hash" and part_id == 2 else hashlib.md5(chunk).hexdigest()
            ws.send(json.dumps({
                "cmd": "rpc", "class": "X", "attribute": "y", "callId": request["callId"], "status": 200,
                "dataSerialization": "bytes", "numParts": 3, "partId": part_id, "multipart": True,
                "fileSize": 300, "fileHash": hashlib.md5(data).hexdigest(), "dataSize": len(chunk),
                "hash": part_hash, "data": base64.b64encode(chunk).decode(),
            }))  # fmt: skip
        asker.join(10)
        error = outcome.get("error")
        if damage == "bad hash":
            assert isinstance(error, syncws.RequestError) and error.status == 502 and "hash" in str(error)
        else:
            assert isinstance(error, syncws.RequestTimeout)
        asker = threading.Thread(target=ask, args=(10.0,))
        outcome.clear()
        asker.start()
        request = json.loads(ws.recv())
        ws.send(json.dumps({"cmd": "rpc", "callId": request["callId"], "status": 200, "dataSerialization": "json", "numParts": 1, "partId": 1,
                            "fileSize": 2, "fileHash": hashlib.md5(b"42").hexdigest(), "dataSize": 2, "hash": hashlib.md5(b"42").hexdigest(),
                            "data": base64.b64encode(b"42").decode()}))  # fmt: skip
        asker.join(10)
        assert outcome.get("reply", {}).get("data") == 42, outcome
    finally:
        ws.close()


# ----------------------------------------------------------------------------- login and cookies


def _cookie(site: Site, user: str = USER, password: str = PASSWORD) -> str:
    """Log in as rt-cloud's peers do; the ``login`` cookie's value as the session keeps it."""
    with requests.Session() as session:
        assert session.get(f"{site.http_url}/login", timeout=10).status_code == 200
        posted = session.post(f"{site.http_url}/login", data={"name": user, "password": password, "_xsrf": session.cookies["_xsrf"]}, timeout=10)
        assert posted.status_code == 200, posted.text
        return str(session.cookies["login"])


def _handshake_status(site: Site, cookie: Optional[str]) -> int:
    """The HTTP status the server answers a /wsData upgrade with this Cookie header (101 when accepted)."""
    try:
        ws = websocket.create_connection(f"{site.server.url}/wsData", cookie=cookie, timeout=10)
    except websocket.WebSocketBadStatusException as exc:
        return int(exc.status_code)
    ws.close()
    return 101


def test_the_login_cookie_is_a_tornado_signed_value(site: Site) -> None:
    """The cookie add_login sets decodes with Tornado's own decode_signed_value and the shared secret, to the name."""
    cookie = _cookie(site).strip('"')
    assert tornado.web.decode_signed_value(SECRET, "login", cookie, max_age_days=0.5) == USER.encode()


def test_no_cookie_is_refused_with_401(site: Site) -> None:
    """An upgrade without a login cookie gets HTTP 401."""
    assert _handshake_status(site, None) == 401


def test_a_forged_cookie_is_refused_with_401(site: Site) -> None:
    """A cookie signed with another secret, or tampered with, gets HTTP 401."""
    forged = create_signed_value("another secret", "login", USER).decode()
    assert _handshake_status(site, f"login={forged}") == 401
    good = _cookie(site).strip('"')
    tampered = good.replace(base64.b64encode(USER.encode()).decode(), base64.b64encode(b"mallory").decode())
    assert _handshake_status(site, f'login="{tampered}"') == 401
    assert _handshake_status(site, f"login={good}") == 101


def test_a_cookie_signed_by_tornado_with_the_same_secret_is_accepted(site: Site) -> None:
    """A login cookie made by a real rt-cloud web server (Tornado) sharing the secret opens the websocket."""
    cookie = tornado.web.create_signed_value(SECRET, "login", USER).decode()
    peer = site.peer(wait=False, cookie=f'"{cookie}"', login_url=None)
    assert peer.wait_connected(10)
    assert site.rpc("echo", "tornado")["data"] == "Echo: tornado"


def test_an_expired_cookie_is_refused(site: Site) -> None:
    """A cookie signed more than half a day ago gets HTTP 401."""
    old = create_signed_value(SECRET, "login", USER, now=time.time() - 0.6 * 86400).decode()
    assert _handshake_status(site, f"login={old}") == 401


def test_a_wrong_password_gets_no_cookie(site: Site) -> None:
    """A wrong password is answered 401 without a login cookie, and the peer never connects."""
    with requests.Session() as session:
        session.get(f"{site.http_url}/login", timeout=10)
        posted = session.post(f"{site.http_url}/login", data={"name": USER, "password": "wrong", "_xsrf": session.cookies["_xsrf"]}, timeout=10)
        assert posted.status_code == 401 and "login" not in session.cookies
    peer = site.peer(password="wrong", wait=False)
    assert peer.wait_until(lambda p: p.login_failures >= 1)
    assert not peer.connected.is_set()


def test_an_unknown_name_gets_no_cookie(site: Site) -> None:
    """A name that is not in the accounts is refused like a wrong password."""
    with requests.Session() as session:
        session.get(f"{site.http_url}/login", timeout=10)
        posted = session.post(f"{site.http_url}/login", data={"name": "bob", "password": PASSWORD, "_xsrf": session.cookies["_xsrf"]}, timeout=10)
        assert posted.status_code == 401 and "login" not in session.cookies


def test_a_post_without_xsrf_gets_no_cookie(site: Site) -> None:
    """A POST without the _xsrf field and cookie, or with a field that does not match the cookie, is refused 403."""
    posted = requests.post(f"{site.http_url}/login", data={"name": USER, "password": PASSWORD}, timeout=10)
    assert posted.status_code == 403 and "login" not in posted.cookies
    with requests.Session() as session:
        session.get(f"{site.http_url}/login", timeout=10)
        posted = session.post(f"{site.http_url}/login", data={"name": USER, "password": PASSWORD, "_xsrf": "guessed"}, timeout=10)
        assert posted.status_code == 403 and "login" not in session.cookies


def test_a_name_that_failed_waits_before_its_next_attempt_counts(site: Site) -> None:
    """Right after a failure, even the right password is refused with 429; after the retry delay it logs in."""
    now = [1000.0]
    site.login._clock = lambda: now[0]
    with requests.Session() as session:
        session.get(f"{site.http_url}/login", timeout=10)
        form = {"name": USER, "password": "wrong", "_xsrf": session.cookies["_xsrf"]}
        assert session.post(f"{site.http_url}/login", data=form, timeout=10).status_code == 401
        form["password"] = PASSWORD
        assert session.post(f"{site.http_url}/login", data=form, timeout=10).status_code == 429
        now[0] += 10.5
        assert session.post(f"{site.http_url}/login", data=form, timeout=10).status_code == 200
        assert "login" in session.cookies


def test_test_mode_accepts_test_test() -> None:
    """add_login(test_mode=True) lets test/test in without any accounts, as rt-cloud's test mode does."""
    server = syncws.WebSocketServer(registry=ConnectionRegistry())
    add_login(server, cookie_secret=SECRET, test_mode=True)
    add_endpoints(server, cookie_secret=SECRET)
    server.start()
    try:
        with requests.Session() as session:
            session.get(f"http://127.0.0.1:{server.port}/login", timeout=10)
            form = {"name": "test", "password": "test", "_xsrf": session.cookies["_xsrf"]}
            assert session.post(f"http://127.0.0.1:{server.port}/login", data=form, timeout=10).status_code == 200
            assert "login" in session.cookies
    finally:
        server.stop()


def test_requesthandler_with_a_non_syncws_server_uses_the_default_registry(caplog: pytest.LogCaptureFixture) -> None:
    """RequestHandler(name, ioLoopInst) as the seed calls it works on websocketState and says so in the log."""
    caplog.set_level("INFO", logger="syncws.server.request_handler")
    handler = syncws.RequestHandler("wsRtCloudIoLoop", object())
    assert handler.registry is syncws.websocketState
    assert any("not a syncws WebSocketServer" in r.getMessage() for r in caplog.records)
    with pytest.raises(syncws.NotConnected):
        handler.doRequest({"cmd": "ping"}, timeout=1)


def test_wire_rtcloud_refuses_a_cluster() -> None:
    """wire='rtcloud' reaches this process's connections only: a cluster is refused at once."""
    with pytest.raises(ValueError, match="cluster"):
        syncws.RequestHandler("wsData", wire="rtcloud", cluster=syncws.RedisCluster("redis://127.0.0.1:1"))


def test_the_migration_recipe_runs_as_written(tmp_path: Any) -> None:
    """docs/migration.md's Python recipe for the server first prints the peer's echo."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "migration.md").read_text(encoding="utf-8")
    section = text[text.index("### The server first") : text.index("### The peers when the server has moved")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    script = tmp_path / "recipe.py"
    script.write_text(blocks[0], encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=50, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "Echo: hi"

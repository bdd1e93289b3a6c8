"""A new user's first mistakes with RequestHandler get a clear answer at once: a forgotten callback, a peer not there yet, a reply too big."""

from __future__ import annotations

import time

import pytest

import syncws
from syncws.handlers.registry import ConnectionRegistry

from ..peers import NAME, Env, in_thread

pytestmark = pytest.mark.timeout(30)


def test_a_request_to_an_endpoint_added_without_the_callback_fails_at_once_naming_it() -> None:
    """add_handler without callback=handler.callback: doRequest raises RuntimeError at once saying what to add, instead of waiting forever."""
    server = syncws.WebSocketServer(registry=ConnectionRegistry()).start()
    try:
        handler = syncws.RequestHandler(NAME, server)
        server.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME)  # the callback forgotten
        with syncws.RemoteService(server.url + "/" + NAME) as service:
            service.register("echo", lambda request: request)
            assert handler.wait_connected(10)
            started = time.monotonic()
            with pytest.raises(RuntimeError, match=r"callback=handler\.callback"):
                handler.doRequest({"cmd": "echo"})  # timeout=None: it used to wait forever
            assert time.monotonic() - started < 5
    finally:
        server.stop()


def test_wait_connected_returns_once_a_peer_connects() -> None:
    """wait_connected() blocks until the peer's connection opens, then returns True; a request then succeeds."""
    env = Env()
    try:
        _, result = in_thread(lambda: env.rh.wait_connected(20))
        service = env.service({"echo": lambda request: request["data"]})
        assert result.get(timeout=10)[:2] == ("ok", True)
        assert env.rh.doRequest({"cmd": "echo", "data": 7}, timeout=10)["data"] == 7
        service.stop()
    finally:
        env.close()


def test_wait_connected_returns_false_at_its_timeout() -> None:
    """Without a peer, wait_connected(0.2) returns False, and a NaN timeout is refused."""
    env = Env()
    try:
        assert env.rh.wait_connected(0.2) is False
        with pytest.raises(ValueError):
            env.rh.wait_connected(float("nan"))
    finally:
        env.close()


def test_wait_connected_counts_only_its_own_servers_peers() -> None:
    """A peer of the same name on another server sharing the registry does not end the wait."""
    registry = ConnectionRegistry()
    mine = syncws.WebSocketServer(registry=registry).start()
    other = syncws.WebSocketServer(registry=registry).start()
    try:
        handler = syncws.RequestHandler(NAME, mine)
        for server in (mine, other):
            server.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME, callback=handler.callback)
        with syncws.RemoteService(other.url + "/" + NAME):
            assert handler.wait_connected(0.3) is False
            with syncws.RemoteService(mine.url + "/" + NAME):
                assert handler.wait_connected(10) is True
    finally:
        other.stop()
        mine.stop()


def test_a_reply_over_max_message_size_says_1009_and_what_to_do() -> None:
    """A JSON reply over the server's max_message_size fails the call with ConnectionClosed whose text names 1009 and the way out."""
    registry = ConnectionRegistry()
    server = syncws.WebSocketServer(registry=registry, max_message_size=10_000).start()
    try:
        handler = syncws.RequestHandler(NAME, server)
        server.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME, callback=handler.callback)
        with syncws.RemoteService(server.url + "/" + NAME) as service:
            service.register("bigjson", lambda request: "x" * 50_000)
            assert handler.wait_connected(10)
            with pytest.raises(syncws.ConnectionClosed) as info:
                handler.doRequest({"cmd": "bigjson"}, timeout=20)
        text = str(info.value)
        assert info.value.code == 1009 and "code 1009" in text and "bigjson" in text
        assert "bytes or a numpy array" in text and "max_message_size" in text
    finally:
        server.stop()


def test_not_connected_names_the_names_that_do_have_peers() -> None:
    """RequestHandler("wsData") while the peer is connected under the name "data": NotConnected names 'data' and how many."""
    server = syncws.WebSocketServer(registry=ConnectionRegistry()).start()
    try:
        wrong = syncws.RequestHandler("wsData", server)
        right = syncws.RequestHandler("data", server)
        server.add_handler("/data", syncws.DataWebSocketHandler, name="data", callback=right.callback)
        with syncws.RemoteService(server.url + "/data") as service:
            service.register("echo", lambda request: request)
            assert right.wait_connected(10)
            with pytest.raises(syncws.NotConnected, match=r"wsData not connected\..*'data' \(1\)"):
                wrong.doRequest({"cmd": "echo"}, timeout=5)
    finally:
        server.stop()


def test_not_connected_without_any_peer_keeps_the_seeds_message() -> None:
    """With no peer under any name, NotConnected says exactly rtCommon's "X not connected. Please start the remote service."."""
    env = Env()
    try:
        with pytest.raises(syncws.NotConnected) as caught:
            env.rh.doRequest({"cmd": "echo"}, timeout=5)
        assert str(caught.value) == f"{NAME} not connected. Please start the remote service."
    finally:
        env.close()

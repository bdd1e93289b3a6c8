"""A cluster whose Redis or node stalls (SIGSTOP on a real redis-server, a socket that never answers): sends stay at most once, calls keep their time."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import websocket

import syncws
from syncws.cluster import SendUnconfirmed
from syncws.cluster.cluster import ClusterError, RedisCluster

from ..helpers import wait_for
from ..redis_server import RedisServer, needs_redis

pytestmark = [pytest.mark.timeout(60), needs_redis]

#: Generous for a loaded 2-core machine; the stalls these tests make last 1 s (Redis's socket timeout at ttl 1) to 10 s.
WITHIN = 2.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may freeze or stop."""
    server = RedisServer().start()
    yield server
    server.close()


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stopped with SIGSTOP: its sockets stay open and accept, and nothing answers; SIGCONT after."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


class Node:
    """A clustered server with /wsData and its RequestHandler, and /news for broadcasts (Redis socket timeout: 1 s)."""

    def __init__(self, url: str, name: str) -> None:
        self.cluster = RedisCluster(url, name=name, ttl=1.0)
        self.server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=self.cluster)
        self.handler = syncws.RequestHandler("wsData", self.server)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=self.handler.callback)
        self.server.add_handler("/news", syncws.DataWebSocketHandler, name="news")
        self.server.start()

    def connect(self, path: str) -> websocket.WebSocket:
        return websocket.create_connection(self.server.url + path, timeout=20)

    def stop(self) -> None:
        self.handler.close_links()
        self.server.stop()


@pytest.fixture
def nodes(own_redis: RedisServer, cluster_name: str) -> Iterator[list[Node]]:
    made = [Node(own_redis.url, cluster_name) for _ in range(2)]
    yield made
    for node in made:
        node.stop()


def until(ws: websocket.WebSocket, mark: str) -> list[Any]:
    """Every message ``ws`` gets up to and including ``mark``."""
    got = []
    while not got or got[-1] != mark:
        got.append(ws.recv())
    return got


def test_broadcast_while_redis_is_frozen_reaches_each_client_at_most_once(
    nodes: list[Node], own_redis: RedisServer, cluster_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Broadcasts while Redis is frozen reach each client at most once (none delivered here too after a PUBLISH Redis may still take); senders are told."""
    a, b = nodes
    listeners = [a.connect("/news"), b.connect("/news")]
    outsider = RedisCluster(own_redis.url, name=cluster_name, ttl=1.0)  # no heartbeat: its one pooled connection is the test's
    assert wait_for(lambda: len(outsider.connections("news")) == 2)
    assert len(a.cluster.connections("news")) == 2  # node A has a connection to Redis ready: its PUBLISH is written
    outcome: list[BaseException] = []
    with caplog.at_level(logging.WARNING), frozen(own_redis):
        syncws.sendWebSocketMessage("news", "through the registry", registry=a.server.registry)  # returns after the socket timeout
        try:
            outsider.send("news", "through the cluster")
        except (ClusterError, SendUnconfirmed) as exc:
            outcome.append(exc)
    for attempt in range(50):  # Redis answers again at once; bounded in case a connection is still being replaced
        try:
            a.cluster.send("news", "after")
            break
        except (ClusterError, SendUnconfirmed):
            assert attempt < 49
    for ws in listeners:
        got = until(ws, "after")
        assert got.count("through the registry") <= 1 and got.count("through the cluster") <= 1, got
        ws.close()
    # What the senders were told: the PUBLISH went out and was not confirmed.
    assert len(outcome) == 1 and isinstance(outcome[0], SendUnconfirmed), outcome
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    unconfirmed = sum("not delivered to this node's connections directly" in m for m in told)
    # Had node A's heartbeat taken the ready connection in the microseconds after the freeze, its PUBLISH was never
    # written (the connection's handshake timed out): nothing sent, so delivered to its own clients instead, and said so.
    unsent = sum("sending to this node's connections of 'news' only" in m for m in told)
    assert unconfirmed + unsent == 1, told


def test_send_to_a_stopped_redis_is_delivered_locally_once(nodes: list[Node], own_redis: RedisServer) -> None:
    """With Redis refusing connections nothing is published, so the registry's broadcast reaches this node's clients directly, once."""
    a, b = nodes
    here, there = a.connect("/news"), b.connect("/news")
    assert wait_for(lambda: len(a.cluster.connections("news")) == 2)
    own_redis.stop()
    try:
        syncws.sendWebSocketMessage("news", "local only", registry=a.server.registry)
        assert here.recv() == "local only"
    finally:
        own_redis.start()
    assert wait_for(lambda: len(a.cluster.connections("news")) == 2, timeout=15)
    for attempt in range(100):  # the subscribers resubscribe with backoff: bounded retries
        a.cluster.send("news", f"after {attempt}")
        there.settimeout(0.2)
        try:
            if there.recv().startswith("after"):
                break
        except websocket.WebSocketTimeoutException:
            assert attempt < 99
    got = until(here, f"after {attempt}")
    assert "local only" not in got
    here.close()
    there.close()


def test_call_to_a_record_while_redis_is_away_is_not_connected(nodes: list[Node], own_redis: RedisServer, cluster_name: str) -> None:
    """doRequest(conn=record) on another node, with no link open and Redis away, raises NotConnected (not ClusterError), before anything is sent."""
    a, _ = nodes
    peer = a.connect("/wsData")
    outsider = RedisCluster(own_redis.url, name=cluster_name, ttl=1.0)
    caller = syncws.RequestHandler("wsData", cluster=outsider)
    assert wait_for(lambda: len(outsider.connections("wsData")) == 1)
    record = outsider.connections("wsData")[0]
    own_redis.stop()
    try:
        with pytest.raises(syncws.NotConnected):
            caller.doRequest({"cmd": "x"}, timeout=5, conn=record)
    finally:
        own_redis.start()
    peer.close()


def test_presence_read_ends_by_the_callers_deadline_while_redis_is_frozen(own_redis: RedisServer, cluster_name: str) -> None:
    """With Redis frozen, choosing a peer for a call with 0.2 s left ends within the bound, where Redis's 5 s socket timeout used to rule."""
    outsider = RedisCluster(own_redis.url, name=cluster_name, ttl=5.0)  # socket timeouts of 5 s
    routes = syncws.RequestHandler("wsData", cluster=outsider).routes
    assert routes is not None and outsider.connections("wsData") == []
    with frozen(own_redis):
        started = time.monotonic()
        with pytest.raises(syncws.NotConnected):
            routes.newest(time.monotonic() + 0.2)  # Redis too slow: this process's own connections only, and it has none
        assert time.monotonic() - started < WITHIN
        started = time.monotonic()
        with pytest.raises(ClusterError, match="within the caller's timeout"):
            outsider.connections("wsData", time.monotonic() + 0.2)
        assert time.monotonic() - started < WITHIN


@contextmanager
def frozen_node(admin: redis.Redis, cluster_name: str) -> Iterator[syncws.ClusterConnection]:
    """A node in presence whose link endpoint accepts and never answers (a frozen node); yields a record of a peer on it."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connections into the backlog; nothing ever reads them
    admin.hset(f"syncws:{cluster_name}:node:frozen", "url", f"ws://127.0.0.1:{silent.getsockname()[1]}/_syncws/node")
    admin.zadd(f"syncws:{cluster_name}:nodes", {"frozen": int((time.time() + 3600) * 1000)})
    try:
        yield syncws.ClusterConnection("frozen", "frozen-1", "wsData", ("127.0.0.1", 1), time.time())
    finally:
        silent.close()


def test_opening_a_link_to_a_frozen_node_ends_by_the_callers_deadline(own_redis: RedisServer, cluster_name: str) -> None:
    """A link to a node that accepts and never answers (frozen) fails with NotConnected by the caller's deadline, not after the 10 s connect timeout."""
    outsider = RedisCluster(own_redis.url, name=cluster_name, ttl=1.0)
    routes = syncws.RequestHandler("wsData", cluster=outsider).routes
    assert routes is not None
    with frozen_node(redis.Redis.from_url(own_redis.url), cluster_name):
        started = time.monotonic()
        with pytest.raises(syncws.NotConnected):
            routes.link("frozen", time.monotonic() + 0.3)
        assert time.monotonic() - started < WITHIN


def test_a_link_without_a_deadline_is_still_bounded(own_redis: RedisServer, cluster_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link opened for a caller without a timeout waits at most the 10 s connect timeout per step, never forever."""
    import syncws.cluster.routing as routing

    asked: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        asked.append(kwargs.get("timeout"))
        raise syncws.NotConnected("not opened in this test")

    monkeypatch.setattr(routing, "NodeLink", refuse)
    outsider = RedisCluster(own_redis.url, name=cluster_name, ttl=1.0)
    routes = syncws.RequestHandler("wsData", cluster=outsider).routes
    assert routes is not None
    with frozen_node(redis.Redis.from_url(own_redis.url), cluster_name), pytest.raises(syncws.NotConnected):
        routes.link("frozen")
    assert asked == [routing.LINK_TIMEOUT]


def test_do_request_keeps_its_timeout_with_redis_or_a_node_frozen(own_redis: RedisServer, cluster_name: str) -> None:
    """doRequest(timeout=0.2) ends within the bound with Redis frozen (it took the 3 s socket timeout) or its peer's node frozen (10 s)."""
    outsider = RedisCluster(own_redis.url, name=cluster_name)  # ttl 3: socket timeouts of 3 s
    caller = syncws.RequestHandler("wsData", cluster=outsider)
    assert outsider.connections("wsData") == []
    with frozen(own_redis):
        started = time.monotonic()
        with pytest.raises((syncws.NotConnected, syncws.RequestTimeout)):
            caller.doRequest({"cmd": "x"}, timeout=0.2)
        assert time.monotonic() - started < WITHIN
    with frozen_node(redis.Redis.from_url(own_redis.url), cluster_name) as record:
        started = time.monotonic()
        with pytest.raises((syncws.NotConnected, syncws.RequestTimeout)):
            caller.doRequest({"cmd": "x"}, timeout=0.2, conn=record)
        assert time.monotonic() - started < WITHIN


def test_a_node_warns_once_when_redis_goes_and_once_when_it_is_back(
    own_redis: RedisServer, cluster_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped, then started again: each loop (presence, subscriber) warns once that it lost Redis and once that it is back."""
    node = Node(own_redis.url, cluster_name)
    caplog.set_level(logging.DEBUG, logger="syncws.cluster")
    try:
        own_redis.stop()
        assert wait_for(lambda: any("lost the pub/sub connection" in r.getMessage() for r in caplog.records), 10)
        assert wait_for(lambda: any("Redis is unreachable" in r.getMessage() for r in caplog.records), 10)
        own_redis.start()
        assert wait_for(lambda: any("subscribed again after" in r.getMessage() for r in caplog.records), 15)
        assert wait_for(lambda: any("Redis is reachable again after" in r.getMessage() for r in caplog.records), 15)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for said in ("lost the pub/sub connection", "subscribed again after", "Redis is unreachable", "Redis is reachable again after"):
            assert sum(said in message for message in warnings) == 1, (said, warnings)
    finally:
        node.stop()

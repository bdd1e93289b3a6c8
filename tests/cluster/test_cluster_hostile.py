"""A cluster under hostile input on a real redis-server: junk on its channel, in its keys and on its links leaves broadcasts and requests working."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import websocket

import syncws
from syncws.cluster.cluster import RedisCluster
from syncws.cluster.untrusted import PRESENCE, encode_envelope

from ..helpers import wait_for
from ..redis_server import RedisServer, needs_redis
from .junk import CHANNEL_JUNK, RECORD_JUNK

pytestmark = [pytest.mark.timeout(60), needs_redis]

LOGGER = "syncws.cluster.cluster"


class Node:
    """A clustered server: /wsData with its RequestHandler (which answers calls forwarded here), /news for broadcasts."""

    def __init__(self, url: str, name: str) -> None:
        self.cluster = RedisCluster(url, name=name, ttl=1.0, max_send_size=64 * 1024)
        self.server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=self.cluster)
        self.handler = syncws.RequestHandler("wsData", self.server)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=self.handler.callback)
        self.server.add_handler("/news", syncws.DataWebSocketHandler, name="news")
        self.server.start()

    def listener(self) -> websocket.WebSocket:
        return websocket.create_connection(self.server.url + "/news", timeout=10)

    def stop(self) -> None:
        self.handler.close_links()
        self.server.stop()


class Pair:
    """Nodes A and B of one cluster, a peer on A answering ``where``, and a /news listener on each node."""

    def __init__(self, url: str, name: str) -> None:
        self.name = name
        self.a, self.b = Node(url, name), Node(url, name)
        self.peer = syncws.RemoteService(self.a.server.url + "/wsData")
        self.peer.register("where", lambda msg: "A")
        self.peer.start(timeout=10)
        self.listeners = [self.a.listener(), self.b.listener()]
        assert wait_for(lambda: len(self.b.cluster.connections("wsData")) == 1 and len(self.a.cluster.connections("news")) == 2)
        self.admin = redis.Redis.from_url(url)
        self.marks = 0

    def key(self, *parts: str) -> str:
        return f"syncws:{self.name}:" + ":".join(parts)

    def announce(self, name: str) -> None:
        """Say on the channel that the connections of ``name`` changed, as a member does with each write: nodes drop their cached presence."""
        self.admin.publish(self.key("all"), encode_envelope(PRESENCE, {"name": name}))
        # The channel is read in order: a send after the announcement arriving means the announcement arrived.
        self.marks += 1
        syncws.sendWebSocketMessage("news", f"mark {self.marks}", registry=self.a.server.registry)
        for ws in self.listeners:
            assert ws.recv() == f"mark {self.marks}"

    def broadcasts_and_requests_work(self) -> None:
        """A broadcast from each node reaches both listeners exactly once, and node B's call reaches the peer on node A."""
        for sender in (self.a, self.b):
            self.marks += 1
            mark = f"mark {self.marks}"
            syncws.sendWebSocketMessage("news", mark, registry=sender.server.registry)
            for ws in self.listeners:
                assert ws.recv() == mark  # nothing before it: no junk was delivered, no earlier mark twice
        assert self.b.handler.doRequest({"cmd": "where"}, timeout=10)["data"] == "A"

    def stop(self) -> None:
        for ws in self.listeners:
            ws.close()
        self.peer.stop()
        self.a.stop()
        self.b.stop()


@pytest.fixture
def pair(redis_server: RedisServer, cluster_name: str) -> Iterator[Pair]:
    made = Pair(redis_server.url, cluster_name)
    yield made
    made.stop()


def crash_subscriber(node: Node) -> None:
    """Make node's subscriber loop die once with an error its own handlers do not catch; return once it has resubscribed."""
    subscriber: Any = node.cluster.subscriber
    tick = subscriber.tick

    def crash() -> None:
        subscriber.tick = tick
        raise SystemExit("injected crash")  # a BaseException: past the loop's own `except Exception`

    node.cluster._subscribed.clear()
    subscriber.tick = crash
    assert node.cluster._subscribed.wait(10)  # restarted and subscribed again


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage())


def test_junk_on_the_channel_leaves_broadcasts_working_with_one_warning_per_node(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """Every kind of junk published on the cluster's channel is dropped by every node with one warning each; broadcasts and requests work after."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for junk in CHANNEL_JUNK.values():
            pair.admin.publish(pair.key("all"), junk)
        pair.broadcasts_and_requests_work()
        for node in (pair.a, pair.b):
            assert node.cluster.subscriber.dropped == len(CHANNEL_JUNK)
            assert node.cluster.keeper.restarts("syncws-cluster-sub") == 0  # dropped by the loop, which never died
        assert warnings(caplog, "unreadable message on the cluster channel dropped") == 2  # rate-limited: one per node


def test_subscriber_that_dies_is_restarted_with_a_warning(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """A subscriber thread that dies anyway is restarted and says so at WARNING; broadcasts reach its node again."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        crash_subscriber(pair.a)
        assert pair.a.cluster.keeper.restarts("syncws-cluster-sub") == 1
        assert warnings(caplog, "thread syncws-cluster-sub died (SystemExit: injected crash); restarting it") == 1
        pair.broadcasts_and_requests_work()


def test_junk_then_a_restart_then_junk_again(pair: Pair) -> None:
    """Junk on the channel, a subscriber restart, the same junk again: every node still broadcasts and answers each time."""
    for junk in CHANNEL_JUNK.values():
        pair.admin.publish(pair.key("all"), junk)
    pair.broadcasts_and_requests_work()
    crash_subscriber(pair.a)
    crash_subscriber(pair.b)
    pair.broadcasts_and_requests_work()
    for junk in CHANNEL_JUNK.values():
        pair.admin.publish(pair.key("all"), junk)
    pair.broadcasts_and_requests_work()


def test_junk_presence_records_are_skipped_with_one_warning(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """Presence records no member writes (an id not UTF-8, nesting, sizes, types) are skipped, with one warning: calls still reach the peer."""
    conns = pair.key("conns", pair.a.cluster.node_id, "wsData")
    pair.admin.hset(conns, mapping=dict(RECORD_JUNK.values()))
    pair.announce("wsData")  # as a buggy member would: the nodes read the junk now, not when their cache runs out
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            assert pair.b.handler.doRequest({"cmd": "where"}, timeout=10)["data"] == "A"
            assert [r.node for r in pair.b.cluster.connections("wsData")] == [pair.a.cluster.node_id]
        assert warnings(caplog, "unreadable presence record") == 1
    # Later: node A's heartbeat finds its hash holding more than its connections and writes it again.
    assert wait_for(lambda: pair.admin.hlen(conns) == 1)
    pair.broadcasts_and_requests_work()


def test_junk_nodes_and_node_hashes_are_passed_over(pair: Pair) -> None:
    """Junk members of the nodes set, and nodes whose hash is junk, are passed over: calls still go to the real newest peer."""
    far = int((time.time() + 3600) * 1000)
    newest = json.dumps({"name": "wsData", "address": ["h", 1], "opened": time.time() + 60})
    pair.admin.zadd(pair.key("nodes"), {b"\xff\xfe": far, "x" * 1000: far, "ghost": far, "badurl": far, "fake": far})
    for node in ("ghost", "badurl", "fake"):
        pair.admin.hset(pair.key("conns", node, "wsData"), f"{node}-1", newest)
    pair.admin.hset(pair.key("node", "badurl"), "url", "javascript:alert(1)")
    pair.admin.set(pair.key("node", "fake"), "a string, not a hash")
    pair.admin.hset(pair.key("node", pair.a.cluster.node_id), "junk", b"\xff\xfe")  # a field of A's own hash: not UTF-8
    pair.announce("wsData")
    assert [r.node for r in pair.b.cluster.connections("wsData")] == [pair.a.cluster.node_id]
    pair.b.handler.close_links()  # the next call opens a new link: it reads A's hash
    pair.broadcasts_and_requests_work()


def test_keys_of_the_wrong_type_are_replaced(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    """The nodes set, a node's hashes and the token overwritten with other types are put right by the nodes' heartbeats."""
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for key in (pair.key("nodes"), pair.key("node", pair.a.cluster.node_id), pair.key("conns", pair.a.cluster.node_id, "wsData"), pair.key("token")):
            pair.admin.delete(key)
            pair.admin.rpush(key, "junk")
        a = pair.a.cluster.node_id
        assert wait_for(lambda: [r.node for r in pair.b.cluster.connections("wsData")] == [a] and pair.b.cluster.node_alive(a), timeout=10)
        assert wait_for(lambda: pair.admin.type(pair.key("token")) == b"string", timeout=10)
        pair.b.handler.close_links()
        pair.broadcasts_and_requests_work()
        assert warnings(caplog, "presence not renewed") >= 1


def test_an_empty_token_in_redis_is_never_accepted(pair: Pair) -> None:
    """With an empty token in Redis, an empty bearer is refused (401) and a fresh member refuses it too; the nodes put a usable token back."""
    pair.admin.set(pair.key("token"), "")
    with pytest.raises(syncws.HandshakeError) as refused:
        syncws.connect(pair.a.server.url + "/_syncws/node", header=["Authorization: Bearer "], timeout=5)
    assert refused.value.status == 401
    newcomer = RedisCluster(pair.a.cluster.url, name=pair.name)
    assert not newcomer.check_token("")
    assert wait_for(lambda: pair.admin.get(pair.key("token")) == pair.a.cluster.token().encode())
    assert newcomer.token() == pair.a.cluster.token()
    pair.b.handler.close_links()
    pair.broadcasts_and_requests_work()


def test_junk_on_a_node_link_leaves_the_link_working(pair: Pair) -> None:
    """Junk sent on a node link (nesting, binary, a connection id of any type or size) is answered or dropped; the link still relays calls."""
    link = syncws.connect(pair.a.server.url + "/_syncws/node", header=[f"Authorization: Bearer {pair.a.cluster.token()}"], timeout=5)
    try:
        conn_id = pair.a.cluster.local_connections("wsData")[0].id
        junk: list[Any] = [
            "[" * 100_000,
            "not json",
            b"\x00\xff binary",
            json.dumps({"cmd": "where", "callId": 1, "_syncwsConn": "x" * 100_000}),
            json.dumps({"cmd": "where", "callId": 2, "_syncwsConn": ["list"]}),
            json.dumps({"cancel": 3, "_syncwsConn": {"a": 1}}),
            json.dumps({"status": 200, "callId": 4}),
        ]
        for message in junk:
            link.send(message)
        link.send(json.dumps({"cmd": "where", "callId": 99, "_syncwsConn": conn_id}))
        while True:
            reply = json.loads(link.recv(timeout=10))  # type: ignore[arg-type]
            if reply.get("callId") == 99:
                break
        assert reply["status"] == 200 and reply["data"] == "A"
    finally:
        link.close()
    pair.broadcasts_and_requests_work()

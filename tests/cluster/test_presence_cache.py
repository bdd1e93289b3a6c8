"""The presence cache: calls without conn= stop asking Redis each time, and never pick from what a change made stale."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
import websocket

import syncws
from syncws.cluster.cluster import ClusterConnection, ClusterError, RedisCluster
from syncws.cluster.presence_cache import PresenceCache
from syncws.cluster.untrusted import PRESENCE, Unreadable, encode_envelope, read_send

from ..helpers import wait_for
from ..redis_server import RedisServer, needs_redis

pytestmark = pytest.mark.timeout(60)

#: Long enough that an entry outlives every wait below: only an invalidation can drop it in time.
TTL = 30.0


def _record(conn_id: str) -> ClusterConnection:
    return ClusterConnection("node", conn_id, "wsData", ("127.0.0.1", 1), time.time())


def test_nothing_is_served_before_the_subscription_is_confirmed() -> None:
    """An untrusted cache (no confirmed subscription) keeps nothing and serves nothing."""
    cache = PresenceCache(max_age=60)
    cache.put("wsData", cache.begin("wsData"), [_record("a")])
    assert cache.get("wsData") is None
    cache.trust()
    cache.put("wsData", cache.begin("wsData"), [_record("a")])
    assert [r.id for r in cache.get("wsData") or []] == ["a"]
    cache.distrust()
    assert cache.get("wsData") is None


def test_a_read_that_began_before_a_change_is_not_kept() -> None:
    """A read begun before an invalidation of its name (or a resubscription) does not store its older answer."""
    cache = PresenceCache(max_age=60)
    cache.trust()
    began = cache.begin("wsData")
    cache.invalidate("wsData")
    cache.put("wsData", began, [_record("old")])
    assert cache.get("wsData") is None
    began = cache.begin("wsData")
    cache.trust()  # resubscribed meanwhile: changes may have been missed
    cache.put("wsData", began, [_record("old")])
    assert cache.get("wsData") is None


def test_an_entry_expires_at_max_age() -> None:
    """An entry is served for max_age seconds at most, however quiet the channel."""
    now = [100.0]
    cache = PresenceCache(max_age=1.0, clock=lambda: now[0])
    cache.trust()
    cache.put("wsData", cache.begin("wsData"), [_record("a")])
    now[0] += 1.0
    assert cache.get("wsData") is not None
    now[0] += 0.01
    assert cache.get("wsData") is None


def test_a_presence_change_on_the_channel_is_a_name_and_nothing_else() -> None:
    """A presence envelope reads back as its name; one that carries a payload or no name is Unreadable."""
    assert read_send(encode_envelope(PRESENCE, {"name": "wsData"})).name == "wsData"
    for junk in (encode_envelope(PRESENCE, {"name": "wsData"}, b"x"), encode_envelope(PRESENCE, {})):
        with pytest.raises(Unreadable):
            read_send(junk)


class Node:
    """A clustered server with a /wsData endpoint and its RequestHandler (ttl 30 s: cache entries live 10 s)."""

    def __init__(self, url: str, name: str) -> None:
        self.cluster = RedisCluster(url, name=name, ttl=TTL)
        self.server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=self.cluster)
        self.handler = syncws.RequestHandler("wsData", self.server)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=self.handler.callback)
        self.server.start()

    def stop(self) -> None:
        self.handler.close_links()
        self.server.stop()


@pytest.fixture
def nodes(redis_server: RedisServer, cluster_name: str) -> Iterator[list[Node]]:
    made = [Node(redis_server.url, cluster_name) for _ in range(2)]
    yield made
    for node in made:
        node.stop()


def _peer(node: Node, reply: str) -> syncws.RemoteService:
    service = syncws.RemoteService(node.server.url + "/wsData")
    service.register("who", lambda request: reply)
    return service.start()


def _who(node: Node) -> object:
    """The answer of the peer node's calls reach now; None while a peer that left is still being chosen (a few ms)."""
    try:
        return node.handler.doRequest({"cmd": "who"}, timeout=10)["data"]
    except syncws.NotConnected:
        return None


@needs_redis
def test_calls_without_conn_ask_redis_once_not_each_time(nodes: list[Node]) -> None:
    """50 calls from node A to a peer on node B read the presence from Redis about once; the rest come from the cache."""
    a, b = nodes
    with _peer(b, "on b"):
        assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
        misses = a.cluster.presence_cache.misses
        for _ in range(50):
            assert a.handler.doRequest({"cmd": "who"}, timeout=10)["data"] == "on b"
        assert a.cluster.presence_cache.misses - misses <= 2  # one read, and one more if a beat's change raced it
        assert a.cluster.presence_cache.hits >= 48


@needs_redis
def test_a_newer_peer_on_another_node_is_chosen_at_once(nodes: list[Node]) -> None:
    """A peer connecting on node B is the target of node A's next calls within seconds, not at the entry's 10 s age."""
    a, b = nodes
    with _peer(a, "first"):
        assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
        assert a.handler.doRequest({"cmd": "who"}, timeout=10)["data"] == "first"  # cached now
        with _peer(b, "newer"):
            assert wait_for(lambda: _who(a) == "newer", timeout=5)
        # and when it leaves, A's own peer is the target again
        assert wait_for(lambda: _who(a) == "first", timeout=5)


@needs_redis
def test_a_closed_connection_leaves_the_cache_with_its_change(nodes: list[Node]) -> None:
    """After a connection on node B closes, node A's connections() stops listing it within seconds."""
    a, b = nodes
    ws = websocket.create_connection(b.server.url + "/wsData", timeout=5)
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
    assert len(a.cluster.connections("wsData")) == 1  # now served from the cache
    ws.close()
    assert wait_for(lambda: a.cluster.connections("wsData") == [], timeout=5)


@needs_redis
def test_with_redis_gone_the_cache_is_not_served(cluster_name: str) -> None:
    """Once a node loses its subscription, connections() goes to Redis (and fails) rather than answering from the cache."""
    own = RedisServer().start()
    try:
        node = Node(own.url, cluster_name)
        try:
            ws = websocket.create_connection(node.server.url + "/wsData", timeout=5)
            assert wait_for(lambda: len(node.cluster.connections("wsData")) == 1)
            assert node.cluster.connections("wsData") != []  # cached
            own.stop()
            # The subscriber notices within its poll (ttl/3, at most 1 s) and distrusts the cache.
            assert wait_for(lambda: node.cluster.presence_cache.get("wsData") is None, timeout=10)
            with pytest.raises(ClusterError):
                node.cluster.connections("wsData", time.monotonic() + 2)
            ws.close()
        finally:
            node.stop()
    finally:
        own.close()


@needs_redis
def test_invalidations_of_made_up_names_cost_no_memory(nodes: list[Node], redis_server: RedisServer, cluster_name: str) -> None:
    """10,000 presence changes of distinct made-up names published on the channel leave the cache's tables their size."""
    a, _ = nodes
    admin = redis.Redis.from_url(redis_server.url)
    pipe = admin.pipeline(transaction=False)
    for i in range(10_000):
        pipe.publish(f"syncws:{cluster_name}:all", encode_envelope(PRESENCE, {"name": f"made-up-{i}"}))
    pipe.publish(f"syncws:{cluster_name}:all", encode_envelope(PRESENCE, {"name": "wsData"}))
    pipe.execute()
    # The channel is read in order: once the last (wsData's) change is in, so are the 10,000 before it.
    assert wait_for(lambda: a.cluster.connections("wsData") == [] and a.cluster.presence_cache.get("wsData") is not None)
    began = a.cluster.presence_cache.begin("wsData")
    admin.publish(f"syncws:{cluster_name}:all", encode_envelope(PRESENCE, {"name": "wsData"}))
    assert wait_for(lambda: a.cluster.presence_cache.begin("wsData") != began, timeout=10)
    assert len(a.cluster.presence_cache._generations) == 1024
    assert len(a.cluster.presence_cache._entries) <= 1

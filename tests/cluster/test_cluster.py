"""Servers as one cluster on a real redis-server: presence, sends to every node, and what survives failures."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

import syncws
from syncws.cluster.cluster import ClusterConnection, RedisCluster, decode_envelope, encode_envelope

from ..helpers import wait_for
from ..redis_server import RedisServer, needs_redis

pytestmark = [pytest.mark.timeout(60), needs_redis]


class Node:
    """A clustered server with a /wsData endpoint and its own registry."""

    def __init__(self, url: str, name: str, **options: Any) -> None:
        self.cluster = RedisCluster(url, name=name, ttl=1.0)
        self.server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=self.cluster, **options)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData")
        self.server.start()

    def connect(self) -> websocket.WebSocket:
        return websocket.create_connection(self.server.url + "/wsData", timeout=5)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def nodes(redis_server: RedisServer, cluster_name: str) -> Iterator[list[Node]]:
    """Two clustered servers on one Redis, stopped afterwards."""
    made = [Node(redis_server.url, cluster_name) for _ in range(2)]
    yield made
    for node in made:
        node.stop()


def _names(records: list[ClusterConnection]) -> list[str]:
    return [r.node for r in records]


def test_envelope_round_trip() -> None:
    """A cluster envelope carries its kind, header and binary payload unchanged; anything else is refused."""
    kind, header, payload = decode_envelope(encode_envelope(2, {"name": "wsData"}, b"\x00\xff" * 10))
    assert (kind, header, bytes(payload)) == (2, {"name": "wsData"}, b"\x00\xff" * 10)
    for junk in (b"", b"SWC1", b"XXXX\x01\x00\x00\x00\x02{}", encode_envelope(1, {})[:-1]):
        with pytest.raises(ValueError):
            decode_envelope(junk)


def test_connections_on_every_node_newest_last(nodes: list[Node]) -> None:
    """cluster.connections() lists the connections of every node, newest last, from any node."""
    a, b = nodes
    first = a.connect()
    assert wait_for(lambda: len(b.cluster.connections("wsData")) == 1)
    second = b.connect()
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 2)
    records = a.cluster.connections("wsData")
    assert _names(records) == [a.cluster.node_id, b.cluster.node_id]
    assert records[0].remote_address[0] == "127.0.0.1" and records[0].opened_at <= records[1].opened_at
    assert a.cluster.connections("other") == []
    first.close()
    second.close()


def test_closed_connection_disappears_at_once(nodes: list[Node]) -> None:
    """A connection that closes leaves the cluster's presence as soon as its node has seen it close."""
    a, b = nodes
    ws = a.connect()
    assert wait_for(lambda: len(b.cluster.connections("wsData")) == 1)
    ws.close()
    assert wait_for(lambda: b.cluster.connections("wsData") == [], timeout=0.9)  # well within the 1 s ttl


def test_stopped_node_disappears_at_once(nodes: list[Node]) -> None:
    """A node's stop() removes it and its connections from presence at once, not after ttl."""
    a, b = nodes
    ws = a.connect()
    assert wait_for(lambda: len(b.cluster.connections("wsData")) == 1)
    a.stop()
    assert b.cluster.connections("wsData") == [] and not b.cluster.node_alive(a.cluster.node_id)
    ws.close()


def test_send_reaches_every_connection_once(nodes: list[Node], redis_server: RedisServer, cluster_name: str) -> None:
    """cluster.send from a process without a server reaches every connection on every node exactly once, text and binary alike."""
    a, b = nodes
    clients = [a.connect(), a.connect(), b.connect()]
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 3)
    outsider = RedisCluster(redis_server.url, name=cluster_name)
    outsider.send("wsData", "text")
    outsider.send("wsData", b"\x00\x01binary")
    outsider.send("wsData", {"cmd": "note"})
    outsider.send("wsData", "last")
    for ws in clients:
        got = [ws.recv() for _ in range(4)]
        assert got == ["text", b"\x00\x01binary", '{"cmd": "note"}', "last"]
        ws.settimeout(0.3)
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv()  # nothing twice
        ws.close()


def test_registry_functions_act_on_every_node(nodes: list[Node]) -> None:
    """On a clustered server's registry, sendWebSocketMessage and closeAllConnections reach every node's connections."""
    a, b = nodes
    on_a, on_b = a.connect(), b.connect()
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 2)
    syncws.sendWebSocketMessage("wsData", "to all", registry=a.server.registry)
    assert on_a.recv() == "to all" and on_b.recv() == "to all"
    syncws.closeAllConnections(registry=b.server.registry)
    for ws in (on_a, on_b):
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(data[:2], "big") == 1001
    assert wait_for(lambda: a.cluster.connections("wsData") == [])


def test_sends_keep_their_order(nodes: list[Node]) -> None:
    """200 messages that one thread sends through the cluster reach a connection on another node in order."""
    a, b = nodes
    ws = b.connect()
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
    for i in range(200):
        a.cluster.send("wsData", str(i))
    assert [ws.recv() for _ in range(200)] == [str(i) for i in range(200)]
    ws.close()


def test_a_node_is_seen_only_once_it_hears_sends(redis_server: RedisServer, cluster_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose pub/sub subscription is slow to start shows no connection before it is subscribed: a send to a
    connection that other nodes can see always arrives."""
    import redis.client

    subscribe = redis.client.PubSub.subscribe

    def slow_subscribe(self: Any, *args: Any, **kwargs: Any) -> Any:
        threading.Event().wait(0.5)  # the fault: Redis is slow to take the subscription
        return subscribe(self, *args, **kwargs)

    sender = Node(redis_server.url, cluster_name)
    monkeypatch.setattr(redis.client.PubSub, "subscribe", slow_subscribe)
    slow = Node(redis_server.url, cluster_name)
    try:
        ws = slow.connect()
        assert wait_for(lambda: len(sender.cluster.connections("wsData")) == 1)
        sender.cluster.send("wsData", "first")
        assert ws.recv() == "first"
        ws.close()
    finally:
        slow.stop()
        sender.stop()


def test_redis_restart_keeps_local_traffic_and_republishes(nodes: list[Node], redis_server: RedisServer) -> None:
    """While Redis restarts, local connections keep working; afterwards presence is republished and sends flow again."""
    a, b = nodes
    ws = a.connect()
    handler = syncws.RequestHandler("wsData", a.server)
    assert wait_for(lambda: len(b.cluster.connections("wsData")) == 1)
    redis_server.stop()
    try:
        with pytest.raises(syncws.ClusterError):
            b.cluster.connections("wsData")
        local = a.server.registry.newest("wsData")
        assert local is not None
        local.write_message("local while Redis is down")
        assert ws.recv() == "local while Redis is down"
    finally:
        redis_server.start()
    assert wait_for(lambda: len(b.cluster.connections("wsData")) == 1, timeout=15)
    for attempt in itertools.count():  # the subscriber may still be resubscribing: bounded retries
        b.cluster.send("wsData", f"after restart {attempt}")
        ws.settimeout(1)
        try:
            assert ws.recv().startswith("after restart")
            break
        except websocket.WebSocketTimeoutException:
            assert attempt < 10
    del handler
    ws.close()


def test_cluster_given_as_a_url() -> None:
    """WebSocketServer(cluster=URL) makes its own RedisCluster named "syncws", without reaching Redis until started."""
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster="redis://127.0.0.1:1/0")
    assert isinstance(server.cluster, RedisCluster) and server.cluster.name == "syncws"
    server.server_close()


def test_missing_redis_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the redis package, RedisCluster raises an ImportError that says to install syncws[redis]."""
    monkeypatch.setitem(__import__("sys").modules, "redis", None)
    with pytest.raises(ImportError, match=r"syncws\[redis\]"):
        RedisCluster("redis://127.0.0.1:1/0")


def test_keys_and_channels_are_namespaced(nodes: list[Node], redis_server: RedisServer, cluster_name: str) -> None:
    """Every key a cluster writes starts with syncws:<name>:, and a cluster of another name sees none of its connections."""
    import redis

    a, _ = nodes
    ws = a.connect()
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
    keys = [k.decode() for k in redis.Redis.from_url(redis_server.url).keys("*")]
    assert keys and all(k.startswith("syncws:") for k in keys)
    assert any(k.startswith(f"syncws:{cluster_name}:") for k in keys)
    assert RedisCluster(redis_server.url, name=cluster_name + "-other").connections("wsData") == []
    ws.close()


def test_subscriber_survives_junk_on_the_channel(nodes: list[Node], redis_server: RedisServer, cluster_name: str) -> None:
    """Junk published on the cluster's channel is logged and dropped; the next send still arrives."""
    import redis

    a, _ = nodes
    ws = a.connect()
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
    redis.Redis.from_url(redis_server.url).publish(f"syncws:{cluster_name}:all", b"junk")
    a.cluster.send("wsData", "fine")
    assert ws.recv() == "fine"
    ws.close()


def test_deliveries_happen_on_the_subscriber_thread(nodes: list[Node]) -> None:
    """A cluster send reaches on_message-free clients through the node's subscriber thread, named syncws-cluster-sub."""
    names: queue.Queue[str] = queue.Queue()
    a, _ = nodes
    original = a.server.node.deliver  # type: ignore[union-attr]

    def recording(name: str, message: Any) -> None:
        names.put(threading.current_thread().name)
        original(name, message)

    a.server.node.deliver = recording  # type: ignore[union-attr,method-assign]
    a.cluster._node = a.server.node  # the cluster holds the node object, whose attribute we replaced
    ws = a.connect()
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
    a.cluster.send("wsData", "x")
    assert names.get(timeout=5) == "syncws-cluster-sub"
    assert ws.recv() == "x"
    ws.close()


def test_password_in_the_url_and_hidden_from_messages(cluster_name: str) -> None:
    """A password in the Redis URL reaches redis-py; a wrong one gives ClusterError, and neither appears in errors or repr."""
    server = RedisServer(password="s3cret-pw").start()
    try:
        good = Node(server.url, cluster_name)
        try:
            ws = good.connect()
            assert wait_for(lambda: len(good.cluster.connections("wsData")) == 1)
            ws.close()
            assert "s3cret-pw" not in repr(good.cluster) and "***@" in good.cluster.url
        finally:
            good.stop()
        wrong = RedisCluster(server.url.replace("s3cret-pw", "wrong-pw"), name=cluster_name)
        with pytest.raises(Exception) as refused:
            wrong.connections("wsData")
        assert "wrong-pw" not in str(refused.value)
    finally:
        server.close()


def test_send_refuses_a_message_redis_would_drop(nodes: list[Node]) -> None:
    """cluster.send refuses a message over max_send_size with ValueError, before anything is published."""
    a, _ = nodes
    with pytest.raises(ValueError, match="max_send_size"):
        a.cluster.send("wsData", bytes(a.cluster.max_send_size + 1))


def test_broadcast_reaches_local_connections_while_redis_is_down(nodes: list[Node], redis_server: RedisServer) -> None:
    """With Redis away, sendWebSocketMessage on a clustered registry still reaches this node's connections, and logs no traceback."""
    a, _ = nodes
    ws = a.connect()
    assert wait_for(lambda: len(a.cluster.connections("wsData")) == 1)
    redis_server.stop()
    try:
        syncws.sendWebSocketMessage("wsData", "local only", registry=a.server.registry)
        assert ws.recv() == "local only"
    finally:
        redis_server.start()
    ws.close()


def test_token_survives_a_redis_restart(redis_server: RedisServer, cluster_name: str) -> None:
    """After Redis restarts empty, the nodes from before put the cluster's token back, so a node that joins then shares it."""
    old = Node(redis_server.url, cluster_name)
    try:
        redis_server.restart()
        assert wait_for(lambda: old.cluster.node_alive(old.cluster.node_id), timeout=10)  # republished, with its token
        new = Node(redis_server.url, cluster_name)
        try:
            assert new.cluster.token() == old.cluster.token()
        finally:
            new.stop()
    finally:
        old.stop()


def test_links_over_tls(redis_server: RedisServer, cluster_name: str, tmp_path: Any) -> None:
    """Nodes that serve wss:// call each other's peers over TLS links with link_sslopt, and advertise the URL they are reached at."""
    import ssl

    from ..helpers import self_signed

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    servers, handlers = [], []
    for _ in range(2):
        cluster = RedisCluster(redis_server.url, name=cluster_name, ttl=1.0, link_sslopt={"ca_certs": str(cert)})
        server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=cluster, ssl_context=context)
        handler = syncws.RequestHandler("wsData", server)
        server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
        servers.append(server.start())
        handlers.append(handler)
    peer = syncws.RemoteService(servers[0].url + "/wsData", sslopt={"ca_certs": str(cert)})
    peer.register("where", lambda msg: "node A over TLS")
    try:
        peer.start(timeout=10)
        assert wait_for(lambda: len(handlers[1].routes.cluster.connections("wsData")) == 1)  # type: ignore[union-attr]
        assert servers[0].cluster.node_info(servers[0].cluster.node_id)["url"].startswith("wss://")  # type: ignore[union-attr]
        assert handlers[1].doRequest({"cmd": "where"}, timeout=10)["data"] == "node A over TLS"
        handlers[1].close_links()
    finally:
        peer.stop()
        for server in servers:
            server.stop()


def test_timeout_across_nodes_cancels_the_call_on_the_peer(redis_server: RedisServer, cluster_name: str) -> None:
    """A call from node B that times out is cancelled on node A's peer too, and node A keeps no call for it."""
    servers, handlers = [], []
    for _ in range(2):
        server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=RedisCluster(redis_server.url, name=cluster_name, ttl=1.0))
        handler = syncws.RequestHandler("wsData", server)
        server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
        servers.append(server.start())
        handlers.append(handler)
    calls: queue.Queue[Any] = queue.Queue()

    def slow(msg: dict[str, Any]) -> str:
        call = syncws.current_call()
        calls.put(call)
        call.wait_cancelled(30)
        return "late"

    peer = syncws.RemoteService(servers[0].url + "/wsData")
    peer.register("slow", slow)
    try:
        peer.start(timeout=10)
        assert wait_for(lambda: len(handlers[1].routes.cluster.connections("wsData")) == 1)  # type: ignore[union-attr]
        with pytest.raises(syncws.RequestTimeout):
            handlers[1].doRequest({"cmd": "slow"}, timeout=0.5)
        assert calls.get(timeout=10).wait_cancelled(10)
        assert wait_for(lambda: handlers[0].pending == 0 and handlers[1].pending == 0)
        handlers[1].close_links()
    finally:
        peer.stop()
        for server in servers:
            server.stop()

"""Three `syncws serve --cluster` processes on one real redis-server: requests, sends and failures across nodes."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
import pytest
import redis
import websocket

import syncws
from syncws import gateway

from ..helpers import wait_for
from ..redis_server import RedisServer, needs_redis

pytestmark = [pytest.mark.timeout(120), needs_redis]

BANNER = re.compile(r"syncws serving (ws://127\.0\.0\.1:\d+)/echo.* node (\w+) of cluster")
MIB = 1 << 20


class NodeProcess:
    """``python -m syncws serve --cluster`` in a child process: a node with /wsData, /call and /broadcast."""

    def __init__(self, redis_url: str, cluster: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "syncws", "serve", "--port", "0", "--cluster", redis_url, "--cluster-name", cluster, "--cluster-ttl", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        banner = self.process.stdout.readline()
        match = BANNER.search(banner)
        if match is None:
            self.process.kill()
            raise RuntimeError(f"no banner from the node: {banner!r} {self.process.stderr.read() if self.process.stderr else ''}")
        self.url, self.node_id = match.group(1), match.group(2)

    def call(self, request: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        """Make one request through this node's /call gateway; the reply, with bytes data attached."""
        conn = syncws.connect(self.url + "/call", max_message_size=None)
        try:
            conn.send(json.dumps({**request, "timeout": timeout}))
            while True:
                message = conn.recv(timeout=timeout + 10)
                progress, reply = gateway.parse_gateway_message(message)  # type: ignore[arg-type]
                if progress is not None:
                    continue
                if reply.get("dataType") in ("bytes", "ndarray"):
                    reply = gateway.gateway_attach_bytes(reply, conn.recv(timeout=timeout + 10))
                return reply
        finally:
            conn.close()

    def stop(self) -> str:
        """Stop the node (SIGTERM) and return what it logged."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            _, err = self.process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate(timeout=5)
        return err or ""

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


def make_peer(url: str, release: Optional[threading.Event] = None, started: Optional[threading.Event] = None) -> syncws.RemoteService:
    """A RemoteService on ``url`` whose commands return what the request asks for, derived from its ``seed``.

    With ``release``, its ``wait`` command sets ``started`` and waits for ``release``.
    """
    service = syncws.RemoteService(url, workers=16)
    service.register("echo", lambda msg: {"seed": msg["seed"], "node": "A"})
    service.register("blob", lambda msg: bytes([msg["seed"] % 256]) * msg["size"])
    service.register("array", lambda msg: np.full((msg["rows"], 7), msg["seed"], dtype=np.int64))
    service.register("fail", lambda msg: 1 / 0)
    if release is not None:

        def wait(msg: dict[str, Any]) -> str:
            if started is not None:
                started.set()
            release.wait(60)
            return "released"

        service.register("wait", wait)
    return service


@pytest.fixture
def three(redis_server: RedisServer, cluster_name: str) -> Iterator[list[NodeProcess]]:
    """Nodes A, B and C of one cluster, stopped afterwards."""
    nodes = [NodeProcess(redis_server.url, cluster_name) for _ in range(3)]
    yield nodes
    for node in nodes:
        node.stop()


def test_peer_on_one_node_answers_calls_made_on_the_others(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """16 threads calling through nodes B and C reach a peer on node A: JSON, 20 MiB bytes and arrays, every reply matched."""
    a, b, c = three
    peer = make_peer(a.url + "/wsData").start(timeout=10)
    outsider = syncws.RedisCluster(redis_server.url, name=cluster_name)
    try:
        assert wait_for(lambda: [r.node for r in outsider.connections("wsData")] == [a.node_id])
        errors: queue.Queue[str] = queue.Queue()

        def work(worker: int) -> None:
            node = (b, c)[worker % 2]
            for i in range(6):
                seed = worker * 100 + i
                kind = ("echo", "array", "echo", "fail", "echo", "blob" if worker < 4 else "echo")[i]
                try:
                    if kind == "echo":
                        assert node.call({"cmd": "echo", "seed": seed})["data"] == {"seed": seed, "node": "A"}
                    elif kind == "array":
                        reply = node.call({"cmd": "array", "seed": seed, "rows": 1000})
                        assert reply["dtype"] == "<i8" and reply["shape"] == [1000, 7]
                        assert np.frombuffer(reply["data"], dtype=np.int64).tolist() == [seed] * 7000
                    elif kind == "blob":
                        data = node.call({"cmd": "blob", "seed": seed, "size": 20 * MIB})["data"]
                        assert data == bytes([seed % 256]) * (20 * MIB)
                    else:
                        reply = node.call({"cmd": "fail", "seed": seed})
                        assert reply["status"] == 500 and "ZeroDivisionError" in reply["error"]
                except Exception as exc:
                    errors.put(f"worker {worker} {kind} {seed}: {exc!r}")

        threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(100)
        assert errors.empty(), [errors.get() for _ in range(errors.qsize())]
    finally:
        peer.stop()


def test_process_without_a_server_makes_requests_and_sends(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """A process that runs no server calls a peer on node A, and its cluster.send reaches /broadcast clients on all three nodes once."""
    a = three[0]
    peer = make_peer(a.url + "/wsData").start(timeout=10)
    cluster = syncws.RedisCluster(redis_server.url, name=cluster_name)
    clients = [websocket.create_connection(node.url + "/broadcast", timeout=5) for node in three]
    try:
        assert wait_for(lambda: len(cluster.connections("broadcast")) == 3 and len(cluster.connections("wsData")) == 1)
        handler = syncws.RequestHandler("wsData", cluster=cluster)
        assert handler.doRequest({"cmd": "echo", "seed": 7}, timeout=10)["data"] == {"seed": 7, "node": "A"}
        reply = handler.doRequest({"cmd": "array", "seed": 3, "rows": 2}, timeout=10)
        assert reply["data"].shape == (2, 7) and int(reply["data"].sum()) == 42
        cluster.send("broadcast", "hello everyone")
        cluster.send("broadcast", b"\x00binary")
        for ws in clients:
            assert ws.recv() == "hello everyone" and ws.recv() == b"\x00binary"
            ws.settimeout(0.3)
            with pytest.raises(websocket.WebSocketTimeoutException):
                ws.recv()
        handler.close_links()
    finally:
        for ws in clients:
            ws.close()
        peer.stop()


def test_broadcast_endpoint_reaches_every_node(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """A message to node B's /broadcast reaches the /broadcast clients of all three nodes, the sender included, once each."""
    cluster = syncws.RedisCluster(redis_server.url, name=cluster_name)
    clients = [websocket.create_connection(node.url + "/broadcast", timeout=5) for node in three]
    try:
        assert wait_for(lambda: len(cluster.connections("broadcast")) == 3)
        clients[1].send("from B")
        for ws in clients:
            assert ws.recv() == "from B"
            ws.settimeout(0.3)
            with pytest.raises(websocket.WebSocketTimeoutException):
                ws.recv()
    finally:
        for ws in clients:
            ws.close()


def test_connections_follow_connects_and_disconnects(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """cluster.connections() lists each node's connections newest last, and drops each as it disconnects."""
    cluster = syncws.RedisCluster(redis_server.url, name=cluster_name)
    opened = []
    for node in (three[2], three[0], three[1]):
        opened.append(websocket.create_connection(node.url + "/wsData", timeout=5))
        assert wait_for(lambda: len(cluster.connections("wsData")) == len(opened))
    assert [r.node for r in cluster.connections("wsData")] == [three[2].node_id, three[0].node_id, three[1].node_id]
    opened.pop(1).close()
    assert wait_for(lambda: [r.node for r in cluster.connections("wsData")] == [three[2].node_id, three[1].node_id])
    for ws in opened:
        ws.close()
    assert wait_for(lambda: cluster.connections("wsData") == [])


def test_killed_node_vanishes_and_its_calls_fail(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """SIGKILL on the node that holds the peer: a call waiting on it through node B fails at once, and its peer vanishes within ttl."""
    a, b, _ = three
    release, started = threading.Event(), threading.Event()
    peer = make_peer(a.url + "/wsData", release, started).start(timeout=10)
    cluster = syncws.RedisCluster(redis_server.url, name=cluster_name)
    outcome: queue.Queue[dict[str, Any]] = queue.Queue()
    try:
        assert wait_for(lambda: len(cluster.connections("wsData")) == 1)
        caller = threading.Thread(target=lambda: outcome.put(b.call({"cmd": "wait"}, timeout=60)))
        caller.start()
        assert started.wait(10)  # the call went B -> A -> the peer, which now holds it
        a.kill()
        reply = outcome.get(timeout=10)  # not the 60 s of the call's timeout
        assert reply["status"] == 502 and "went away" in reply["error"]
        assert wait_for(lambda: cluster.connections("wsData") == [], timeout=3)  # ttl is 1 s
        caller.join(5)
    finally:
        release.set()
        peer.stop()


def test_redis_restart_mid_traffic(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """While Redis restarts under traffic, calls on the peer's own node go on and no caller hangs; afterwards calls cross nodes again."""
    a, b, _ = three
    peer = make_peer(a.url + "/wsData").start(timeout=10)
    cluster = syncws.RedisCluster(redis_server.url, name=cluster_name)
    stop = threading.Event()
    local_errors: list[str] = []
    local_calls = [0]

    def local_traffic() -> None:
        for i in range(2000):  # bounded; ends when the test says so
            if stop.is_set():
                return
            reply = a.call({"cmd": "echo", "seed": i}, timeout=10)
            if reply.get("data") != {"seed": i, "node": "A"}:
                local_errors.append(repr(reply))
            local_calls[0] += 1

    try:
        assert wait_for(lambda: len(cluster.connections("wsData")) == 1)
        traffic = threading.Thread(target=local_traffic)
        traffic.start()
        assert wait_for(lambda: local_calls[0] > 5)
        redis_server.stop()
        try:
            during = b.call({"cmd": "echo", "seed": 1}, timeout=10)  # B knows no peer while Redis is away: an answer, not a hang
            assert during["status"] == 200 or during["status"] in (502, 503)
            before = local_calls[0]
            assert wait_for(lambda: local_calls[0] > before + 5)  # local traffic goes on without Redis
        finally:
            redis_server.start()
        assert wait_for(lambda: len(cluster.connections("wsData")) == 1, timeout=15)
        assert b.call({"cmd": "echo", "seed": 2}, timeout=10)["data"] == {"seed": 2, "node": "A"}
        stop.set()
        traffic.join(30)
        assert local_errors == []
    finally:
        stop.set()
        peer.stop()


def test_256_mib_reply_across_nodes_without_a_redis_disconnection(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """A 256 MiB reply from a peer on node A to a caller in another process arrives intact, and Redis disconnects no client."""
    a = three[0]
    peer = syncws.RemoteService(a.url + "/wsData")
    block = os.urandom(MIB)
    peer.register("big", lambda msg: block * 256)
    peer.start(timeout=10)
    cluster = syncws.RedisCluster(redis_server.url, name=cluster_name)
    try:
        assert wait_for(lambda: len(cluster.connections("wsData")) == 1)
        handler = syncws.RequestHandler("wsData", cluster=cluster)
        admin = redis.Redis.from_url(redis_server.url)
        subscribers = {c["id"] for c in admin.client_list(_type="pubsub")}
        assert len(subscribers) == 3  # one per node
        data = handler.doRequest({"cmd": "big"}, timeout=60)["data"]
        assert len(data) == 256 * MIB and data[:MIB] == block and data[-MIB:] == block
        del data
        # The same three subscriber connections: Redis disconnected none of them (a dropped one reconnects with a new id).
        assert {c["id"] for c in admin.client_list(_type="pubsub")} == subscribers
        handler.close_links()
    finally:
        peer.stop()
    for node in three:
        log = node.stop()
        assert "lost the pub/sub connection" not in log, log


def test_peer_disconnect_and_progress_across_nodes(three: list[NodeProcess], redis_server: RedisServer, cluster_name: str) -> None:
    """Across nodes, progress counts a binary reply's parts once up to its size, and a peer that disconnects mid-call fails the call with ConnectionClosed."""
    a = three[0]
    release, started = threading.Event(), threading.Event()
    peer = make_peer(a.url + "/wsData", release, started)
    peer.part_size = MIB
    peer.start(timeout=10)
    cluster = syncws.RedisCluster(redis_server.url, name=cluster_name)
    handler = syncws.RequestHandler("wsData", cluster=cluster)
    try:
        assert wait_for(lambda: len(cluster.connections("wsData")) == 1)
        seen: list[tuple[int, int]] = []
        data = handler.doRequest({"cmd": "blob", "seed": 9, "size": 5 * MIB}, timeout=30, progress=lambda r, t: seen.append((r, t)))["data"]
        assert data == bytes([9]) * (5 * MIB)
        assert seen == [(n * MIB, 5 * MIB) for n in range(1, 6)]
        outcome: queue.Queue[BaseException] = queue.Queue()

        def call() -> None:
            try:
                handler.doRequest({"cmd": "wait"}, timeout=60)
            except Exception as exc:  # the outcome under test
                outcome.put(exc)

        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(10)
        peer.stop()  # the peer leaves node A while the call waits on it
        assert isinstance(outcome.get(timeout=10), syncws.ConnectionClosed)
        caller.join(5)
    finally:
        release.set()
        peer.stop()
        handler.close_links()

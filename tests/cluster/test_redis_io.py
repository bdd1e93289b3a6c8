"""The cluster's bounded Redis reads: their helper threads end when the cluster stops, and come back when needed."""

from __future__ import annotations

import threading
import time

import pytest

import syncws
from syncws.cluster.cluster import RedisCluster
from syncws.cluster.redis_io import BoundedReads

from ..helpers import syncws_threads
from ..redis_server import RedisServer, needs_redis

pytestmark = pytest.mark.timeout(30)


def read_helpers() -> list[threading.Thread]:
    return [t for t in syncws_threads() if t.name == "syncws-cluster-read"]


def test_close_ends_the_idle_helpers_and_later_reads_still_run() -> None:
    """close() ends an idle helper at once (not after its 5 s idle time); a read after it starts a new one."""
    reads = BoundedReads("test")
    assert reads.run(lambda: 1, time.monotonic() + 5) == 1
    assert len(read_helpers()) == 1
    reads.close(5.0)
    assert read_helpers() == []
    assert reads.run(lambda: 2, time.monotonic() + 5) == 2
    reads.close(5.0)
    assert read_helpers() == []


@needs_redis
def test_stopping_a_node_ends_its_read_helpers(redis_server: RedisServer, cluster_name: str) -> None:
    """A node that chose a peer with a deadline (a call with a timeout) leaves no syncws thread after stop()."""
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=RedisCluster(redis_server.url, name=cluster_name, ttl=1.0))
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    server.start()
    try:
        with pytest.raises(syncws.NotConnected):
            handler.doRequest({"cmd": "x"}, timeout=2)
    finally:
        handler.close_links()
        server.stop()
    assert syncws_threads() == []

"""The cluster group's child processes, run as ``python -m benchmarks.peers ROLE ...``.

Roles (all traffic on 127.0.0.1; each process has the alarm of ``peers.main``):

    cluster-node REDIS_URL CLUSTER
        A ``WebSocketServer`` that is a node of the cluster: ``/wsData`` with
        its ``RequestHandler("wsData", server)`` (so a call it makes looks
        the newest peer up in the cluster, as a clustered application's
        does) and ``/fanout`` for the broadcast's clients. Prints
        {"port", "node", "pid"}, then obeys the commands below.
    cluster-caller REDIS_URL CLUSTER
        A process without a server: ``RequestHandler("wsData",
        cluster=RedisCluster(...))``. Prints {"pid"}, then obeys the commands.
    cluster-peer URL
        The peer: a ``RemoteService`` on URL answering echo and blob as the
        ``syncws`` rows' peer does (benchmarks.syncws_impl.run_peer). Prints
        {"ready": true} once connected, stops on "quit".

Commands of the callers, one per line on stdin, each answered by one JSON
line (an "error" key when it failed): ``warm N`` (N echo requests, which
open a node link), ``measure WORKLOAD PARAMS_JSON`` (``common.measure``:
latency, throughput, large, run by this process's own threads),
``count NAME`` (this node's connections of NAME) and ``quit``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Optional

import syncws

from .common import HOST, emit, measure

MAX_COMMANDS = 100_000  # far more than a run sends; the loop ends on "quit", EOF or the alarm first


class Quiet(syncws.BaseWebSocketHandler):
    """A broadcast's client: joins the registry (and so the cluster's presence) on open, ignores what it is sent."""

    def on_message(self, message: Any) -> None:
        """Ignore it (connection thread)."""


def warm(rh: syncws.RequestHandler, n: int, timeout: float = 15.0) -> dict[str, Any]:
    """``n`` echo requests, retried while the peer is not yet known to the cluster (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    done = 0
    while done < n:  # bounded by n and the deadline
        try:
            r = rh.doRequest({"cmd": "echo", "x": done}, timeout=10)
        except syncws.NotConnected:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if r.get("data") != done:
            raise RuntimeError(f"bad echo reply {r!r}")
        done += 1
    return {"warm": done}


def obey(rh: syncws.RequestHandler, count: Optional[Callable[[str], int]] = None) -> None:
    """Run the driver's commands on ``rh`` until "quit", EOF or MAX_COMMANDS."""
    for _ in range(MAX_COMMANDS):
        line = sys.stdin.readline()
        if not line:
            return
        parts = line.split(None, 2)
        if not parts:
            continue
        cmd = parts[0]
        if cmd == "quit":
            return
        try:
            if cmd == "warm":
                emit(warm(rh, int(parts[1])))
            elif cmd == "measure":
                emit(measure(rh, parts[1], json.loads(parts[2])))
            elif cmd == "count" and count is not None:
                emit({"count": count(parts[1])})
            else:
                emit({"error": f"unknown command {cmd!r}"})
        except Exception as e:  # reported to the driver, which fails that run only
            emit({"error": f"{type(e).__name__}: {e}"})


def role_node(redis_url: str, name: str) -> None:
    """Serve as a node of cluster ``name`` and obey the driver; leave the cluster on "quit"."""
    cluster = syncws.RedisCluster(redis_url, name=name)
    server = syncws.WebSocketServer(host=HOST, port=0, cluster=cluster)
    rh = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=rh.callback)
    server.add_handler("/fanout", Quiet, name="fanout")
    server.start()
    try:
        emit({"port": server.port, "node": cluster.node_id, "pid": os.getpid()})
        obey(rh, lambda path: len(server.registry.connections(path.lstrip("/"), server=server)))
    finally:
        server.stop()
    sys.stdout.flush()
    os._exit(0)


def role_caller(redis_url: str, name: str) -> None:
    """Call the cluster's peer from a process that runs no server, as the driver says."""
    cluster = syncws.RedisCluster(redis_url, name=name)
    rh = syncws.RequestHandler("wsData", cluster=cluster)
    try:
        emit({"pid": os.getpid()})
        obey(rh)
    finally:
        rh.close_links()
    sys.stdout.flush()
    os._exit(0)


def role_peer(url: str) -> None:
    """Answer echo and blob on ``url`` (the ``syncws`` rows' peer) until "quit" or EOF."""
    svc = syncws.RemoteService(url)
    svc.register("echo", lambda msg: msg.get("x"))
    svc.register("blob", lambda msg: bytes(int(msg["size"])))
    svc.start(timeout=15)
    try:
        emit({"ready": True, "pid": os.getpid()})
        for _ in range(MAX_COMMANDS):  # only "quit" or EOF are expected
            line = sys.stdin.readline()
            if not line or line.strip() == "quit":
                break
    finally:
        svc.stop()
    sys.stdout.flush()
    os._exit(0)


ROLES: dict[str, Callable[..., None]] = {"cluster-node": role_node, "cluster-caller": role_caller, "cluster-peer": role_peer}

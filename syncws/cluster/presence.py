"""A node's presence in Redis: its connections, kept fresh with heartbeats, written by one thread.

:class:`Presence` holds this node's open connections (as
:class:`ClusterConnection` records) and is the only writer of them to Redis:
connection threads report opens and closes and return at once; the beat
thread (``syncws-cluster-beat``) writes the changes as they come, renews the
node's heartbeat every ``ttl / 3``, and republishes everything when Redis
comes back empty (a restart), so that a republish never races an update and
no connection thread waits for Redis.

Keys (``syncws:<cluster>:`` first): the sorted set ``nodes`` (each node
scored by when its heartbeat runs out), the hash ``node:<id>`` (what the
node says of itself: its link URL) and, per endpoint name, the hash
``conns:<id>:<name>`` (one JSON record per connection of that name), so
that looking up one name's connections costs what that name has, not what
the whole cluster has. The node's keys expire with its heartbeat.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Union

__all__ = ["ClusterConnection", "Presence", "Backoff"]

logger = logging.getLogger("syncws.cluster.cluster")  # the cluster's records: one logger to configure


class ClusterConnection(NamedTuple):
    """One open connection somewhere in the cluster, as its node published it."""

    node: str  #: the id of the node that holds it
    id: str  #: unique in the cluster: ``<node>-<n>``
    name: str  #: the endpoint name it is registered under
    remote_address: tuple[str, int]  #: the peer's address as its node saw it
    opened_at: float  #: when it opened (``time.time()`` on its node)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "address": list(self.remote_address), "opened": self.opened_at})

    @classmethod
    def from_json(cls, node: str, conn_id: str, text: Union[str, bytes]) -> ClusterConnection:
        record = json.loads(text)
        host, port = record["address"]
        return cls(node, conn_id, str(record["name"]), (str(host), int(port)), float(record["opened"]))


class Presence:
    """This node's connections and heartbeat in Redis (see the module docstring).

    ``opened``, ``closed``, ``local`` and ``set_info`` are safe from any
    thread; ``run`` is the beat thread's loop.
    """

    def __init__(self, redis: Any, key: Callable[..., str], node_id: str, ttl: float, errors: tuple[type[BaseException], ...], name: str) -> None:
        self.redis, self.key, self.errors = redis, key, errors  # the cluster's Redis, key maker and connection errors
        self.node_id, self.ttl, self.name = node_id, ttl, name
        # Synchronize access to _records, _changes, _names and _info.
        self._lock = threading.Lock()
        self._records: dict[str, ClusterConnection] = {}  # this node's open connections, by id
        # Changes not yet written: id -> (name, record), the record None for a removal.
        self._changes: dict[str, tuple[str, Optional[ClusterConnection]]] = {}
        self._names: set[str] = set()  # every name this node has published (its conns keys)
        self._info: dict[str, str] = {}
        #: The cluster's link token, once known: put back into a Redis that restarted empty.
        self.token: Optional[str] = None
        #: Set when there are changes to write, or to stop the beat thread.
        self.wake = threading.Event()

    def set_info(self, info: dict[str, str]) -> None:
        """What this node says of itself (its link URL), published with the heartbeat."""
        with self._lock:
            self._info = dict(info)

    def opened(self, record: ClusterConnection) -> None:
        """Publish a connection; returns at once (any thread)."""
        with self._lock:
            self._records[record.id] = record
            self._changes[record.id] = (record.name, record)
            self._names.add(record.name)
        self.wake.set()

    def closed(self, conn_id: str) -> None:
        """Withdraw a connection; returns at once (any thread)."""
        with self._lock:
            record = self._records.pop(conn_id, None)
            if record is not None:
                self._changes[conn_id] = (record.name, None)
        self.wake.set()

    def local(self, name: Optional[str] = None) -> list[ClusterConnection]:
        """This node's open connections (of ``name``, when given), newest last."""
        with self._lock:
            records = [r for r in self._records.values() if name is None or r.name == name]
        return sorted(records, key=lambda r: (r.opened_at, r.id))

    def clear(self) -> None:
        """Forget every connection (the node is stopping)."""
        with self._lock:
            self._records.clear()
            self._changes.clear()

    def conns_key(self, name: str) -> str:
        """The hash of this node's connections of ``name``."""
        return self.key("conns", self.node_id, name)

    def run(self, stopping: threading.Event) -> None:
        """Renew this node's presence every ttl/3 until ``stopping``; republish all of it after Redis came back (beat thread)."""
        interval = self.ttl / 3
        published = False
        backoff = Backoff()
        next_beat = 0.0
        while not stopping.is_set():
            wait = interval
            try:
                if time.monotonic() >= next_beat or not published:
                    # A Redis that restarted empty (or an expired node) shows as a missing node key.
                    if not self._beat(republish=not published):
                        self._beat(republish=True)
                    published = True
                    next_beat = time.monotonic() + interval
                self._write_changes()
                backoff.reset()
                wait = max(0.0, next_beat - time.monotonic())
            except self.errors as exc:
                if published:
                    logger.warning("cluster %s: Redis is unreachable (%s); retrying", self.name, exc)
                published = False
                wait = backoff.next()
            self.wake.wait(wait)
            self.wake.clear()

    def _write_changes(self) -> None:
        """Write the presence changes made since the last call (beat thread)."""
        with self._lock:
            changes, self._changes = self._changes, {}
        if not changes:
            return
        pipe = self.redis.pipeline()
        for conn_id, (name, record) in changes.items():
            if record is None:
                pipe.hdel(self.conns_key(name), conn_id)
            else:
                pipe.hset(self.conns_key(name), conn_id, record.to_json())
        for name in {name for name, _ in changes.values()}:
            pipe.pexpire(self.conns_key(name), int(self.ttl * 1000))
        try:
            pipe.execute()
        except self.errors:
            with self._lock:  # keep them for the next try, unless newer changes superseded them
                self._changes = {**changes, **self._changes}
            raise

    def _beat(self, republish: bool) -> bool:
        """Renew presence (all of it when ``republish``); False when the node's key had vanished."""
        expires_ms = int((time.time() + self.ttl) * 1000)
        ttl_ms = int(self.ttl * 1000)
        with self._lock:
            records = list(self._records.values()) if republish else []
            if republish:
                self._changes.clear()  # the snapshot holds them
            info = {"node": self.node_id, **self._info}
            names = sorted(self._names)
        pipe = self.redis.pipeline()
        if republish:
            for name in names:
                pipe.delete(self.conns_key(name))
            for name in {r.name for r in records}:
                pipe.hset(self.conns_key(name), mapping={r.id: r.to_json() for r in records if r.name == name})
            pipe.delete(self.key("node", self.node_id))
            pipe.hset(self.key("node", self.node_id), mapping=info)
            if self.token is not None:
                pipe.set(self.key("token"), self.token, nx=True)
        pipe.zadd(self.key("nodes"), {self.node_id: expires_ms})
        for name in names:
            pipe.pexpire(self.conns_key(name), ttl_ms)
        pipe.pexpire(self.key("node", self.node_id), ttl_ms)
        # Nodes whose heartbeat ran out long ago leave the set (their keys expired by themselves).
        pipe.zremrangebyscore(self.key("nodes"), 0, int((time.time() - 10 * self.ttl) * 1000))
        results = pipe.execute()
        return bool(results[-2])  # PEXPIRE of the node key: 0 when the key is gone

    def remove(self) -> None:
        """Remove this node and its connections from Redis now (the thread that stops it)."""
        with self._lock:
            names = list(self._names)
        pipe = self.redis.pipeline()
        pipe.zrem(self.key("nodes"), self.node_id)
        pipe.delete(self.key("node", self.node_id), *(self.conns_key(name) for name in names))
        pipe.execute()


class Backoff:
    """Capped exponential backoff with full jitter: 0.1 s doubling up to 5 s."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        wait = random.uniform(self.current / 2, self.current)
        self.current = min(self.cap, self.current * 2)
        return wait

    def reset(self) -> None:
        self.current = self.first

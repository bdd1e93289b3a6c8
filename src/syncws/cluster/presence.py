"""A node's presence in Redis: its connections, kept fresh with heartbeats, written by one thread.

:class:`Presence` holds this node's open connections (as
:class:`ClusterConnection` records) and is the only writer of them to Redis:
connection threads report opens and closes and return at once; the beat
thread (``syncws-cluster-beat``) writes the changes as they come, renews the
node's heartbeat every ``ttl / 3``, and republishes everything when Redis
comes back empty (a restart), so that a republish never races an update and
no connection thread waits for Redis.

Others can write to the same keys (a hostile writer, a buggy member): each
heartbeat rewrites the node's hash, republishes a ``conns`` hash whose size
is not the node's count of connections of that name, and deletes and
rewrites a key of this node (or ``nodes``, or the token) that holds another
type than presence writes, with a rate-limited warning. Records read back
are checked by :mod:`syncws.cluster.untrusted` (``ClusterConnection.from_json``).

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

from ..lograte import RateLimitedLog
from .untrusted import PRESENCE, encode_envelope, read_record

__all__ = ["ClusterConnection", "Presence", "Backoff", "WrongType", "TOKEN_SCRIPT", "read_records"]

logger = logging.getLogger("syncws.cluster.cluster")  # the cluster's records: one logger to configure

# The cluster's token, checked and repaired in one step: the token Redis holds when it is usable, else
# ARGV[1] put in its place (a key of another type, or an empty or garbled value, is replaced); false when
# it is unusable and ARGV[1] is empty. KEYS[1]: the token key. The check is untrusted.valid_token's.
TOKEN_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
  local token = redis.call('GET', KEYS[1])
  if #token >= 16 and #token <= 256 and not string.find(token, '[^%w%-_%.~%+/=]') then
    return token
  end
end
if kind ~= 'none' then
  redis.call('DEL', KEYS[1])
end
if ARGV[1] == '' then
  return false
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""


class WrongType(Exception):
    """A key of this node held another type than presence writes (someone else wrote it); it was deleted."""


def _as_bytes(value: Any) -> bytes:
    """A reply of TYPE as bytes (redis-py gives bytes, or str with decode_responses)."""
    return value.encode() if isinstance(value, str) else bytes(value)


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
    def from_json(cls, node: Union[str, bytes], conn_id: Union[str, bytes], text: Union[str, bytes]) -> ClusterConnection:
        """A record read from Redis, every field checked; ``untrusted.Unreadable`` (a ValueError) for anything else."""
        return cls(*read_record(node, conn_id, text))


def read_records(flat: Any, name: str) -> tuple[list[ClusterConnection], Optional[str]]:
    """The records of ``name`` in the presence script's answer (node, id, JSON, node, ...), newest last, and why one was skipped, if one was."""
    found = []
    bad: Optional[str] = None
    for i in range(0, len(flat) - 2 if isinstance(flat, list) else 0, 3):
        try:
            record = ClusterConnection.from_json(flat[i], flat[i + 1], flat[i + 2])
        except Exception as exc:  # Unreadable, or whatever else a garbled record provokes: skipped
            bad = str(exc)[:200]
            continue
        if record.name == name:
            found.append(record)
    found.sort(key=lambda r: (r.opened_at, r.id))
    return found, bad


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
        #: The token check and repair (TOKEN_SCRIPT), also run by the cluster's ``token()``.
        self.token_script = redis.register_script(TOKEN_SCRIPT)
        self._repair_log = RateLimitedLog(logger)  # keyed by this Presence: keys replaced
        #: Whether the last heartbeat reached Redis, and the nodes whose heartbeat it found
        #: alive: written by the beat thread alone, each a whole value read at once from any thread.
        self.reachable = False
        self.live_nodes: tuple[str, ...] = ()

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

    def run(self, stopping: threading.Event, tick: Callable[[], None] = lambda: None) -> None:
        """Renew this node's presence every ttl/3 until ``stopping``; republish what Redis lost or garbled (beat thread).

        ``tick`` is called on every pass (the keeper's check of the other
        threads). Losing Redis is retried with backoff; a key of this node
        found of the wrong type (written by someone else) is replaced.
        """
        interval = self.ttl / 3
        published = False
        backoff = Backoff()
        next_beat = 0.0
        lost_at: Optional[float] = None  # when Redis became unreachable, until presence is published again
        while not stopping.is_set():
            tick()
            wait = interval
            try:
                if time.monotonic() >= next_beat or not published:
                    stale = self._beat()
                    if stale is not None or not published:
                        # A Redis that restarted empty, an expired node, or records that differ from ours.
                        self._republish(None if not published else stale)
                    published = self.reachable = True
                    if lost_at is not None:
                        outage = time.monotonic() - lost_at
                        logger.warning("cluster %s: Redis is reachable again after %.1f s; this node's presence is published", self.name, outage)
                        lost_at = None
                    next_beat = time.monotonic() + interval
                self._write_changes()
                backoff.reset()
                wait = max(0.0, next_beat - time.monotonic())
            except self.errors as exc:
                if published:
                    logger.warning("cluster %s: Redis is unreachable (%s); retrying", self.name, exc)
                    lost_at = time.monotonic()
                published = self.reachable = False
                wait = backoff.next()
            except Exception as exc:  # WrongType (repaired), or any other refusal: retried, never the thread's end
                self._repair_log.log(self, logging.WARNING, "cluster %s: presence not renewed: %s; retrying", self.name, str(exc)[:200])
                published = False
                wait = min(backoff.next(), interval)
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
            self._announce(pipe, name)
        try:
            self._execute(pipe)
        except Exception:
            with self._lock:  # keep them for the next try, unless newer changes superseded them
                self._changes = {**changes, **self._changes}
            raise

    def _execute(self, pipe: Any) -> list[Any]:
        """Run a pipeline (a transaction); WrongType, after repairing, when a key held something else."""
        results: list[Any] = pipe.execute(raise_on_error=False)
        refused = [r for r in results if isinstance(r, Exception)]
        if refused:
            self._repair()
            raise WrongType(f"Redis refused a presence write ({str(refused[0])[:120]})")
        return results

    def _beat(self) -> Optional[set[str]]:
        """Renew presence; what must be republished: None for nothing, an empty set for all, else those names.

        The node's hash is rewritten on every beat, so that whatever someone
        else wrote into it is gone within ttl/3; a conns hash whose size is
        not the number of this node's connections of that name is republished.
        """
        expires_ms = int((time.time() + self.ttl) * 1000)
        ttl_ms = int(self.ttl * 1000)
        with self._lock:
            info = {"node": self.node_id, **self._info}
            names = sorted(self._names)
            pending = {name for name, _ in self._changes.values()}
            counts = {name: sum(1 for r in self._records.values() if r.name == name) for name in names}
        pipe = self.redis.pipeline()
        pipe.exists(self.key("node", self.node_id))
        pipe.zadd(self.key("nodes"), {self.node_id: expires_ms})
        pipe.delete(self.key("node", self.node_id))
        pipe.hset(self.key("node", self.node_id), mapping=info)
        pipe.pexpire(self.key("node", self.node_id), ttl_ms)
        for name in names:
            pipe.hlen(self.conns_key(name))
            pipe.pexpire(self.conns_key(name), ttl_ms)
        # Nodes whose heartbeat ran out long ago leave the set (their keys expired by themselves).
        pipe.zremrangebyscore(self.key("nodes"), 0, int((time.time() - 10 * self.ttl) * 1000))
        pipe.zrangebyscore(self.key("nodes"), int(time.time() * 1000), "+inf")  # the nodes alive now
        if self.token is not None:
            self.token_script(keys=[self.key("token")], args=[self.token], client=pipe)
        results = self._execute(pipe)
        alive = results[6 + 2 * len(names)]
        self.live_nodes = tuple(sorted(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in alive or ()))[:1000]
        if not results[0]:
            return set()  # the node's key had vanished: Redis restarted empty, or the node expired
        sizes = results[5 : 5 + 2 * len(names) : 2]
        stale = {name for name, size in zip(names, sizes) if name not in pending and size != counts[name]}
        return stale or None

    def _republish(self, names: Optional[set[str]]) -> None:
        """Write this node's connections again (all of them, or of ``names``) in one transaction (beat thread)."""
        with self._lock:
            if names is None or not names:
                names = set(self._names)
                self._changes.clear()  # the snapshot holds them
            else:
                for conn_id in [i for i, (name, _) in self._changes.items() if name in names]:
                    del self._changes[conn_id]
            records = [r for r in self._records.values() if r.name in names]
            info = {"node": self.node_id, **self._info}
        ttl_ms = int(self.ttl * 1000)
        pipe = self.redis.pipeline()
        for name in names:
            pipe.delete(self.conns_key(name))
            mine = {r.id: r.to_json() for r in records if r.name == name}
            if mine:
                pipe.hset(self.conns_key(name), mapping=mine)
                pipe.pexpire(self.conns_key(name), ttl_ms)
            self._announce(pipe, name)
        pipe.delete(self.key("node", self.node_id))
        pipe.hset(self.key("node", self.node_id), mapping=info)
        pipe.pexpire(self.key("node", self.node_id), ttl_ms)
        pipe.zadd(self.key("nodes"), {self.node_id: int((time.time() + self.ttl) * 1000)})
        self._execute(pipe)

    def _repair(self) -> None:
        """Delete this node's keys, and the shared ``nodes`` and ``token``, where they hold the wrong type (beat thread)."""
        with self._lock:
            names = sorted(self._names)
        expected = {self.key("nodes"): b"zset", self.key("node", self.node_id): b"hash", self.key("token"): b"string"}
        expected.update({self.conns_key(name): b"hash" for name in names})
        pipe = self.redis.pipeline(transaction=False)
        for key in expected:
            pipe.type(key)
        wrong = [key for key, kind in zip(expected, pipe.execute()) if _as_bytes(kind) not in (expected[key], b"none")]
        if wrong:
            self.redis.delete(*wrong)

    def remove(self) -> None:
        """Remove this node and its connections from Redis now (the thread that stops it)."""
        with self._lock:
            names = list(self._names)
        pipe = self.redis.pipeline()
        pipe.zrem(self.key("nodes"), self.node_id)
        pipe.delete(self.key("node", self.node_id), *(self.conns_key(name) for name in names))
        for name in names:
            self._announce(pipe, name)
        pipe.execute()

    def _announce(self, pipe: Any, name: str) -> None:
        """Add to ``pipe`` (a transaction that changes this node's connections of ``name``) the word that they changed.

        Published in the change's own transaction: every node hears of it
        right after the change can be read, and drops what it had cached
        (:class:`~syncws.cluster.presence_cache.PresenceCache`).
        """
        pipe.publish(self.key("all"), encode_envelope(PRESENCE, {"name": name}))


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

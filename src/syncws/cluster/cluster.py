"""Several syncws servers as one cluster on Redis: presence, sends to every node, requests across nodes.

A :class:`RedisCluster` makes the process a *node* of a named cluster::

    cluster = syncws.RedisCluster("redis://127.0.0.1:6379/0", name="lab")
    server = syncws.WebSocketServer(port=0, cluster=cluster)

What Redis carries (every key and channel starts with ``syncws:<name>:``):

* **presence** (:mod:`syncws.presence`): each node's connections, renewed
  with heartbeats every ``ttl / 3`` seconds; a node that dies vanishes
  within ``ttl``; a connection that closes is removed at once.
* **sends**: one pub/sub message per ``cluster.send(name, msg)`` on the
  channel ``all``, which every node delivers to its own connections of that
  name, so each connection gets it at most once. Binary goes as it is, never
  base64. The PUBLISH is written once, never retried; ``send`` says whether
  Redis confirmed it, was not reached (ClusterError: nothing went out), or
  took it without confirming (SendUnconfirmed: it may still arrive, late).

What it does not carry: request and reply data. A call to a peer on another
node goes over a direct syncws connection to that node (its ``/_syncws/node``
endpoint, opened on first use and kept), so a large reply never passes
through Redis, whose pub/sub drops a subscriber that falls 32 MiB behind and
delivers at most once (docs/cluster.md). Nothing read from Redis is
unpickled or executed: records are JSON, envelopes a small binary header.

Everything read from Redis is untrusted (:mod:`syncws.cluster.untrusted`):
what a reader cannot use is dropped with a rate-limited warning, and never
ends a thread or fails a call for everyone.

Threads: ``syncws-cluster-beat`` renews presence; ``syncws-cluster-sub`` reads
the pub/sub channel and delivers; both reconnect to Redis with capped,
jittered backoff and republish presence when it comes back, and a
:class:`~syncws.cluster.threads.Keeper` restarts either, with a warning, if
it ever ends. Reads with a caller's deadline run on ``syncws-cluster-read``
helpers (:mod:`syncws.cluster.redis_io`). Every public method is safe from
any thread.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any, Callable, Optional, TypeVar, Union
from urllib.parse import urlsplit, urlunsplit

from ..exceptions import ClusterError
from ..lograte import RateLimitedLog
from . import redis_io
from .presence import ClusterConnection, Presence, read_records
from .presence_cache import PresenceCache
from .redis_io import BoundedReads, DeadlinePassed, SendUnconfirmed
from .subscriber import LocalNode, Subscriber
from .threads import Keeper
from .untrusted import (
    BINARY,
    CLOSE_ALL,
    TEXT,
    Unreadable,
    check_close,
    check_name,
    decode_envelope,
    encode_envelope,
    read_id,
    read_token,
    read_url,
    valid_token,
)

__all__ = ["RedisCluster", "ClusterConnection", "ClusterError", "SendUnconfirmed", "LocalNode", "encode_envelope", "decode_envelope"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

# One name's connection records on every live node in one round trip: node, id, record, node, ...
# (KEYS[1]: the nodes set; ARGV: now in ms, the prefix of the conns hashes, ":" and the name, the
# prefix of the node hashes). Our own script; it reads only this cluster's keys and runs nothing it
# reads. Keys of another type than members write, node ids longer than any member's, and nodes
# without a node hash that gives a ws:// or wss:// link URL (expired, or never a member: no call
# could reach their connections) are passed over, not failed on.
_PRESENCE_SCRIPT = """
local out = {}
if redis.call('TYPE', KEYS[1]).ok ~= 'zset' then
  return out
end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local info = ARGV[4] .. node
  local conns = ARGV[2] .. node .. ARGV[3]
  local url = false
  if #node <= 64 and redis.call('TYPE', info).ok == 'hash' then
    url = redis.call('HGET', info, 'url')
  end
  if url and (string.sub(url, 1, 5) == 'ws://' or string.sub(url, 1, 6) == 'wss://') and redis.call('TYPE', conns).ok == 'hash' then
    local table = redis.call('HGETALL', conns)
    for i = 1, #table, 2 do
      out[#out + 1] = node
      out[#out + 1] = table[i]
      out[#out + 1] = table[i + 1]
    end
  end
end
return out
"""


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("syncws.RedisCluster needs the redis package: pip install 'syncws[redis]'") from None
    return redis


class RedisCluster:
    """This process as a node of the cluster ``name`` on the Redis at ``url``.

    Args:
        url: redis-py's URL: ``redis://[:password@]host:port/db``, or
            ``rediss://`` for TLS (credentials and TLS as redis-py takes them).
        name: the cluster's name; every key and channel is namespaced by it.
        ttl: seconds after which a silent node counts as gone.
        link_sslopt: for nodes that serve ``wss://``: websocket-client's
            ``sslopt`` for the links between nodes (e.g. ``{"ca_certs": path}``).
        advertise: the URL (``ws://host:port``) at which other nodes reach this
            node's server; default: the server's own ``url`` (its listen
            address, which for ``0.0.0.0`` only this host can use).
        max_send_size: the largest message :meth:`send` takes (ValueError
            beyond): Redis drops a subscriber whose output buffer passes 32 MiB.
            Also the largest a node delivers: a larger one read on the channel
            is dropped as junk (give every member the same value).
        redis_options: passed to ``redis.Redis.from_url``.
    """

    def __init__(
        self,
        url: str,
        name: str = "syncws",
        *,
        ttl: float = 3.0,
        link_sslopt: Optional[dict[str, Any]] = None,
        advertise: Optional[str] = None,
        max_send_size: int = 16 * 1024 * 1024,
        **redis_options: Any,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        redis = _redis_module()
        #: The Redis URL with any password hidden: what log lines and errors show.
        self.url = redact(url)
        self.name = name
        self.ttl = ttl
        self.node_id = uuid.uuid4().hex[:12]
        self.link_sslopt = link_sslopt
        self.advertise = advertise.rstrip("/") if advertise else None
        self.max_send_size = max_send_size
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        # What a read turns into ClusterError: also a refusal (a key of the wrong type, a script error).
        self._read_errors: tuple[type[BaseException], ...] = (*self._errors, redis.exceptions.RedisError)
        redis_options.setdefault("socket_timeout", max(ttl, 1.0))
        redis_options.setdefault("socket_connect_timeout", max(ttl, 1.0))
        # No retries inside redis-py: the threads retry by themselves, a caller's deadline is not
        # redis-py's to stretch, and a PUBLISH sent twice would be delivered twice.
        redis_options.setdefault("retry", redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        self._redis = redis.Redis.from_url(url, **redis_options)  # the URL with its credentials goes to redis-py alone
        self._presence_script = self._redis.register_script(_PRESENCE_SCRIPT)
        self._prefix = f"syncws:{name}:"
        self._label = f"cluster {name}"
        self._where = f"cluster {name}: Redis at {self.url}"  # what error messages start with
        # Synchronize access to _node, _started, _stopping, keeper, _ids and _token.
        self._lock = threading.Lock()
        #: This node's connections and heartbeat, written by the beat thread alone.
        self.presence = Presence(self._redis, self.key, self.node_id, ttl, self._errors, name)
        self._node: Optional[LocalNode] = None
        self._started = False
        # Set to stop the threads of the current start; each start makes its own (under _lock).
        self._stopping = threading.Event()
        # Set by the subscriber thread once Redis confirmed its subscription; start() waits for it.
        self._subscribed = threading.Event()
        #: The subscriber and beat threads of the current start, restarted (with a warning) if they ever end.
        self.keeper = Keeper(self._label, self._stopping)
        #: The subscriber's loop: what it dropped, and its rate-limited warnings.
        #: The last presence answer per name, while the subscriber hears every change (docs/cluster.md).
        self.presence_cache = PresenceCache(max_age=ttl / 3)
        self.subscriber = Subscriber(
            self._redis, self.key("all"), self._label, self._local_node, self._errors, max_send_size,
            self._subscribed, self.presence_cache, self.keeper.check, poll=min(1.0, ttl / 3),
        )  # fmt: skip
        self._reads = BoundedReads(self._label)
        self._record_log = RateLimitedLog(logger)  # keyed by this cluster: unreadable presence records
        self._ids = 0  # connection ids handed out (under _lock)
        self._token: Optional[str] = None  # the link secret, once read (under _lock)

    # ------------------------------------------------------------------ keys

    def key(self, *parts: str) -> str:
        """A Redis key or channel of this cluster: ``syncws:<name>:<parts>``."""
        return self._prefix + ":".join(parts)

    # ------------------------------------------------------------------ lifecycle

    def attach(self, node: LocalNode, info: Optional[dict[str, str]] = None) -> None:
        """Make ``node`` (a server) this process's node: it gets the cluster's sends. Once."""
        with self._lock:
            if self._node is not None and self._node is not node:
                raise ValueError("a RedisCluster serves one server; make one per server")
            self._node = node
        self.presence.set_info(info or {})

    def _local_node(self) -> Optional[LocalNode]:
        with self._lock:
            return self._node

    def start(self) -> RedisCluster:
        """Publish this node and start its threads; returns at once. Idempotent; safe from any thread."""
        # A new event per start: a thread of an earlier start that outlived its stop's join ends all the same.
        stopping = threading.Event()
        keeper = Keeper(self._label, stopping)
        with self._lock:
            if self._started:
                return self
            self._started = True
            serving = self._node is not None
            self._stopping, self.keeper = stopping, keeper
        if serving:  # a process without a server has no presence and receives no sends
            self._subscribed.clear()
            self.subscriber.tick = keeper.check
            keeper.spawn("syncws-cluster-sub", lambda: self.subscriber.run(stopping))
            # Presence only once subscribed: a node that others can see must not miss their sends.
            if not self._subscribed.wait(max(1.0, self.ttl)):
                logger.warning("cluster %s: not yet subscribed to %s; sends to this node may be missed until it is", self.name, self.url)
            keeper.spawn("syncws-cluster-beat", lambda: self.presence.run(stopping, keeper.check))
        return self

    def stop(self) -> None:
        """Remove this node's presence at once and stop its threads. Safe from any thread, more than once."""
        with self._lock:
            if not self._started:
                self._reads.close(2.0)  # a cluster used only to call out has its read helpers all the same
                return
            self._started = False
            stopping, keeper = self._stopping, self.keeper
        self.presence.clear()
        self.presence_cache.distrust()
        stopping.set()
        self.presence.wake.set()
        keeper.join(self.ttl + 2)
        self._reads.close(2.0)
        try:
            self.presence.remove()
        except self._read_errors as exc:
            logger.info("cluster %s: could not remove node %s from Redis (%s); it expires within %s s", self.name, self.node_id, exc, self.ttl)

    def _read(self, what: Callable[[], T], deadline: Optional[float]) -> T:
        """``what()``, a Redis read, by ``deadline`` (``time.monotonic()``; None: the socket timeouts); ClusterError otherwise."""
        try:
            return self._reads.run(what, deadline)
        except DeadlinePassed as exc:
            raise ClusterError(f"{self._where} did not answer within the caller's timeout") from exc
        except self._read_errors as exc:
            raise ClusterError(f"{self._where} cannot be reached: {exc}") from exc

    def token(self, refresh: bool = False, deadline: Optional[float] = None) -> str:
        """The cluster's secret for node links: made once per cluster and kept in Redis (``syncws:<name>:token``).

        Whoever can read the cluster's keys in Redis is a member; the token
        keeps everyone else off the nodes' link endpoints. It is read once and
        kept; ``refresh`` reads it again (a link refused with 401 does, after a
        Redis restart). Nodes put the token they know back into a Redis that
        restarted empty, with their presence; a token in Redis that is not
        usable (empty, too short, garbled, another type) is replaced, never
        used. Raises ClusterError when Redis cannot be reached by ``deadline``.
        """
        with self._lock:
            if self._token is not None and not refresh:
                return self._token
            known = self._token
        candidate = known or secrets.token_urlsafe(32)
        raw = self._read(lambda: self.presence.token_script(keys=[self.key("token")], args=[candidate]), deadline)
        try:
            token = read_token(raw)
        except Unreadable as exc:
            raise ClusterError(f"cluster {self.name}: {exc}") from None
        with self._lock:
            self._token = token
        self.presence.token = token
        return token

    def check_token(self, given: str) -> bool:
        """True when ``given`` is the cluster's token (read again from Redis once before saying no); never for an empty one."""
        if not valid_token(given):
            return False  # an empty or malformed bearer: no token Redis could hold matches it
        try:
            if hmac.compare_digest(given.encode(), self.token().encode()):
                return True
            return hmac.compare_digest(given.encode(), self.token(refresh=True).encode())
        except ClusterError:
            return False

    # ------------------------------------------------------------------ presence

    def new_connection_id(self) -> str:
        """A connection id unique in the cluster."""
        with self._lock:
            self._ids += 1
            return f"{self.node_id}-{self._ids}"

    def connection_opened(self, record: ClusterConnection) -> None:
        """Publish a connection of this node; returns at once, the beat thread writes it (any thread)."""
        self.presence.opened(record)

    def connection_closed(self, conn_id: str) -> None:
        """Withdraw a connection of this node; returns at once, the beat thread removes it (any thread)."""
        self.presence.closed(conn_id)

    def connections(self, name: str, deadline: Optional[float] = None) -> list[ClusterConnection]:
        """Every open connection of ``name`` on every live node, newest last.

        A record that is not what a member writes is skipped (one warning per
        10 s says how many). Raises ClusterError when Redis cannot be reached,
        or has not answered by ``deadline`` (``time.monotonic()``).

        On a started node the answer may come from :attr:`presence_cache`
        without asking Redis: it is dropped the moment any node's connections
        of ``name`` change, and is at most ``ttl / 3`` old.
        """
        cached = self.presence_cache.get(name)
        if cached is not None:
            return cached
        began = self.presence_cache.begin(name)
        args = [int(time.time() * 1000), self.key("conns", ""), ":" + name, self.key("node", "")]
        flat = self._read(lambda: self._presence_script(keys=[self.key("nodes")], args=args), deadline)
        found, bad = read_records(flat, name)
        if bad is not None:
            self._record_log.log(self, logging.WARNING, "cluster %s: unreadable presence record of %r skipped: %s", self.name, name, bad)
        self.presence_cache.put(name, began, found)
        return found

    def local_connections(self, name: Optional[str] = None) -> list[ClusterConnection]:
        """This node's own open connections (of ``name``, when given), newest last; no Redis needed."""
        return self.presence.local(name)

    def node_info(self, node: str, deadline: Optional[float] = None) -> dict[str, str]:
        """What ``node`` published about itself (its link URL), or {} when it is gone; fields that are not UTF-8 are left out."""
        raw = self._read(lambda: self._redis.hgetall(self.key("node", node)), deadline)
        info = {}
        for key, value in raw.items() if isinstance(raw, dict) else ():
            try:
                info[bytes(key).decode()] = bytes(value).decode()
            except (UnicodeDecodeError, TypeError):
                continue
        return info

    def node_alive(self, node: str) -> bool:
        """True while ``node``'s heartbeat has not run out (False also when Redis cannot be reached)."""
        try:
            score = self._redis.zscore(self.key("nodes"), node)
        except self._read_errors:
            return False
        return score is not None and score > time.time() * 1000

    def link_url(self, node: str, deadline: Optional[float] = None) -> Optional[str]:
        """The link URL of ``node`` while its heartbeat runs, in one round trip; None when it is gone or published no usable URL.

        Raises ClusterError when Redis cannot be reached by ``deadline``.
        """
        read_id(node, "node id")  # a record's node id was checked when read; anything else is refused here

        def ask() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hget(self.key("node", node), "url")
            pipe.zscore(self.key("nodes"), node)
            return list(pipe.execute(raise_on_error=False))

        raw_url, score = self._read(ask, deadline)
        if not isinstance(score, (int, float)) or score <= time.time() * 1000:
            return None
        try:
            return read_url(raw_url)
        except Unreadable as exc:
            self._record_log.log(self, logging.WARNING, "cluster %s: node %s published no usable link URL: %s", self.name, node, exc)
            return None

    # ------------------------------------------------------------------ sends

    def send(self, name: str, message: Union[str, bytes, bytearray, memoryview, dict[str, Any], list[Any]]) -> int:
        """Send ``message`` to every connection of ``name`` on every node, each at most once. Safe from any thread.

        str and dict/list (as JSON) go as text, bytes-like as binary. Messages
        one thread sends reach each connection in the order sent. Returns how
        many subscribers (nodes) Redis handed it to. Raises ClusterError when
        Redis could not be reached: nothing was sent, no node delivers it.
        Raises SendUnconfirmed when it was written to Redis but not confirmed
        within the socket timeout: it may still reach every node, late, each
        connection at most once, or reach none (docs/cluster.md).
        """
        return redis_io.publish(self._redis, self._errors, self.key("all"), send_envelope(name, message, self.max_send_size), self._where)

    def close_all(self, code: int = 1001, reason: str = "closing all connections") -> int:
        """Close every connection on every node (as closeAllConnections does on one). Safe from any thread.

        ``code`` must be one a close frame may carry and ``reason`` at most
        123 bytes of UTF-8 (ValueError). Returns and raises as :meth:`send`.
        """
        code, reason = check_close(code, reason)
        return redis_io.publish(self._redis, self._errors, self.key("all"), encode_envelope(CLOSE_ALL, {"code": code, "reason": reason}), self._where)

    def health(self) -> dict[str, Any]:
        """This node's view, without asking Redis: ``redis_up`` (its last heartbeat reached Redis, subscribed) and ``nodes`` alive then. Any thread."""
        up = self.presence.reachable and self._subscribed.is_set()
        return {"name": self.name, "node": self.node_id, "redis_up": up, "nodes": list(self.presence.live_nodes)}

    def __repr__(self) -> str:
        return f"<RedisCluster {self.name!r} node {self.node_id} on {self.url}>"


def send_envelope(name: str, message: Any, max_size: int) -> bytes:
    """The envelope of a send of ``message`` to ``name``: TypeError or ValueError for what no node would deliver."""
    if isinstance(message, (dict, list)):
        message = json.dumps(message)
    if isinstance(message, str):
        kind, payload = TEXT, message.encode("utf-8")
    elif isinstance(message, (bytes, bytearray, memoryview)):
        kind, payload = BINARY, bytes(message)
    else:
        raise TypeError(f"cannot send a {type(message).__name__}: send takes str, bytes-like, or a dict or list (JSON text)")
    if len(payload) > max_size:
        raise ValueError(f"a cluster send carries at most max_send_size={max_size} bytes, not {len(payload)}: Redis would drop its subscribers")
    return encode_envelope(kind, {"name": check_name(name)}, payload)


def redact(url: str) -> str:
    """``url`` with its password (and user) replaced by ``***``, for log lines and error messages."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

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
  name, so each connection gets it once. Binary goes as it is, never base64.

What it does not carry: request and reply data. A call to a peer on another
node goes over a direct syncws connection to that node (its ``/_syncws/node``
endpoint, opened on first use and kept), so a large reply never passes
through Redis, whose pub/sub drops a subscriber that falls 32 MiB behind and
delivers at most once (docs/cluster.md). Nothing read from Redis is
unpickled or executed: records are JSON, envelopes a small binary header.

Threads: ``syncws-cluster-beat`` renews presence; ``syncws-cluster-sub`` reads
the pub/sub channels and delivers; both reconnect to Redis with capped,
jittered backoff and republish presence when it comes back. Every public
method is safe from any thread.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import struct
import threading
import time
import uuid
from typing import Any, Callable, Optional, Protocol, Union
from urllib.parse import urlsplit, urlunsplit

from ..exceptions import ClusterError
from .presence import Backoff, ClusterConnection, Presence

__all__ = ["RedisCluster", "ClusterConnection", "ClusterError", "LocalNode"]

logger = logging.getLogger(__name__)

# One name's connection records on every live node in one round trip: node, id, record, node, ...
# (KEYS[1]: the nodes set; ARGV: now in ms, the prefix of the conns hashes, ":" and the name).
# Our own script; it reads only this cluster's keys and runs nothing it reads.
_PRESENCE_SCRIPT = """
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')) do
  local table = redis.call('HGETALL', ARGV[2] .. node .. ARGV[3])
  for i = 1, #table, 2 do
    out[#out + 1] = node
    out[#out + 1] = table[i]
    out[#out + 1] = table[i + 1]
  end
end
return out
"""

_ENVELOPE = struct.Struct("!4sBI")  # magic, kind, header length; then the JSON header, then the payload
_MAGIC = b"SWC1"
_TEXT, _BINARY, _CLOSE_ALL = 1, 2, 3


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("syncws.RedisCluster needs the redis package: pip install 'syncws[redis]'") from None
    return redis


class LocalNode(Protocol):
    """What the cluster needs of the server that makes this process a node."""

    def deliver(self, name: str, message: Union[str, bytes]) -> None:
        """Send ``message`` to every local connection of ``name``."""

    def close_all(self, code: int, reason: str) -> None:
        """Close every local connection."""


def encode_envelope(kind: int, header: dict[str, Any], payload: bytes = b"") -> bytes:
    """A pub/sub message: a fixed header, a small JSON header and the payload as it is."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return _ENVELOPE.pack(_MAGIC, kind, len(head)) + head + payload


def decode_envelope(data: bytes) -> tuple[int, dict[str, Any], memoryview]:
    """The kind, JSON header and payload of a pub/sub message; ValueError when it is not one."""
    if len(data) < _ENVELOPE.size:
        raise ValueError("message shorter than an envelope")
    magic, kind, length = _ENVELOPE.unpack_from(data)
    if magic != _MAGIC or length > len(data) - _ENVELOPE.size:
        raise ValueError("not a syncws cluster envelope")
    header = json.loads(data[_ENVELOPE.size : _ENVELOPE.size + length])
    if not isinstance(header, dict):
        raise ValueError("envelope header is not an object")
    return kind, header, memoryview(data)[_ENVELOPE.size + length :]


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
        redis_options.setdefault("socket_timeout", max(ttl, 1.0))
        redis_options.setdefault("socket_connect_timeout", max(ttl, 1.0))
        self._redis = redis.Redis.from_url(url, **redis_options)  # the URL with its credentials goes to redis-py alone
        self._presence_script = self._redis.register_script(_PRESENCE_SCRIPT)
        self._prefix = f"syncws:{name}:"
        # Synchronize access to _node, _started, _ids and _token.
        self._lock = threading.Lock()
        #: This node's connections and heartbeat, written by the beat thread alone.
        self.presence = Presence(self._redis, self.key, self.node_id, ttl, self._errors, name)
        self._node: Optional[LocalNode] = None
        self._started = False
        self._stopping = threading.Event()
        # Set by the subscriber thread once Redis confirmed its subscription; start() waits for it.
        self._subscribed = threading.Event()
        self._threads: list[threading.Thread] = []
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

    def start(self) -> RedisCluster:
        """Publish this node and start its threads; returns at once. Idempotent; safe from any thread."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            serving = self._node is not None
        self._stopping.clear()
        if serving:  # a process without a server has no presence and receives no sends
            self._subscribed.clear()
            self._spawn("syncws-cluster-sub", self._subscribe_loop)
            # Presence only once subscribed: a node that others can see must not miss their sends.
            if not self._subscribed.wait(max(1.0, self.ttl)):
                logger.warning("cluster %s: not yet subscribed to %s; sends to this node may be missed until it is", self.name, self.url)
            self._spawn("syncws-cluster-beat", lambda: self.presence.run(self._stopping))
        return self

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self) -> None:
        """Remove this node's presence at once and stop its threads. Safe from any thread, more than once."""
        with self._lock:
            if not self._started:
                return
            self._started = False
        self.presence.clear()
        self._stopping.set()
        self.presence.wake.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(self.ttl + 2)
        self._threads.clear()
        try:
            self.presence.remove()
        except self._errors as exc:
            logger.info("cluster %s: could not remove node %s from Redis (%s); it expires within %s s", self.name, self.node_id, exc, self.ttl)

    def token(self, refresh: bool = False) -> str:
        """The cluster's secret for node links: made once per cluster and kept in Redis (``syncws:<name>:token``).

        Whoever can read the cluster's keys in Redis is a member; the token
        keeps everyone else off the nodes' link endpoints. It is read once and
        kept; ``refresh`` reads it again (a link refused with 401 does, after a
        Redis restart). Nodes put the token they know back into a Redis that
        restarted empty, with their presence. Raises ClusterError when Redis
        cannot be reached.
        """
        with self._lock:
            if self._token is not None and not refresh:
                return self._token
            known = self._token
        try:
            self._redis.set(self.key("token"), known or secrets.token_urlsafe(32), nx=True)
            raw = self._redis.get(self.key("token"))
        except self._errors as exc:
            raise ClusterError(f"cluster {self.name}: Redis at {self.url} cannot be reached: {exc}") from exc
        token = raw.decode() if isinstance(raw, bytes) else str(raw)
        with self._lock:
            self._token = token
        self.presence.token = token
        return token

    def check_token(self, given: str) -> bool:
        """True when ``given`` is the cluster's token (read again from Redis once before saying no)."""
        if hmac.compare_digest(given.encode(), self.token().encode()):
            return True
        try:
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

    def connections(self, name: str) -> list[ClusterConnection]:
        """Every open connection of ``name`` on every live node, newest last.

        Raises ClusterError when Redis cannot be reached.
        """
        try:
            flat = self._presence_script(keys=[self.key("nodes")], args=[int(time.time() * 1000), self.key("conns", ""), ":" + name])
        except self._errors as exc:
            raise ClusterError(f"cluster {self.name}: Redis at {self.url} cannot be reached: {exc}") from exc
        found = []
        for i in range(0, len(flat) - 2, 3):
            node, conn_id, text = flat[i].decode(), flat[i + 1].decode(), flat[i + 2]
            try:
                record = ClusterConnection.from_json(node, conn_id, text)
            except (ValueError, KeyError, TypeError):
                logger.warning("cluster %s: unreadable presence record %r of node %s ignored", self.name, conn_id, node)
                continue
            if record.name == name:
                found.append(record)
        found.sort(key=lambda r: (r.opened_at, r.id))
        return found

    def local_connections(self, name: Optional[str] = None) -> list[ClusterConnection]:
        """This node's own open connections (of ``name``, when given), newest last; no Redis needed."""
        return self.presence.local(name)

    def node_info(self, node: str) -> dict[str, str]:
        """What ``node`` published about itself (its link URL), or {} when it is gone."""
        try:
            raw = self._redis.hgetall(self.key("node", node))
        except self._errors as exc:
            raise ClusterError(f"cluster {self.name}: Redis at {self.url} cannot be reached: {exc}") from exc
        return {k.decode(): v.decode() for k, v in raw.items()}

    def node_alive(self, node: str) -> bool:
        """True while ``node``'s heartbeat has not run out (False also when Redis cannot be reached)."""
        try:
            score = self._redis.zscore(self.key("nodes"), node)
        except self._errors:
            return False
        return score is not None and score > time.time() * 1000

    # ------------------------------------------------------------------ sends

    def send(self, name: str, message: Union[str, bytes, bytearray, memoryview, dict[str, Any], list[Any]]) -> None:
        """Send ``message`` to every connection of ``name`` on every node, each once. Safe from any thread.

        str and dict/list (as JSON) go as text, bytes-like as binary. Messages
        one thread sends reach each connection in the order sent. Raises
        ClusterError when Redis cannot be reached (nothing was sent then).
        """
        if isinstance(message, (dict, list)):
            message = json.dumps(message)
        if isinstance(message, str):
            kind, payload = _TEXT, message.encode("utf-8")
        elif isinstance(message, (bytes, bytearray, memoryview)):
            kind, payload = _BINARY, bytes(message)
        else:
            raise TypeError(f"cannot send a {type(message).__name__}: send takes str, bytes-like, or a dict or list (JSON text)")
        if len(payload) > self.max_send_size:
            raise ValueError(f"a cluster send carries at most max_send_size={self.max_send_size} bytes, not {len(payload)}: Redis would drop its subscribers")
        envelope = encode_envelope(kind, {"name": name}, payload)
        self._publish(envelope)

    def close_all(self, code: int = 1001, reason: str = "closing all connections") -> None:
        """Close every connection on every node (as closeAllConnections does on one). Safe from any thread."""
        self._publish(encode_envelope(_CLOSE_ALL, {"code": code, "reason": reason}))

    def _publish(self, envelope: bytes) -> None:
        try:
            self._redis.publish(self.key("all"), envelope)
        except self._errors as exc:
            raise ClusterError(f"cluster {self.name}: Redis at {self.url} cannot be reached: {exc}") from exc

    def _subscribe_loop(self) -> None:
        """Read the cluster's channel and deliver to this node's connections (subscriber thread)."""
        backoff = Backoff()
        while not self._stopping.is_set():
            pubsub = self._redis.pubsub()
            try:
                pubsub.subscribe(self.key("all"))
                backoff.reset()
                while not self._stopping.is_set():
                    message = pubsub.get_message(timeout=min(1.0, self.ttl / 3))
                    if message is None:
                        continue
                    if message.get("type") == "message":
                        self._on_envelope(message["data"])
                    elif message.get("type") == "subscribe":
                        self._subscribed.set()  # Redis confirmed: every publish from now on reaches us
            except self._errors as exc:
                logger.warning("cluster %s: lost the pub/sub connection to %s (%s); resubscribing", self.name, self.url, exc)
                self._stopping.wait(backoff.next())
            finally:
                try:
                    pubsub.close()
                except self._errors:
                    pass

    def _on_envelope(self, data: bytes) -> None:
        with self._lock:
            node = self._node
        if node is None:
            return
        try:
            kind, header, payload = decode_envelope(data)
            if kind == _TEXT:
                node.deliver(str(header["name"]), bytes(payload).decode("utf-8"))
            elif kind == _BINARY:
                node.deliver(str(header["name"]), bytes(payload))
            elif kind == _CLOSE_ALL:
                node.close_all(int(header.get("code", 1001)), str(header.get("reason", "")))
            else:
                raise ValueError(f"unknown envelope kind {kind}")
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("cluster %s: unreadable message on the cluster channel dropped: %s", self.name, exc)

    def __repr__(self) -> str:
        return f"<RedisCluster {self.name!r} node {self.node_id} on {self.url}>"


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

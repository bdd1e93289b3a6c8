"""A measured run, not a test: a two-node cluster under a stream of junk on its channel and in its keys, with broadcasts and requests checked all along.

    python -m tests.cluster.soak_garbage [--duration 20] [--ttl 1]

Starts a redis-server on a free loopback port, nodes A and B (in this
process; a peer on A answering ``where``) and a /news listener on each.
For ``--duration`` seconds one thread publishes junk on the cluster's
channel (every kind in :mod:`tests.cluster.junk`, random bytes, valid
envelopes with bytes flipped) and writes junk into its keys (junk records
and node ids, node hashes with junk URLs, every few seconds a key of each
kind overwritten with a list, an empty token); meanwhile every 0.2 s each
node broadcasts a numbered mark and node B and a process without a server
call the peer. At the end (junk stopped) a last round must pass on every
node. Prints what it measured; exits 1 when a listener got a mark twice, a
node's subscriber thread is gone, or the last round failed.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import sys
import threading
import time

import redis
import websocket

import syncws
from syncws.cluster.cluster import RedisCluster

from ..redis_server import RedisServer
from .junk import CHANNEL_JUNK, RECORD_JUNK


class Counter(logging.Handler):
    """Counts WARNING-or-worse records of syncws by their format string."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()
        self.tracebacks = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[str(record.msg)[:70]] += 1
        self.tracebacks += record.exc_info is not None


def node(url: str, name: str, ttl: float) -> tuple[syncws.WebSocketServer, syncws.RequestHandler]:
    cluster = RedisCluster(url, name=name, ttl=ttl)
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=cluster)
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    server.add_handler("/news", syncws.DataWebSocketHandler, name="news")
    return server.start(), handler


def junk_writer(admin: redis.Redis, prefix: str, ids: list[str], stop: threading.Event, made: collections.Counter[str]) -> None:
    """Publish junk and write junk into the cluster's keys until ``stop`` (its own thread)."""
    rng = random.Random(7)
    last_types = time.monotonic()
    while not stop.is_set():
        junk_round(admin, prefix, ids, rng, made)
        if time.monotonic() - last_types > 3:  # every 3 s: each kind of key overwritten with another type, and an empty token
            last_types = time.monotonic()
            for key in (prefix + "nodes", f"{prefix}node:{ids[0]}", f"{prefix}conns:{ids[0]}:wsData", prefix + "token"):
                admin.delete(key)
                admin.rpush(key, "junk")
            admin.set(prefix + "token", "")
            made["type overwrites"] += 1
        stop.wait(0.05)


def junk_round(admin: redis.Redis, prefix: str, ids: list[str], rng: random.Random, made: collections.Counter[str]) -> None:
    """One round of junk: 20 messages on the channel, then a junk record, a junk node id and a junk node hash."""
    kinds = list(CHANNEL_JUNK.values())
    valid = b'SWC1\x01\x00\x00\x00\x0f{"name":"news"}valid'
    for _ in range(20):
        choice = rng.random()
        if choice < 0.5:
            message = rng.choice(kinds)
        elif choice < 0.75:
            message = rng.randbytes(rng.randrange(0, 300))
        else:
            flipped = bytearray(valid)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            message = bytes(flipped)
        admin.publish(prefix + "all", message)
        made["published"] += 1
    conn_id, text = rng.choice(list(RECORD_JUNK.values()))
    junk_url = rng.choice([b"javascript:1", b"\xff", b"ws://", b"ws://127.0.0.1:1/x"])
    for key, write, args in (
        (f"{prefix}conns:{rng.choice(ids)}:wsData", admin.hset, (conn_id + str(rng.random()).encode(), text)),
        (prefix + "nodes", admin.zadd, ({rng.randbytes(8): int((time.time() + 60) * 1000)},)),
        (f"{prefix}node:junk{rng.randrange(5)}", admin.hset, ("url", junk_url)),
    ):
        try:
            write(key, *args)  # type: ignore[operator]
            made["key writes"] += 1
        except redis.ResponseError:  # the key holds another type just now (overwritten, not yet repaired)
            made["key writes refused"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--ttl", type=float, default=1.0)
    args = parser.parse_args()
    counter = Counter()
    logging.getLogger("syncws").addHandler(counter)
    logging.getLogger("syncws").setLevel(logging.WARNING)
    server = RedisServer().start()
    name = "soak"
    prefix = f"syncws:{name}:"
    (a, ha), (b, hb) = node(server.url, name, args.ttl), node(server.url, name, args.ttl)
    peer = syncws.RemoteService(a.url + "/wsData")
    peer.register("where", lambda msg: "A")
    peer.start(timeout=10)
    outsider = RedisCluster(server.url, name=name, ttl=args.ttl)
    caller = syncws.RequestHandler("wsData", cluster=outsider)
    listeners = [websocket.create_connection(s.url + "/news", timeout=30) for s in (a, b)]
    while len(outsider.connections("news")) < 2 or len(outsider.connections("wsData")) < 1:
        time.sleep(0.05)
    received: list[collections.Counter[str]] = [collections.Counter(), collections.Counter()]

    def listen(i: int) -> None:
        try:
            while True:
                received[i][str(listeners[i].recv())] += 1
        except Exception:  # the socket closed at the end
            return

    readers = [threading.Thread(target=listen, args=(i,), daemon=True) for i in range(2)]
    for reader in readers:
        reader.start()
    admin = redis.Redis.from_url(server.url)
    stop = threading.Event()
    made: collections.Counter[str] = collections.Counter()
    writer = threading.Thread(target=junk_writer, args=(admin, prefix, [a.cluster.node_id, b.cluster.node_id], stop, made), daemon=True)  # type: ignore[union-attr]
    results: collections.Counter[str] = collections.Counter()
    sent: list[str] = []
    started = time.monotonic()
    writer.start()

    def one_round(tag: str) -> bool:
        ok = True
        for sender in (a, b):
            mark = f"{tag} {len(sent)}"
            syncws.sendWebSocketMessage("news", mark, registry=sender.registry)
            sent.append(mark)
        for who, handler in (("A", ha), ("B", hb), ("outsider", caller)):
            try:
                handler.doRequest({"cmd": "where"}, timeout=5)
                results[f"{tag} request via {who}: ok"] += 1
            except Exception as exc:
                results[f"{tag} request via {who}: {type(exc).__name__}"] += 1
                ok = False
        return ok

    while time.monotonic() - started < args.duration:
        one_round("during")
        time.sleep(0.2)
    stop.set()
    writer.join(10)
    time.sleep(2 * args.ttl)  # the last overwrite repaired by the heartbeats
    last_ok = all(one_round("after") for _ in range(5))
    time.sleep(1)
    for ws in listeners:
        ws.close()
    twice = [sum(1 for m in sent if rx[m] > 1) for rx in received]
    missing_during = [sum(1 for m in sent if m.startswith("during") and rx[m] == 0) for rx in received]
    missing_after = [sum(1 for m in sent if m.startswith("after") and rx[m] == 0) for rx in received]
    subs_alive = [any(t.name == "syncws-cluster-sub" for t in threading.enumerate())]
    # (getattr: the script also measures a syncws from before the keeper and the subscriber's count)
    restarts = [getattr(s.cluster, "keeper", None) and s.cluster.keeper.restarts("syncws-cluster-sub") for s in (a, b)]  # type: ignore[union-attr]
    dropped = [getattr(getattr(s.cluster, "subscriber", None), "dropped", None) for s in (a, b)]
    print(f"duration {args.duration:.0f} s, ttl {args.ttl} s; junk: {dict(made)}")
    print(f"marks broadcast: {len(sent)}; received twice by A/B: {twice}; missing during junk A/B: {missing_during}; missing after: {missing_after}")
    print(f"messages dropped as unreadable by A/B: {dropped}; subscriber restarts A/B: {restarts}; a subscriber thread alive: {subs_alive[0]}")
    print("requests: " + json.dumps(dict(sorted(results.items())), indent=1))
    print(f"warnings logged ({sum(counter.counts.values())}, {counter.tracebacks} with a traceback):")
    for text, count in counter.counts.most_common():
        print(f"  {count:5d}  {text}")
    failed = any(twice) or any(missing_after) or not last_ok or not subs_alive[0]
    print("verdict:", "FAIL" if failed else "PASS")
    caller.close_links()
    peer.stop()
    for s in (a, b):
        s.stop()
    server.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""/metrics against real traffic: scraped over HTTP with urllib and read with prometheus_client's own parser.

Each test scrapes before and after what it does and asserts the exact
difference, or compares a scrape with ``stats()`` taken while nothing moves.
Real peers only (syncws.connect, RemoteService, raw sockets) on 127.0.0.1, port 0.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest
from prometheus_client.parser import text_string_to_metric_families

import syncws
from syncws.cluster.cluster import RedisCluster

from ..helpers import RawClient, make_server, wait_for
from ..redis_server import RedisServer, needs_redis

pytestmark = pytest.mark.timeout(60)

NAME = "wsData"
TOKEN = "Bearer s3cret"

#: The spec (docs/observability.md): family name, type, and the labels of each sample name it exposes.
SPEC: dict[str, tuple[str, dict[str, set[str]]]] = {
    "syncws_connections": ("gauge", {"syncws_connections": {"endpoint"}}),
    "syncws_connections_opened": ("counter", {"syncws_connections_opened_total": {"endpoint"}}),
    "syncws_connections_closed": ("counter", {"syncws_connections_closed_total": {"endpoint", "code"}}),
    "syncws_messages_received": ("counter", {"syncws_messages_received_total": {"endpoint"}}),
    "syncws_messages_sent": ("counter", {"syncws_messages_sent_total": {"endpoint"}}),
    "syncws_bytes_received": ("counter", {"syncws_bytes_received_total": {"endpoint"}}),
    "syncws_bytes_sent": ("counter", {"syncws_bytes_sent_total": {"endpoint"}}),
    "syncws_handshakes_refused": ("counter", {"syncws_handshakes_refused_total": {"reason"}}),
    "syncws_requests": ("counter", {"syncws_requests_total": {"handler", "outcome"}}),
    "syncws_requests_pending": ("gauge", {"syncws_requests_pending": {"handler"}}),
    "syncws_request_duration_seconds": (
        "histogram",
        {
            "syncws_request_duration_seconds_bucket": {"handler", "le"},
            "syncws_request_duration_seconds_count": {"handler"},
            "syncws_request_duration_seconds_sum": {"handler"},
        },
    ),
    "syncws_send_queue_bytes": ("gauge", {"syncws_send_queue_bytes": set()}),
    "syncws_send_queue_full_closes": ("counter", {"syncws_send_queue_full_closes_total": set()}),
    "syncws_worker_threads": ("gauge", {"syncws_worker_threads": {"state"}}),
}
CLUSTER_SPEC: dict[str, tuple[str, dict[str, set[str]]]] = {
    "syncws_cluster_redis_up": ("gauge", {"syncws_cluster_redis_up": set()}),
    "syncws_cluster_nodes": ("gauge", {"syncws_cluster_nodes": set()}),
}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ---------------------------------------------------------------------- helpers


class Scrape:
    """One scrape of a metrics path: its families by name (name -> type) and every sample's value."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.labels: dict[str, set[frozenset[str]]] = {}
        self.series: Series = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.labels.setdefault(sample.name, set()).add(frozenset(sample.labels))
                self.series[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The value of one sample; 0 for a labelled series not exposed (yet)."""
        return self.series.get((name, frozenset(labels.items())), 0.0)

    def moved_since(self, before: Scrape) -> Series:
        """Every series whose value differs from ``before`` (a new series counts from 0), by how much."""
        out: Series = {}
        for key, value in self.series.items():
            delta = value - before.series.get(key, 0.0)
            if delta:
                out[key] = delta
        return out


def http_url(server: syncws.WebSocketServer, path: str) -> str:
    return server.url.replace("ws://", "http://", 1) + path


def scrape(server: syncws.WebSocketServer, path: str = "/metrics", headers: Optional[dict[str, str]] = None) -> Scrape:
    """GET ``path`` over HTTP and parse it; the body must be Prometheus text."""
    request = urllib.request.Request(http_url(server, path), headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return Scrape(response.read().decode("utf-8"))


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def settles(read: Callable[[], Any], expected: Any, timeout: float = 5.0) -> Any:
    """Wait (bounded) until ``read()`` equals ``expected``; return what it reads last, for an exact assert."""
    wait_for(lambda: read() == expected, timeout=timeout)
    return read()


def without_workers(series: Series) -> Series:
    """The series, less the worker threads: a scrape's own connection thread is one of them."""
    return {k: v for k, v in series.items() if k[0] != "syncws_worker_threads"}


class Setup:
    """A server with /echo, /guarded (auth: header X-Key k), /wsData with its RequestHandler, /metrics, and a RemoteService peer."""

    def __init__(self) -> None:
        self.server = make_server(close_timeout=1.0)
        self.server.add_handler("/guarded", syncws.BaseWebSocketHandler, name="guarded", auth=lambda request: request.headers.get("X-Key") == "k")
        self.rh = syncws.RequestHandler(NAME, self.server)
        self.server.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME, callback=self.rh.callback)
        self.server.add_metrics()
        self.gate = threading.Event()

        def boom(msg: dict[str, Any]) -> None:
            raise ValueError("broken")

        self.service = syncws.RemoteService(self.server.url + "/" + NAME, backoff_min=0.05, backoff_max=0.2)
        self.service.register("echo", lambda msg: msg["x"])
        self.service.register("boom", boom)
        self.service.register("slow", lambda msg: self.gate.wait(5))
        self.service.start(timeout=10)
        assert self.rh.wait_connected(10)

    def close(self) -> None:
        self.gate.set()
        self.service.stop()
        self.server.stop()


@pytest.fixture
def setup() -> Iterator[Setup]:
    made = Setup()
    try:
        yield made
    finally:
        made.close()


# ---------------------------------------------------------------------- names, types, labels


def test_every_metric_of_the_spec_has_its_type_and_labels(setup: Setup) -> None:
    """Every metric of docs/observability.md is there with its type and exactly its labels (once each labelled series exists)."""
    setup.rh.doRequest({"cmd": "echo", "x": 1}, timeout=10)
    conn = syncws.connect(setup.server.url + "/echo", timeout=5)
    conn.close()
    assert wait_for(lambda: setup.server.stats()["endpoints"]["/echo"]["closed"] == {"1000": 1})
    got = scrape(setup.server)
    for family, (kind, samples) in SPEC.items():
        assert got.types.get(family) == kind, family
        for sample, labels in samples.items():
            assert got.labels.get(sample) == {frozenset(labels)}, sample
    assert not [name for name in got.types if name.startswith("syncws_cluster_")]
    assert {labels["reason"] for (name, labels_set) in got.series for labels in [dict(labels_set)] if name == "syncws_handshakes_refused_total"} == {
        "auth",
        "origin",
        "limit",
        "stopping",
        "not_found",
        "bad_request",
        "error",
    }
    outcomes = {dict(labels)["outcome"] for (name, labels) in got.series if name == "syncws_requests_total"}
    assert outcomes == {"ok", "error", "timeout", "disconnected", "cancelled"}


def test_values_equal_stats(setup: Setup) -> None:
    """With nothing moving, every series of a scrape equals its figure in stats() (worker threads aside: the scrape is one)."""
    conn = syncws.connect(setup.server.url + "/echo", timeout=5)
    conn.send("é")
    assert conn.recv(timeout=5) == "é"
    setup.rh.doRequest({"cmd": "echo", "x": 2}, timeout=10)
    with pytest.raises(syncws.RequestError):
        setup.rh.doRequest({"cmd": "boom"}, timeout=10)
    with pytest.raises(syncws.HandshakeError):
        syncws.connect(setup.server.url + "/nowhere", timeout=5)
    assert wait_for(lambda: setup.server.stats()["endpoints"]["/echo"]["messages_out"] == 1)
    stats = setup.server.stats()
    got = scrape(setup.server)
    want: Series = {}
    for endpoint, figures in stats["endpoints"].items():
        want[key("syncws_connections", endpoint=endpoint)] = figures["connections"]
        want[key("syncws_connections_opened_total", endpoint=endpoint)] = figures["opened"]
        for code, count in figures["closed"].items():
            want[key("syncws_connections_closed_total", endpoint=endpoint, code=code)] = count
        want[key("syncws_messages_received_total", endpoint=endpoint)] = figures["messages_in"]
        want[key("syncws_messages_sent_total", endpoint=endpoint)] = figures["messages_out"]
        want[key("syncws_bytes_received_total", endpoint=endpoint)] = figures["bytes_in"]
        want[key("syncws_bytes_sent_total", endpoint=endpoint)] = figures["bytes_out"]
    for reason, count in stats["handshakes_refused"].items():
        want[key("syncws_handshakes_refused_total", reason=reason)] = count
    for handler, figures in stats["requests"].items():
        for outcome, count in figures["outcomes"].items():
            want[key("syncws_requests_total", handler=handler, outcome=outcome)] = count
        want[key("syncws_requests_pending", handler=handler)] = figures["pending"]
        for bound, count in figures["duration"]["buckets"]:
            le = bound if isinstance(bound, str) else repr(float(bound))
            want[key("syncws_request_duration_seconds_bucket", handler=handler, le=le)] = count
        want[key("syncws_request_duration_seconds_count", handler=handler)] = figures["duration"]["count"]
        want[key("syncws_request_duration_seconds_sum", handler=handler)] = figures["duration"]["sum"]
    want[key("syncws_send_queue_bytes")] = stats["send_queues"]["bytes"]
    want[key("syncws_send_queue_full_closes_total")] = stats["send_queues"]["closed_full"]
    assert without_workers(got.series) == want
    assert stats["endpoints"]["/echo"]["bytes_in"] == 2 and stats["requests"][NAME]["outcomes"]["error"] == 1
    conn.close()


# ---------------------------------------------------------------------- what moves


def test_connection_traffic_moves_each_series_by_exactly_that(setup: Setup) -> None:
    """A connection that echoes "é" and 5 binary bytes and closes 1001, and a raw one that drops: exactly those moves in /metrics."""
    before = scrape(setup.server)
    conn = syncws.connect(setup.server.url + "/echo", timeout=5)
    conn.send("é")
    assert conn.recv(timeout=5) == "é"
    conn.send(b"\x00\x01\x02\x03\x04")
    assert conn.recv(timeout=5) == b"\x00\x01\x02\x03\x04"
    conn.close(1001)
    raw = RawClient(setup.server.port)
    assert raw.handshake("/echo").startswith(b"HTTP/1.1 101")
    raw.close()
    e = {"endpoint": "/echo"}
    want = {
        key("syncws_connections_opened_total", **e): 2,
        key("syncws_connections_closed_total", code="1001", **e): 1,
        key("syncws_connections_closed_total", code="1006", **e): 1,
        key("syncws_messages_received_total", **e): 2,
        key("syncws_messages_sent_total", **e): 2,
        key("syncws_bytes_received_total", **e): 2 + 5,
        key("syncws_bytes_sent_total", **e): 2 + 5,
    }
    assert settles(lambda: without_workers(scrape(setup.server).moved_since(before)), want) == want


def test_refused_handshakes_move_their_reason_only(setup: Setup) -> None:
    """An auth refusal, a not_found and a malformed upgrade move handshakes_refused_total by 1 each; an allowed handshake moves none."""
    before = scrape(setup.server)
    with pytest.raises(syncws.HandshakeError):
        syncws.connect(setup.server.url + "/guarded", timeout=5)
    syncws.connect(setup.server.url + "/guarded", timeout=5, header={"X-Key": "k"}).close()
    with pytest.raises(syncws.HandshakeError):
        syncws.connect(setup.server.url + "/nowhere", timeout=5)
    raw = RawClient(setup.server.port)
    raw.send_raw(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert raw.read_head().startswith(b"HTTP/1.1 4")
    raw.close()
    after = scrape(setup.server)
    refused = {k: v for k, v in after.moved_since(before).items() if k[0] == "syncws_handshakes_refused_total"}
    assert refused == {key("syncws_handshakes_refused_total", reason=r): 1 for r in ("auth", "not_found", "bad_request")}


def test_requests_move_their_outcome_and_the_histogram(setup: Setup) -> None:
    """An ok, an error and a timeout move requests_total by one per outcome and the histogram's count by 3, its sum up."""
    before = scrape(setup.server)
    setup.rh.doRequest({"cmd": "echo", "x": "é"}, timeout=10)
    with pytest.raises(syncws.RequestError):
        setup.rh.doRequest({"cmd": "boom"}, timeout=10)
    with pytest.raises(syncws.RequestTimeout):
        setup.rh.doRequest({"cmd": "slow"}, timeout=0.2)
    setup.gate.set()
    after = scrape(setup.server)
    h = {"handler": NAME}
    moves = after.moved_since(before)
    assert {k: v for k, v in moves.items() if k[0] == "syncws_requests_total"} == {
        key("syncws_requests_total", outcome=o, **h): 1 for o in ("ok", "error", "timeout")
    }
    assert moves[key("syncws_request_duration_seconds_count", **h)] == 3
    assert moves[key("syncws_request_duration_seconds_bucket", le="+Inf", **h)] == 3
    assert moves[key("syncws_request_duration_seconds_sum", **h)] >= 0.2  # the timeout alone waited 0.2 s
    total = sum(after.value("syncws_requests_total", outcome=o, **h) for o in ("ok", "error", "timeout", "disconnected", "cancelled"))
    assert after.value("syncws_request_duration_seconds_count", **h) == total
    assert after.value("syncws_requests_pending", **h) == 0


def test_pending_gauge_while_a_call_waits(setup: Setup) -> None:
    """syncws_requests_pending is 1 while a call waits for its reply, 0 once it is answered."""
    results: list[Any] = []
    caller = threading.Thread(target=lambda: results.append(setup.rh.doRequest({"cmd": "slow"}, timeout=10)), daemon=True)
    caller.start()
    assert settles(lambda: scrape(setup.server).value("syncws_requests_pending", handler=NAME), 1.0) == 1.0
    setup.gate.set()
    caller.join(10)
    assert results and results[0]["status"] == 200
    assert scrape(setup.server).value("syncws_requests_pending", handler=NAME) == 0


# ---------------------------------------------------------------------- auth, and one registry per server


def test_metrics_auth_refuses_a_failing_client_with_401_and_serves_a_passing_one() -> None:
    """add_metrics(auth=...) answers 401 to a scrape without the token, the metrics to one with it; the 401 is no handshake refusal."""
    server = make_server()
    server.add_metrics(auth=lambda request: request.headers.get("Authorization") == TOKEN)
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(http_url(server, "/metrics"), timeout=5)
        assert info.value.code == 401
        info.value.close()
        with pytest.raises(urllib.error.HTTPError) as wrong:
            urllib.request.urlopen(urllib.request.Request(http_url(server, "/metrics"), headers={"Authorization": "Bearer nope"}), timeout=5)
        assert wrong.value.code == 401
        wrong.value.close()
        got = scrape(server, headers={"Authorization": TOKEN})
        assert got.types["syncws_handshakes_refused"] == "counter"
        assert sum(v for (name, _), v in got.series.items() if name == "syncws_handshakes_refused_total") == 0
    finally:
        server.stop()


def test_two_servers_in_one_process_have_separate_figures() -> None:
    """Two servers in one process each serve their own figures: traffic and refusals on one leave the other's at zero."""
    a, b = make_server(), make_server()
    try:
        a.add_metrics()
        b.add_metrics()
        conn = syncws.connect(a.url + "/echo", timeout=5)
        conn.send("hi")
        assert conn.recv(timeout=5) == "hi"
        conn.close()
        with pytest.raises(syncws.HandshakeError):
            syncws.connect(a.url + "/nowhere", timeout=5)
        assert wait_for(lambda: a.stats()["endpoints"]["/echo"]["closed"] == {"1000": 1})
        got_a, got_b = scrape(a), scrape(b)
        e = {"endpoint": "/echo"}
        assert (got_a.value("syncws_connections_opened_total", **e), got_a.value("syncws_bytes_received_total", **e)) == (1, 2)
        assert got_a.value("syncws_handshakes_refused_total", reason="not_found") == 1
        assert not [k for k in got_b.series if k[0].startswith(("syncws_connections", "syncws_messages", "syncws_bytes"))]
        assert got_b.value("syncws_handshakes_refused_total", reason="not_found") == 0
    finally:
        a.stop()
        b.stop()


# ---------------------------------------------------------------------- cluster


def test_no_cluster_metrics_without_a_cluster() -> None:
    """A server without cluster= exposes no syncws_cluster_redis_up (nor any syncws_cluster_ metric)."""
    server = make_server()
    server.add_metrics()
    try:
        got = scrape(server)
        assert "syncws_cluster_redis_up" not in got.types
        assert not [name for name in got.types if name.startswith("syncws_cluster_")]
    finally:
        server.stop()


@needs_redis
def test_cluster_redis_up_is_1_on_a_node_that_reaches_redis(redis_server: RedisServer, cluster_name: str) -> None:
    """A cluster node whose heartbeat reached Redis exposes syncws_cluster_redis_up 1 and syncws_cluster_nodes counting itself, as gauges."""
    cluster = RedisCluster(redis_server.url, name=cluster_name, ttl=1.0)
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry(), cluster=cluster).start()
    server.add_metrics()
    try:
        assert wait_for(lambda: cluster.node_id in (server.stats()["cluster"] or {}).get("nodes", ()) and server.stats()["cluster"]["redis_up"], timeout=10)
        got = scrape(server)
        for family, (kind, samples) in CLUSTER_SPEC.items():
            assert got.types.get(family) == kind, family
            for sample, labels in samples.items():
                assert got.labels.get(sample) == {frozenset(labels)}, sample
        assert got.value("syncws_cluster_redis_up") == 1
        assert got.value("syncws_cluster_nodes") == len(server.stats()["cluster"]["nodes"]) >= 1
    finally:
        server.stop()
        cluster.stop()

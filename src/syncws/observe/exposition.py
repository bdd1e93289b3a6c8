"""The stats in the Prometheus text format, through ``prometheus-client`` (the ``syncws[metrics]`` extra).

A custom collector (prometheus-client's pattern for figures kept elsewhere)
turns one ``stats()`` snapshot into metric families at each scrape, on the
scraping connection's thread: nothing is counted twice, and the request
path pays nothing for Prometheus. Every name is prefixed ``syncws_``;
docs/observability.md lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

from ..protocol.handshake import Request
from ..protocol.http import HttpResponse

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("server.add_metrics() needs the prometheus-client package: pip install 'syncws[metrics]'") from exc

__all__ = ["metrics_route", "StatsCollector", "metric_families"]

Stats = Callable[[], dict[str, Any]]


def metric_families(stats: dict[str, Any]) -> Iterator[Metric]:
    """One snapshot of ``stats()`` as Prometheus metric families."""
    endpoints = stats["endpoints"]
    connections = GaugeMetricFamily("syncws_connections", "Open websocket connections.", labels=["endpoint"])
    opened = CounterMetricFamily("syncws_connections_opened", "Connections admitted.", labels=["endpoint"])
    closed = CounterMetricFamily("syncws_connections_closed", "Connections ended, by close code (1006: lost).", labels=["endpoint", "code"])
    messages_in = CounterMetricFamily("syncws_messages_received", "Messages received.", labels=["endpoint"])
    messages_out = CounterMetricFamily("syncws_messages_sent", "Messages sent.", labels=["endpoint"])
    bytes_in = CounterMetricFamily("syncws_bytes_received", "Payload bytes of the messages received.", labels=["endpoint"])
    bytes_out = CounterMetricFamily("syncws_bytes_sent", "Payload bytes of the messages sent.", labels=["endpoint"])
    for label, figures in endpoints.items():
        connections.add_metric([label], figures["connections"])
        opened.add_metric([label], figures["opened"])
        for code, count in figures["closed"].items():
            closed.add_metric([label, code], count)
        messages_in.add_metric([label], figures["messages_in"])
        messages_out.add_metric([label], figures["messages_out"])
        bytes_in.add_metric([label], figures["bytes_in"])
        bytes_out.add_metric([label], figures["bytes_out"])
    yield from (connections, opened, closed, messages_in, messages_out, bytes_in, bytes_out)

    refused = CounterMetricFamily("syncws_handshakes_refused", "Websocket handshakes refused, by reason.", labels=["reason"])
    for reason, count in stats["handshakes_refused"].items():
        refused.add_metric([reason], count)
    yield refused

    requests = CounterMetricFamily("syncws_requests", "Requests made to peers (doRequest), by outcome.", labels=["handler", "outcome"])
    pending = GaugeMetricFamily("syncws_requests_pending", "Requests waiting for a reply now.", labels=["handler"])
    duration = HistogramMetricFamily("syncws_request_duration_seconds", "How long requests took, whatever their outcome.", labels=["handler"])
    for name, figures in stats["requests"].items():
        for outcome, count in figures["outcomes"].items():
            requests.add_metric([name, outcome], count)
        pending.add_metric([name], figures["pending"])
        histogram = figures["duration"]
        buckets = [(_bound(bound), count) for bound, count in histogram["buckets"]]
        duration.add_metric([name], buckets, sum_value=histogram["sum"])
    yield from (requests, pending, duration)

    queues = stats["send_queues"]
    yield GaugeMetricFamily("syncws_send_queue_bytes", "Bytes waiting in the connections' send queues.", value=queues["bytes"])
    yield CounterMetricFamily("syncws_send_queue_full_closes", "Connections closed because their send queue was full.", value=queues["closed_full"])
    workers = stats["workers"]
    threads = GaugeMetricFamily("syncws_worker_threads", "Threads that run handlers and commands, busy or idle.", labels=["state"])
    threads.add_metric(["busy"], workers["busy"])
    threads.add_metric(["idle"], workers["idle"])
    yield threads
    cluster = stats["cluster"]
    if cluster is not None:
        yield GaugeMetricFamily("syncws_cluster_redis_up", "1 while this node reaches Redis, else 0.", value=1 if cluster["redis_up"] else 0)
        yield GaugeMetricFamily("syncws_cluster_nodes", "Nodes alive at this node's last heartbeat.", value=len(cluster["nodes"]))


def _bound(bound: Any) -> str:
    """A bucket's upper bound as Prometheus writes it ("+Inf" stays as it is)."""
    return bound if isinstance(bound, str) else repr(float(bound))


class StatsCollector:
    """A prometheus-client collector reading a server's ``stats()`` at each scrape."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """The metric families of this moment (the scraping thread)."""
        return metric_families(self._stats())


def metrics_route(stats: Stats) -> Callable[[Request], HttpResponse]:
    """The HTTP function of a metrics path: the text format of ``stats()`` at each GET."""
    registry = CollectorRegistry(auto_describe=False)  # the server's own: no process-wide state, no clash between servers
    registry.register(StatsCollector(stats))  # a collector is anything with collect()

    def metrics(request: Request) -> HttpResponse:
        return HttpResponse(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    return metrics

"""What the benchmark runs and reports: the implementations, workloads and figures, the table, the versions."""

from __future__ import annotations

import statistics
from typing import Any, Optional

IMPLS = ["raw", "syncws", "syncws_inline", "syncws_peer_asks", "syncws_deflate", "syncws_uncounted", "syncws_metrics", "syncws_reactor",
         "syncws_threads", "websockets", "tornado_seed", "tornado_seed_b64", "websocket_server"]
#: Implementations measured only when named with --only: the engines by name, for comparing them.
ON_REQUEST = ["syncws_reactor", "syncws_threads"]
WORKLOADS = ["echo", "bulk", "req_latency", "req_throughput", "large_reply", "fanout", "idle", "json_fanout", "json_req"]
ALIASES = {
    "latency": "req_latency",
    "throughput": "req_throughput",
    "large": "large_reply",
    "fan-out": "fanout",
    "fan_out": "fanout",
    "request_latency": "req_latency",
    "request_throughput": "req_throughput",
    "bulk_up": "bulk",
    "bulk_down": "bulk",
}

# The cluster group (benchmarks/cluster.py, ``--cluster``): its own workloads, each measured on
# the rows listed here, in this order. ``raw`` and ``syncws`` are the single-process references
# measured in the same run.
CLUSTER_IMPLS = ["redis", "same_node", "cross_node", "no_server", "three_nodes"]
CLUSTER_WORKLOADS = ["redis_rtt", "cluster_latency", "cluster_throughput", "cluster_large", "cluster_fanout"]
CLUSTER_ROWS = {
    "redis_rtt": ["redis"],
    "cluster_latency": ["raw", "syncws", "same_node", "cross_node", "no_server"],
    "cluster_throughput": ["raw", "syncws", "same_node", "cross_node", "no_server"],
    "cluster_large": ["raw", "syncws", "same_node", "cross_node", "no_server"],
    "cluster_fanout": ["raw", "syncws", "three_nodes"],
}

# (key, label, unit, better) -- better is "lower" or "higher"
FIGURES = {
    "echo": [("p50_us", "p50", "us", "lower"), ("p99_us", "p99", "us", "lower")],
    "bulk": [("up_MBps", "up", "MB/s", "higher"), ("down_MBps", "down", "MB/s", "higher")],
    "req_latency": [("p50_us", "p50", "us", "lower"), ("p99_us", "p99", "us", "lower")],
    "req_throughput": [("rps", "throughput", "req/s", "higher")],
    "large_reply": [
        ("MBps", "speed", "MB/s", "higher"),
        ("peak_MiB", "server peak RSS", "MiB", "lower"),
        ("peak_over_payload", "RSS growth / payload", "x", "lower"),
    ],
    "fanout": [("p50_ms", "last client, p50", "ms", "lower")],
    "idle": [("KiB_per_conn", "RSS per conn", "KiB", "lower"), ("threads_per_conn", "threads per conn", "", "lower")],
    "json_fanout": [
        ("p50_ms", "last client, p50", "ms", "lower"),
        ("bytes_per_msg", "wire bytes per client", "B", "lower"),
        ("json_bytes", "JSON text", "B", "lower"),
        ("KiB_per_conn", "server RSS per conn", "KiB", "lower"),
    ],
    "json_req": [("p50_us", "p50", "us", "lower"), ("bytes_per_req", "wire bytes per request", "B", "lower")],
    "redis_rtt": [
        ("ping_us", "PING p50", "us", "lower"),
        ("lookup_us", "connections() p50", "us", "lower"),
        ("lookup_fan_us", "connections() p50, fan-out clients open", "us", "lower"),
    ],
    "cluster_latency": [("p50_us", "p50", "us", "lower"), ("p99_us", "p99", "us", "lower")],
    "cluster_throughput": [("rps", "throughput", "req/s", "higher")],
    "cluster_large": [("MBps", "speed", "MB/s", "higher")],
    "cluster_fanout": [("p50_ms", "last client, p50", "ms", "lower")],
}
# where the workload is impossible or not meant to run
NA = {("websocket_server", "bulk"): "n/a: websocket-server 0.6.4 has no binary frames"}
# The JSON workloads compare syncws with and without permessage-deflate; the other stacks have no peer for them.
JSON_WORKLOADS = {"json_fanout", "json_req"}
ONLY_FOR = {
    "raw": set(WORKLOADS) - JSON_WORKLOADS,
    "websockets": set(WORKLOADS) - JSON_WORKLOADS,
    "tornado_seed": set(WORKLOADS) - JSON_WORKLOADS,
    "websocket_server": set(WORKLOADS) - JSON_WORKLOADS,
    "tornado_seed_b64": {"large_reply"},
    "syncws_inline": {"req_latency", "req_throughput"},
    "syncws_peer_asks": {"req_latency", "req_throughput"},
    "syncws_metrics": {"req_latency", "req_throughput"},
    "syncws_uncounted": {"req_latency", "req_throughput"},
    "syncws_reactor": set(WORKLOADS) - JSON_WORKLOADS,
    "syncws_threads": set(WORKLOADS) - JSON_WORKLOADS,
    "syncws_deflate": {"req_latency", "fanout", "idle"} | JSON_WORKLOADS,
}
NOTES = {
    **{("syncws_deflate", wl): "permessage-deflate agreed" for wl in ("req_latency", "fanout", "idle", "json_fanout", "json_req")},
    ("websocket_server", "large_reply"): "base64 text",
    ("tornado_seed_b64", "large_reply"): "base64 text",
    ("tornado_seed", "large_reply"): "binary frame",
    ("syncws_inline", "req_latency"): "peer command inline",
    ("syncws_inline", "req_throughput"): "peer command inline",
    ("syncws_peer_asks", "req_latency"): "peer asks the server",
    ("syncws_peer_asks", "req_throughput"): "peer asks the server",
    **{("syncws_metrics", wl): "/metrics served, scraped every second" for wl in ("req_latency", "req_throughput")},
    **{("syncws_uncounted", wl): "counting off" for wl in ("req_latency", "req_throughput")},
    **{("syncws_reactor", wl): "engine=\"reactor\"" for wl in set(WORKLOADS) - JSON_WORKLOADS},
    **{("syncws_threads", wl): "engine=\"threads\"" for wl in set(WORKLOADS) - JSON_WORKLOADS},
    ("redis", "redis_rtt"): "redis-py from the benchmark process",
    ("syncws", "cluster_latency"): "one process, no cluster",
    ("syncws", "cluster_throughput"): "one process, no cluster",
    ("syncws", "cluster_large"): "one process, no cluster",
    ("same_node", "cluster_latency"): "caller on the peer's node A",
    ("same_node", "cluster_throughput"): "caller on the peer's node A",
    ("same_node", "cluster_large"): "caller on the peer's node A",
    ("cross_node", "cluster_latency"): "caller on node B, peer on node A",
    ("cross_node", "cluster_throughput"): "caller on node B, peer on node A",
    ("cross_node", "cluster_large"): "caller on node B, peer on node A",
    ("no_server", "cluster_latency"): "caller in a process without a server",
    ("no_server", "cluster_throughput"): "caller in a process without a server",
    ("no_server", "cluster_large"): "caller in a process without a server",
    ("raw", "cluster_fanout"): "one server",
    ("syncws", "cluster_fanout"): "one server, no cluster",
    ("three_nodes", "cluster_fanout"): "RedisCluster.send, clients spread over 3 nodes",
}


def listed(impl: str, wl: str) -> bool:
    """Whether the table has a row for ``impl`` on workload ``wl`` (measured or n/a)."""
    if wl in CLUSTER_ROWS:
        return impl in CLUSTER_ROWS[wl]
    return impl not in CLUSTER_IMPLS and wl in ONLY_FOR.get(impl, {wl})


def runs(impl: str, wl: str) -> bool:
    """Whether workload ``wl`` is measured on ``impl`` (not n/a, not meant for another)."""
    return listed(impl, wl) and (impl, wl) not in NA


def fmt(v: Optional[float]) -> str:
    """A figure with three significant digits or so, thousands separated."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def summarize(results: dict[tuple[str, str], dict[str, Any]], impls: list[str], workloads: list[str]) -> list[dict[str, Any]]:
    """One row per workload, figure and implementation: median, min, max, ratio to raw, or why there is none."""
    rows = []
    for wl in workloads:
        for key, label, unit, better in FIGURES[wl]:
            raw_med = None
            raw_vals = results.get(("raw", wl), {}).get("values", {}).get(key)
            if raw_vals:
                raw_med = statistics.median(raw_vals)
            for impl in impls:
                if not listed(impl, wl):
                    continue
                res = results.get((impl, wl), {})
                row = {"workload": wl, "figure": key, "label": label, "unit": unit, "better": better, "impl": impl, "note": NOTES.get((impl, wl), "")}
                vals = res.get("values", {}).get(key)
                if (impl, wl) in NA or res.get("na"):
                    row.update(status="n/a", note=NA.get((impl, wl)) or res["na"])
                elif vals:
                    med = statistics.median(vals)
                    row.update(
                        status="ok", values=vals, median=med, min=min(vals), max=max(vals), ratio_to_raw=(med / raw_med) if raw_med else None, runs=len(vals)
                    )
                    if res.get("errors"):
                        row["errors"] = res["errors"]
                else:
                    row.update(status="error", errors=res.get("errors", ["not run"]))
                rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], extra: Optional[list[str]] = None) -> str:
    """The report: a heading, the versions, the table of ``rows`` and the ``extra`` lines (the cluster's targets)."""
    out = ["# syncws benchmark (%s mode, %d repetitions)" % (meta["mode"], meta["reps"]), ""]
    out.append(
        "Python %s on %s, %d CPUs; %s"
        % (meta["python"], meta["platform"], meta["cpus"], ", ".join("{} {}".format(*kv) for kv in meta["versions"].items()))
    )
    out.append("")
    out.append("| workload | figure | implementation | median | min | max | x raw | note |")
    out.append("|---|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        unit = (" " + r["unit"]) if r["unit"] else ""
        fig = "{}{}, {}".format(r["label"], unit, "lower is better" if r["better"] == "lower" else "higher is better")
        if r["status"] == "ok":
            ratio = "{:.2f}".format(r["ratio_to_raw"]) if r.get("ratio_to_raw") is not None else "-"
            note = r["note"]
            if r.get("errors"):
                note = (note + "; " if note else "") + "%d failed run(s)" % len(r["errors"])
            out.append(
                "| {} | {} | {} | {} | {} | {} | {} | {} |".format(r["workload"], fig, r["impl"], fmt(r["median"]), fmt(r["min"]), fmt(r["max"]), ratio, note)
            )
        elif r["status"] == "n/a":
            out.append("| {} | {} | {} | n/a | n/a | n/a | n/a | {} |".format(r["workload"], fig, r["impl"], r["note"]))
        else:
            err = str(r["errors"][-1]).replace("|", "/").replace("\n", " ")[:160]
            out.append("| {} | {} | {} | error | | | | {} |".format(r["workload"], fig, r["impl"], err))
    out.append("")
    out.append("x raw = median / raw median. Wall time {:.1f} s.".format(meta["wall_s"]))
    if extra:
        out.append("")
        out.extend(extra)
    return "\n".join(out)


def versions() -> dict[str, str]:
    """The versions of syncws and of the stacks it is measured against."""
    out = {}
    for mod, name in (("syncws", "syncws"), ("websockets", "websockets"), ("tornado", "tornado"), ("websocket", "websocket-client"), ("numpy", "numpy")):
        try:
            m = __import__(mod)
            out[name] = getattr(m, "__version__", None) or getattr(m, "version", "?")
        except Exception:
            out[name] = "missing"
    try:
        from importlib.metadata import version

        out["websocket-server"] = version("websocket-server")
    except Exception:
        out["websocket-server"] = "missing"
    return out

"""The table ``syncws stats`` prints: pure functions of a ``server.stats()`` dict, every line within :data:`WIDTH` columns.

No I/O, no threads: :func:`format_stats` turns one snapshot (and, for rates,
the one before it) into lines; the figures' formats keep each column narrow.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Callable, Optional

__all__ = ["check_stats", "format_stats", "human_bytes", "human_count", "human_uptime", "WIDTH"]

#: The columns every line of the table fits in.
WIDTH = 80


#: The keys every stats dict has, and the type of each value (the cluster's may also be None).
_SHAPE: dict[str, type] = {
    "server": dict,
    "endpoints": dict,
    "handshakes_refused": dict,
    "requests": dict,
    "send_queues": dict,
    "workers": dict,
}


def check_stats(data: Any) -> dict[str, Any]:
    """``data`` when it has the shape of ``server.stats()``; ValueError naming what is missing otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    missing = [key for key, kind in _SHAPE.items() if not isinstance(data.get(key), kind)]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    if not isinstance(data.get("server", {}).get("uptime"), (int, float)):
        raise ValueError("no server uptime")
    return data


# --------------------------------------------------------------------------- figures


def human_bytes(n: float) -> str:
    """A number of bytes in at most 7 characters: "999 B", "1.5 KiB", "120 MiB"."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    value, unit = float(n), 0
    while value >= 999.5 and unit < len(units) - 1:
        value, unit = value / 1024, unit + 1
    if unit == 0:
        return f"{int(n)} B"
    return f"{value:.1f} {units[unit]}" if value < 9.95 else f"{value:.0f} {units[unit]}"


def human_count(n: float, width: int = 6) -> str:
    """A count exactly when it fits ``width`` characters, else in three digits at most: "1.2M", "340k"."""
    text = str(int(n))
    if len(text) <= width:
        return text
    value = float(n)
    for suffix in ("k", "M", "G", "T", "P", "E"):
        value /= 1000
        if value >= 999.5 and suffix != "E":
            continue  # three digits at most: 1.2M, not 1235k
        text = f"{value:.1f}{suffix}" if value < 9.95 else f"{value:.0f}{suffix}"
        if len(text) <= width:
            return text
    return text


def human_uptime(seconds: float) -> str:
    """A duration in two units at most: "42s", "4m05s", "1h02m", "3d04h"."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _millis(seconds: Optional[float]) -> str:
    """A duration in seconds as milliseconds in at most 6 characters; "-" for none."""
    if not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return "-"
    ms = seconds * 1000
    if ms < 9.995:
        return f"{ms:.2f}"
    if ms < 99.95:
        return f"{ms:.1f}"
    return human_count(round(ms), 6)


def _rate(now: float, before: Optional[float], elapsed: Optional[float]) -> str:
    """Events per second between two samples, in at most 6 characters; "-" without a previous sample."""
    if before is None or not elapsed or elapsed <= 0 or now < before:
        return "-"
    per_second = (now - before) / elapsed
    if per_second < 9.95:
        return f"{per_second:.1f}"
    return human_count(round(per_second), 6)


# --------------------------------------------------------------------------- the table

#: A column: its header, its width, and how a row's figures give its text.
Column = tuple[str, int, Callable[[dict[str, Any]], str]]


def _table(title: str, names: list[str], rows: list[dict[str, Any]], columns: list[Column], width: int) -> list[str]:
    """A header and one line per row: ``title`` over the names (left, as wide as room allows), then the columns (right)."""
    rest = sum(w + 1 for _, w, _ in columns)
    name_width = max(len(title), min(max((len(n) for n in names), default=0), width - rest))

    def line(name: str, cells: list[str]) -> str:
        if len(name) > name_width:
            name = name[: max(1, name_width - 2)] + ".."
        return (f"{name:<{name_width}}" + "".join(f" {cell:>{w}}" for cell, (_, w, _) in zip(cells, columns))).rstrip()

    lines = [line(title, [header for header, _, _ in columns])]
    for name, row in zip(names, rows):
        lines.append(line(name, [cell(row) for _, _, cell in columns]))
    return lines


def _header(stats: dict[str, Any], width: int) -> list[str]:
    """The first line (or lines, when they do not fit): the server's URL, uptime, connections of its limit, its cluster."""
    server = stats["server"]
    limit = server.get("max_connections")
    connections = f"conns {server.get('connections', 0)}" + (f"/{limit}" if limit else "")
    parts = [str(server.get("url", "?")), f"up {human_uptime(server['uptime'])}", connections]
    cluster = stats.get("cluster")
    if isinstance(cluster, dict):
        nodes = cluster.get("nodes") or []
        state = "redis up" if cluster.get("redis_up") else "REDIS DOWN"
        name = _clip(str(cluster.get("name", "?")), 24)  # the state after it stays in sight
        parts.append(f"cluster {name}: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {state}")
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "  " + part
        else:
            lines.append("  " + part)
    return [_clip(line, width) for line in lines]


def _clip(line: str, width: int) -> str:
    """``line`` cut to ``width`` columns (a URL too long for any terminal)."""
    return line if len(line) <= width else line[: width - 2] + ".."


def _endpoint_lines(stats: dict[str, Any], previous: Optional[dict[str, Any]], elapsed: Optional[float], rates: bool, width: int) -> list[str]:
    endpoints: dict[str, dict[str, Any]] = stats["endpoints"]
    if not endpoints:
        return ["endpoints: none has had a connection yet"]
    before: dict[str, Any] = previous["endpoints"] if previous is not None else {}

    def messages(figures: dict[str, Any]) -> float:
        return float(figures.get("messages_in", 0) + figures.get("messages_out", 0))

    columns: list[Column] = [
        ("open", 5, lambda f: human_count(f.get("connections", 0), 5)),
        ("opened", 7, lambda f: human_count(f.get("opened", 0), 7)),
        ("closed", 7, lambda f: human_count(sum(f.get("closed", {}).values()), 7)),
        ("msgs in", 9, lambda f: human_count(f.get("messages_in", 0), 9)),
        ("msgs out", 9, lambda f: human_count(f.get("messages_out", 0), 9)),
        ("bytes in", 8, lambda f: human_bytes(f.get("bytes_in", 0))),
        ("bytes out", 9, lambda f: human_bytes(f.get("bytes_out", 0))),
    ]
    if rates:
        columns.append(("msg/s", 6, lambda f: _rate(messages(f), messages(before.get(f["_label"], {})) if previous is not None else None, elapsed)))
    names = list(endpoints)
    rows = [dict(figures, _label=label) for label, figures in endpoints.items()]
    return _table("endpoint", names, rows, columns, width)


def _request_lines(stats: dict[str, Any], previous: Optional[dict[str, Any]], elapsed: Optional[float], rates: bool, width: int) -> list[str]:
    handlers: dict[str, dict[str, Any]] = stats["requests"]
    if not handlers:
        return ["request handlers: none"]
    before: dict[str, Any] = previous["requests"] if previous is not None else {}

    def outcome(name: str, w: int) -> Callable[[dict[str, Any]], str]:
        return lambda f: human_count(f.get("outcomes", {}).get(name, 0), w)

    columns: list[Column] = [
        ("reqs", 7, lambda f: human_count(f.get("requests", 0), 7)),
        ("ok", 7, outcome("ok", 7)),
        ("err", 5, outcome("error", 5)),
        ("tmout", 5, outcome("timeout", 5)),
        ("disc", 5, outcome("disconnected", 5)),
        ("canc", 5, outcome("cancelled", 5)),
        ("pend", 5, lambda f: human_count(f.get("pending", 0), 5)),
        ("p50ms", 6, lambda f: _millis(f.get("latency", {}).get("p50"))),
        ("p99ms", 6, lambda f: _millis(f.get("latency", {}).get("p99"))),
    ]
    if rates:
        columns.append(
            (
                "req/s",
                6,
                lambda f: _rate(f.get("requests", 0), before.get(f["_name"], {}).get("requests", 0) if previous is not None else None, elapsed),
            )
        )
    names = list(handlers)
    rows = [dict(figures, _name=name) for name, figures in handlers.items()]
    return _table("handler", names, rows, columns, width)


def _wrapped(text: str, width: int) -> list[str]:
    """``text`` wrapped to ``width``, its continuation lines indented."""
    return textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False) or [""]


def format_stats(stats: dict[str, Any], previous: Optional[dict[str, Any]] = None, *, rates: bool = False, width: int = WIDTH) -> list[str]:
    """The lines that show ``stats`` (a ``server.stats()`` dict), none longer than ``width``.

    A header line (the server's URL, uptime, connections of the limit, the
    cluster's state if any), a row per endpoint (connections open, opened,
    closed, messages and bytes in and out), a row per request handler
    (requests by outcome, pending, p50 and p99 in milliseconds of the last
    minute), then the refused handshakes (the reasons that are not zero),
    the send queues and the worker threads.

    ``rates`` adds a column of messages per second to the endpoints and of
    requests per second to the handlers, between ``previous`` (the sample
    before, or None: "-") and ``stats``, over the server's uptime between the two.
    """
    stats = check_stats(stats)
    if previous is not None:
        try:
            check_stats(previous)
        except ValueError:
            previous = None
    elapsed = stats["server"]["uptime"] - previous["server"]["uptime"] if previous is not None else None
    if elapsed is not None and elapsed <= 0:  # the server restarted: no rate from before
        previous, elapsed = None, None
    lines = _header(stats, width)
    lines.append("")
    lines += _endpoint_lines(stats, previous, elapsed, rates, width)
    lines.append("")
    lines += _request_lines(stats, previous, elapsed, rates, width)
    lines.append("")
    refused = {reason: count for reason, count in stats["handshakes_refused"].items() if count}
    lines += _wrapped("refused handshakes: " + (", ".join(f"{reason} {count}" for reason, count in refused.items()) or "none"), width)
    queues = stats["send_queues"]
    lines += _wrapped(
        f"send queues: {human_bytes(queues.get('bytes', 0))} waiting; "
        f"{queues.get('closed_full', 0)} connection{'s' if queues.get('closed_full', 0) != 1 else ''} closed with a full queue",
        width,
    )
    workers = stats["workers"]
    lines += _wrapped(f"workers: {workers.get('busy', 0)} busy, {workers.get('idle', 0)} idle", width)
    return lines

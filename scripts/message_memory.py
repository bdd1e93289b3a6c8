#!/usr/bin/env python3
"""What one large message costs a server in memory: its peak RSS while receiving it, and its RSS after.

Usage::

    python scripts/message_memory.py [--size-mib 48] [--json-mib 60] [--connections 10] [--only WORD ...] [--repeat N] [--json PATH]

The script starts a real server in a child process (this same file run with
``--serve``): a ``WebSocketServer`` with a ``/sink`` endpoint, whose handler
answers every message with its kind and length and keeps nothing, and a
``/wsData`` endpoint with a ``RequestHandler`` whose ``size`` command answers
a request with the length of its ``args``. The script is the client, with
``syncws.connect`` (permessage-deflate offered). For each case it asks the
server to reset its peak (``/proc/PID/clear_refs``, 5: ``VmHWM`` starts
again at ``VmRSS``), sends, waits for the answer, waits a moment more, and
reads the server's ``VmHWM`` and ``VmRSS``:

* ``binary, compressed``: ``--size-mib`` MiB of zeros sent with ``compress=True``
  (some 50 KiB on the wire): the inflating path;
* ``binary, compressed, text-like``: the same size of repeated JSON-ish text
  bytes, compressed (a few hundred KiB on the wire);
* ``text, compressed``: that many ASCII characters, compressed;
* ``text``, ``binary``: the same, uncompressed; ``text, not ASCII``: as
  much UTF-8 of Latin-1 accented words, uncompressed;
* ``JSON request``: a ``--json-mib`` MiB request ``{"cmd": "size", "args":
  ["xxx..."]}`` to ``/wsData``, uncompressed, answered by the ``size`` command;
* ``JSON parsed, many strings``: as large a request whose ``args`` are strings
  of 1,000 characters (each its own block in glibc's heap), sent to
  ``/parse``, whose handler parses it on the connection's thread and keeps
  nothing: what trimming the heaps after a large message gives;
* ``N x binary, compressed``: ``--connections`` connections each sending the
  compressed binary message at once.

Figures, against the server's RSS before the message: "peak" (VmHWM), also
as a multiple of the message's size (of all of them, for the last case);
"after", once the answer came and a moment more, the connection still open;
"closed", once the connection closed; "trimmed", after the server then ran
``malloc_trim(0)`` itself (glibc only), for information: what glibc still
held for reuse. Linux only (``/proc``); a shared machine lends and takes
back memory, so the figures vary by a few MiB: compare runs on one machine.

The server also answers ``holders``: where its threads' frames, or lists
and dicts, hold a str or bytes of 1 MiB or more (what keeps a message alive).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import syncws

MIB = 1 << 20


# ---------------------------------------------------------------------- the server (child process)


def proc_status(pid: str = "self") -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    figures = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                figures[key] = int(value.split()[0]) * 1024
    return figures


class Sink(syncws.BaseWebSocketHandler):
    """Answers each message with its kind and length, and keeps nothing of it (connection thread)."""

    def on_message(self, message: syncws.Message) -> None:
        self.write_message(f"{type(message).__name__} {len(message)}")


class Parse(syncws.BaseWebSocketHandler):
    """Parses each text message as JSON on the connection's thread, answers with its number of keys, and keeps nothing."""

    def on_message(self, message: syncws.Message) -> None:
        self.write_message(f"{type(message).__name__} {len(json.loads(message)) if isinstance(message, str) and message else 0}")


def holders(least: int = 1 << 20) -> list[str]:
    """Where each thread's frames hold a large str or bytes, or a dict or list with one in it (what keeps a message alive)."""
    found = []

    def large(value: object, depth: int = 0) -> bool:
        if isinstance(value, (str, bytes, bytearray)):
            return len(value) >= least
        if depth < 3 and isinstance(value, dict):
            return any(large(v, depth + 1) for v in value.values())
        if depth < 3 and isinstance(value, (list, tuple)):
            return any(large(v, depth + 1) for v in value[:10])
        return False

    for obj in gc.get_objects():
        values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        for value in values:
            if isinstance(value, (bytes, str, bytearray)) and len(value) >= least:
                what = str(obj)[:100] if isinstance(obj, tuple) else list(obj)[:6]
                found.append(f"{type(obj).__name__} {what}; held by {[type(ref).__name__ for ref in gc.get_referrers(obj)]}")
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        while frame is not None:
            for name, value in frame.f_locals.items():
                if large(value):
                    found.append(f"{names.get(ident)}: {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}: {name}")
            frame = frame.f_back
    return found


def serve(trim: bool) -> int:
    """The server: prints its port, then obeys ``reset``, ``stat``, ``trim``, ``holders`` and ``quit`` on stdin."""
    try:
        from syncws.engine import memory
    except ImportError:  # a syncws from before the trims (to compare with)
        pass
    else:
        memory.trimmer.enabled = trim
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()
    handler = syncws.RequestHandler("wsData", server)

    @handler.command("size")
    def size(request: dict[str, Any], conn: object) -> int:
        return sum(len(arg) for arg in request.get("args", ()))

    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    server.add_handler("/sink", Sink)
    server.add_handler("/parse", Parse)
    print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "reset":
            gc.collect()
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")  # VmHWM starts again at VmRSS
            print(json.dumps(proc_status()), flush=True)
        elif command == "stat":
            gc.collect()
            print(json.dumps(proc_status()), flush=True)
        elif command == "trim":
            ctypes.CDLL(None).malloc_trim(0)
            print(json.dumps(proc_status()), flush=True)
        elif command == "holders":
            print(json.dumps(holders()), flush=True)
        elif command == "quit":
            break
    server.stop()
    return 0


# ---------------------------------------------------------------------- the client (this process)


class Server:
    """The child process, and its line commands."""

    def __init__(self, trim: bool = True) -> None:
        role = "--serve" if trim else "--serve-no-trim"
        self.proc = subprocess.Popen([sys.executable, __file__, role], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = json.loads(self.proc.stdout.readline())["port"]

    def ask(self, command: str) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        figures: dict[str, int] = json.loads(self.proc.stdout.readline())
        return figures

    def stop(self) -> None:
        try:
            self.ask("quit")
        except (OSError, ValueError):
            pass
        self.proc.wait(10)


class Sender:
    """One connection that sends ``message`` and waits for the server's answer, then closes."""

    def __init__(self, url: str, message: syncws.Outgoing, compress: Optional[bool], expect: str, small: syncws.Outgoing) -> None:
        self.conn = syncws.connect(url, compression="deflate")
        self.message, self.compress, self.expect, self.small = message, compress, expect, small

    def send(self, message: Optional[syncws.Outgoing] = None) -> None:
        """Send the large message (or ``message``) and wait for the answer."""
        self.conn.send(self.message if message is None else message, compress=self.compress)
        answer = self.conn.recv(timeout=120)
        if answer is None or not str(answer).startswith(self.expect):
            raise RuntimeError(f"unexpected answer {str(answer)[:200]!r}")

    def send_small(self) -> None:
        """Send the small message that follows: whatever held on to the large one until the next has let go now."""
        self.send(self.small)

    def close(self) -> None:
        self.conn.close()
        self.conn.wait_closed(10)


def measure(server: Server, size: int, senders: list[Sender], settle: float) -> dict[str, float]:
    """Reset the server's peak, send on every connection at once and wait for the answers; the figures, in MiB and multiples of ``size``.

    ``after`` is the RSS with the connections still open, ``next`` once a
    small message followed on each, ``closed`` once they closed (and their
    threads ended), ``trimmed`` once the server then ran ``malloc_trim``
    itself; all against the RSS before.
    """
    before = server.ask("reset")["VmRSS"]
    threads = [threading.Thread(target=sender.send) for sender in senders]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    time.sleep(settle)
    after = server.ask("stat")
    for sender in senders:
        sender.send_small()
    time.sleep(settle)
    following = server.ask("stat")
    for sender in senders:
        sender.close()
    time.sleep(settle)
    closed = server.ask("stat")
    trimmed = server.ask("trim")
    peak = closed["VmHWM"] - before
    return {
        "size_mib": size / MIB,
        "rss_before_mib": before / MIB,
        "peak_mib": peak / MIB,
        "peak_x": peak / size,
        "after_mib": (after["VmRSS"] - before) / MIB,
        "next_mib": (following["VmRSS"] - before) / MIB,
        "closed_mib": (closed["VmRSS"] - before) / MIB,
        "trimmed_mib": (trimmed["VmRSS"] - before) / MIB,
        "seconds": elapsed,
    }


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    size, json_size = int(args.size_mib * MIB), int(args.json_mib * MIB)
    server = Server(trim=not args.no_trim)
    base = f"ws://127.0.0.1:{server.port}"
    results: dict[str, dict[str, float]] = {}
    line = b'{"time": 12.5, "values": [1, 2, 3, 4], "name": "frame"}\n'
    request = '{"cmd": "size", "args": ["' + "x" * (json_size - 40) + '"], "callId": 1}'
    # Many strings of 1,000 characters: each its own block of glibc's heap, not one mapping.
    strings = json.dumps({"cmd": "size", "args": ["y" * 1000] * (json_size // 1004), "callId": 1})
    cases: list[tuple[str, str, syncws.Outgoing, Optional[bool], str, int]] = [
        ("binary, compressed", "/sink", bytes(size), True, "bytes", 1),
        ("binary, compressed, text-like", "/sink", (line * (size // len(line) + 1))[:size], True, "bytes", 1),
        ("text, compressed", "/sink", "x" * size, True, "str", 1),
        ("text", "/sink", "x" * size, False, "str", 1),
        ("text, not ASCII", "/sink", "\u00e9t\u00e9 " * (size // 7), False, "str", 1),
        ("binary", "/sink", bytes(size), False, "bytes", 1),
        ("JSON request", "/wsData", request, False, "{", 1),
        ("JSON parsed, many strings", "/parse", strings, False, "str", 1),
        (f"{args.connections} x binary, compressed", "/sink", bytes(size), True, "bytes", args.connections),
    ]
    del request, strings
    if args.only:
        cases = [case for case in cases if any(word in case[0] for word in args.only)]
    try:
        while cases:
            name, path, message, compress, expect, count = cases.pop(0)
            length = len(message.encode() if isinstance(message, str) else message)  # type: ignore[union-attr]
            for run in range(args.repeat):
                label = name if run == 0 else f"{name} (again)"
                small: syncws.Outgoing = '{"cmd": "size", "callId": 2}' if path == "/wsData" else (b"" if expect == "bytes" else "")
                senders = [Sender(base + path, message, compress, expect, small) for _ in range(count)]
                results[label] = measure(server, length * count, senders, args.settle)
                report(label, results[label])
                del senders
            del message
    finally:
        server.stop()
    return results


def report(name: str, figures: dict[str, float]) -> None:
    print(
        f"{name:32} {figures['size_mib']:7.1f} MiB: peak +{figures['peak_mib']:7.1f} MiB ({figures['peak_x']:.2f}x), "
        f"after {figures['after_mib']:+6.1f}, next {figures['next_mib']:+6.1f}, closed {figures['closed_mib']:+6.1f}, "
        f"trimmed {figures['trimmed_mib']:+6.1f} MiB (RSS before {figures['rss_before_mib']:.1f} MiB), {figures['seconds']:.2f} s",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=48, help="the size of each message (default 48)")
    parser.add_argument("--json-mib", type=float, default=60, help="the size of the JSON request (default 60)")
    parser.add_argument("--connections", type=int, default=10, help="connections sending at once in the last case (default 10)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait after the answer before reading the RSS (default 1)")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="only the cases whose name contains one of these words (e.g. JSON)")
    parser.add_argument("--repeat", type=int, default=1, help="run each case this many times in a row (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH")
    parser.add_argument("--no-trim", action="store_true", help="the server does not trim glibc's heaps after large messages (to compare)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # run as the server process
    parser.add_argument("--serve-no-trim", action="store_true", help=argparse.SUPPRESS)  # the same, without trims
    args = parser.parse_args()
    if args.serve or args.serve_no_trim:
        return serve(trim=args.serve)
    print(f"syncws {syncws.__file__}, Python {sys.version.split()[0]}", flush=True)
    results = run(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Helpers shared by the benchmark's driver, its peer processes and every implementation.

- the raw TCP framing of the ``raw`` floor (header: kind, callId, length);
- the peer processes' reporting: ``/proc`` figures and JSON lines on stdout;
- a Tornado application on its own thread (the ``tornado_seed`` design);
- the request pattern's call table for the implementations that have none
  (``Pending``, ``RequesterBase``) and the peer's answers (``handle_cmd``);
- websocket-client as client and as peer (``tornado_seed`` and
  ``websocket_server`` are measured against it, as the seed's peers used it);
- ``pct``, ``run_workers`` and ``measure`` (a request workload through
  ``doRequest``: ``peers.py reqserver`` and the cluster group's callers).

Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Optional

HOST = "127.0.0.1"
MiB = 1 << 20


class BenchError(RuntimeError):
    """A run that could not produce its figures."""


def ws_url(port: int, path: str) -> str:
    """The ws:// URL of ``path`` on a loopback port."""
    return "ws://%s:%d%s" % (HOST, port, path)


def json_message(seed: int, rows: int = 12) -> dict[str, Any]:
    """A dashboard update as a JSON object (about 1.5 KB as text for 12 rows), different for every ``seed``.

    Its keys repeat from message to message and its numbers do not, as in a
    real feed: a compressor with context takeover gains from the first, not
    from sending one message over and over.
    """
    import random

    rnd = random.Random(seed)
    return {
        "cmd": "update",
        "seq": seed,
        "time": 1_700_000_000 + seed * 0.25,
        "sensors": [
            {"id": f"sensor-{i:03d}", "status": rnd.choice(["ok", "ok", "ok", "warn"]), "temperature": round(rnd.uniform(18, 30), 2),
             "pressure": round(rnd.uniform(990, 1030), 1), "counts": [rnd.randrange(1000) for _ in range(4)]}
            for i in range(rows)
        ],
    }


def tcp_bytes(sock: socket.socket) -> int:
    """Bytes this TCP socket sent (acknowledged by the peer) and received, from the kernel's TCP_INFO (Linux); 0 elsewhere.

    What is on the wire, websocket framing included, whatever the library does above the socket.
    """
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (AttributeError, OSError):
        return 0
    if len(info) < 136:
        return 0
    acked, received = struct.unpack_from("=QQ", info, 120)  # tcpi_bytes_acked, tcpi_bytes_received (Linux 4.1+)
    return int(acked + received)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; NaN when empty."""
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# --------------------------------------------------------------------------
# raw TCP framing: header (kind, callId, length), kind 0 = text, 1 = binary
# --------------------------------------------------------------------------
RAW_HDR = struct.Struct("!BQQ")
RAW_TEXT, RAW_BIN = 0, 1


def raw_send(sock: socket.socket, kind: int, payload: Any, call_id: int = 0) -> None:
    """Send one length-prefixed message."""
    hdr = RAW_HDR.pack(kind, call_id, len(payload))
    if len(payload) <= 65536:
        sock.sendall(hdr + payload)
    else:  # avoid copying large payloads
        sock.sendall(hdr)
        sock.sendall(payload)


def raw_recv(rfile: Any) -> Optional[tuple[int, int, bytearray]]:
    """Read one message from a buffered reader: (kind, call_id, payload), or None on EOF."""
    hdr = rfile.read(RAW_HDR.size)
    if not hdr or len(hdr) < RAW_HDR.size:
        return None
    kind, call_id, n = RAW_HDR.unpack(hdr)
    buf = bytearray(n)
    if n:
        got = rfile.readinto(buf)
        if got != n:
            return None
    return kind, call_id, buf


def raw_connect(port: int, path: str) -> socket.socket:
    """A raw connection to the floor's server; its first message names the endpoint."""
    s = socket.create_connection((HOST, port), timeout=10)
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw_send(s, RAW_TEXT, path.encode())
    return s


# --------------------------------------------------------------------------
# process helpers
# --------------------------------------------------------------------------
def proc_status(pid: str = "self") -> dict[str, int]:
    """VmRSS and VmHWM (kB) and Threads of a process, from /proc."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])  # kB
            elif k == "Threads":
                out[k] = int(v)
    return out


def emit(obj: dict[str, Any]) -> None:
    """Report to the driver: one JSON line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def raise_nofile() -> None:
    """Raise the soft limit of open files to the hard one (a thousand idle connections)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


_payload_cache: dict[int, bytes] = {}


def payload(n: int) -> bytes:
    """``n`` zero bytes, the last size asked for kept for the next message."""
    b = _payload_cache.get(n)
    if b is None:
        _payload_cache.clear()
        b = _payload_cache[n] = bytes(n)
    return b


def start_tornado(routes: list[Any]) -> tuple[int, Any]:
    """Run a Tornado application on its own thread with its own asyncio loop; returns (port, ioloop)."""
    import asyncio

    import tornado.httpserver
    import tornado.ioloop
    import tornado.netutil
    import tornado.web

    box: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        app = tornado.web.Application(routes, websocket_max_message_size=1 << 31)
        socks = tornado.netutil.bind_sockets(0, HOST, backlog=2048)
        srv = tornado.httpserver.HTTPServer(app, max_buffer_size=1 << 31)
        srv.add_sockets(socks)
        box["port"] = socks[0].getsockname()[1]
        box["ioloop"] = tornado.ioloop.IOLoop.current()
        stop = asyncio.Event()
        box["stop"] = stop
        ready.set()
        await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except Exception as e:  # pragma: no cover - surfaced via ready timeout
            box["error"] = repr(e)
            ready.set()

    threading.Thread(target=run, name="tornado-ioloop", daemon=True).start()
    if not ready.wait(15) or "error" in box:
        raise RuntimeError("tornado did not start: {}".format(box.get("error")))
    return box["port"], box["ioloop"]


class ServeBase:
    """The server side of echo, bulk, fan-out and idle (run by ``peers.py serve IMPL``)."""

    port = 0

    def count(self, path: str) -> int:
        """Open connections on ``path``."""
        raise NotImplementedError

    def broadcast(self, msg: str) -> None:
        """Send ``msg`` to every connection of /fanout."""
        raise NotImplementedError


# --------------------------------------------------------------------------
# the request pattern: the call table of the implementations that have none
# --------------------------------------------------------------------------
# syncws brings its own (RequestHandler), and is measured with it. raw,
# websockets and websocket_server have no request/reply layer, so the
# benchmark gives them this one, the same pattern as syncws's (a condition per
# call, the reader thread dispatching replies): what they are measured on is
# their transport, not a different table. tornado_seed keeps the seed's own
# design (a Semaphore per call, see tornado_design.py).
class Pending:
    """Per-call rendezvous: the worker waits on its own condition."""

    __slots__ = ("cond", "done", "reply")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.reply: Any = None
        self.done = False

    def set(self, reply: dict[str, Any]) -> None:
        """Hand the reply to the waiting worker."""
        with self.cond:
            self.reply = reply
            self.done = True
            self.cond.notify()

    def wait(self, timeout: float) -> Any:
        """The reply, or TimeoutError after ``timeout`` seconds."""
        with self.cond:
            if not self.done:
                self.cond.wait_for(lambda: self.done, timeout)
            if not self.done:
                raise TimeoutError("request timed out")
            return self.reply


def parse_reply(message: Any) -> dict[str, Any]:
    """A reply as the peers send it: JSON text, or a binary frame of a 4-byte
    header length, the JSON header, then the bytes (``data``, a memoryview)."""
    if isinstance(message, str):
        return json.loads(message)
    mv = memoryview(message)
    hlen = int.from_bytes(mv[:4], "big")
    reply = json.loads(bytes(mv[4:4 + hlen]))
    reply["data"] = mv[4 + hlen:]
    return reply


class RequesterBase:
    """The server side of the request workloads: ``url`` for the peer, ``doRequest`` for the workers."""

    b64 = False
    url = ""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_id = 0
        self.pending: dict[Any, Any] = {}
        self.connected = threading.Event()

    def _new_call(self) -> tuple[int, Pending]:
        with self.lock:
            self.next_id += 1
            cid = self.next_id
            p = self.pending[cid] = Pending()
        return cid, p

    def _deliver(self, reply: dict[str, Any]) -> None:
        """Wake the caller waiting for ``reply`` (run by the connection's reader)."""
        p = self.pending.pop(reply.get("callId"), None)
        if p is not None:
            p.set(reply)

    def _dispatch(self, message: Any) -> None:
        """A reply frame, text or binary, as the connection's reader got it."""
        self._deliver(parse_reply(message))

    def wait_connected(self, timeout: float) -> None:
        """Return once the peer is connected."""
        if not self.connected.wait(timeout):
            raise RuntimeError("peer did not connect")

    def finish(self, reply: dict[str, Any]) -> dict[str, Any]:
        """Decode a base64 result (the implementations without binary frames)."""
        if self.b64 and isinstance(reply.get("data"), str) and reply.get("b64"):
            reply["data"] = base64.b64decode(reply["data"])
        return reply

    def doRequest(self, msg: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        """Send ``msg`` to the peer and wait for its reply."""
        raise NotImplementedError


def handle_cmd(msg: dict[str, Any], b64: bool) -> tuple[dict[str, Any], Optional[bytes]]:
    """The peer's answer to {"cmd": "echo", "x": X} or {"cmd": "blob", "size": N}: (reply, bytes or None)."""
    cmd = msg.get("cmd")
    reply: dict[str, Any] = {"callId": msg.get("callId"), "status": 200}
    if cmd == "echo":
        reply["data"] = msg.get("x")
        return reply, None
    if cmd == "blob":
        data = bytes(int(msg["size"]))
        if b64:
            reply["data"] = base64.b64encode(data).decode("ascii")
            reply["b64"] = True
            return reply, None
        return reply, data
    reply["status"] = 400
    reply["error"] = f"unknown cmd {cmd!r}"
    return reply, None


def binary_reply(reply: dict[str, Any], data: bytes) -> bytes:
    """A binary reply frame: 4-byte header length, the JSON header, the bytes."""
    hdr = json.dumps(reply).encode()
    return len(hdr).to_bytes(4, "big") + hdr + data


def run_workers(n_threads: int, fn: Callable[[int], None], timeout: float) -> float:
    """Run ``fn(i)`` on ``n_threads`` threads released together; their wall time in seconds."""
    errors = []
    barrier = threading.Barrier(n_threads + 1, timeout=timeout)

    def body(i: int) -> None:
        try:
            barrier.wait()
            fn(i)
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=body, args=(i,), name="worker-%d" % i, daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        errors.append(f"workers still running after {timeout:.0f}s")
    if errors:
        raise RuntimeError("; ".join(errors[:3]))
    return elapsed


def measure(req: Any, workload: str, params: dict[str, Any]) -> dict[str, float]:
    """Run one request workload (latency, throughput, large) through ``req.doRequest``; its figures."""
    timeout = float(params.get("timeout", 120))
    if workload == "latency":
        n = int(params["n"])
        lat: list[float] = []

        def one(_: int) -> None:
            for i in range(n):
                t = time.perf_counter()
                r = req.doRequest({"cmd": "echo", "x": i}, timeout=10)
                lat.append(time.perf_counter() - t)
                if r.get("data") != i:
                    raise RuntimeError(f"bad reply {r!r}")

        run_workers(1, one, timeout)
        return {"p50_us": pct(lat, 0.5) * 1e6, "p99_us": pct(lat, 0.99) * 1e6}
    if workload == "throughput":
        threads, n = int(params["threads"]), int(params["n"])

        def many(w: int) -> None:
            for i in range(n):
                x = w * 100000 + i
                r = req.doRequest({"cmd": "echo", "x": x}, timeout=30)
                if r.get("data") != x:
                    raise RuntimeError(f"bad reply {r!r}")

        elapsed = run_workers(threads, many, timeout)
        return {"rps": threads * n / elapsed}
    if workload == "json":
        return _measure_json(req, int(params["n"]), timeout)
    if workload == "large":
        size = int(params["size"])
        base = proc_status()
        box = {}

        def big(_: int) -> None:
            box["reply"] = req.doRequest({"cmd": "blob", "size": size}, timeout=timeout)

        elapsed = run_workers(1, big, timeout)
        data = box["reply"]["data"]
        if len(data) != size:
            raise RuntimeError("large reply has %d bytes, expected %d" % (len(data), size))
        st = proc_status()
        return {
            "MBps": size / elapsed / 1e6,
            "peak_MiB": st["VmHWM"] / 1024.0,
            "peak_over_payload": (st["VmHWM"] - base["VmRSS"]) * 1024.0 / size,
            "base_MiB": base["VmRSS"] / 1024.0,
        }
    raise ValueError(workload)


def _measure_json(req: Any, n: int, timeout: float) -> dict[str, float]:
    """Sequential requests answered with a dashboard update (json_message): p50 and the bytes on the wire per request."""
    lat: list[float] = []
    start = req.wire_bytes()

    def one(_: int) -> None:
        for i in range(n):
            t = time.perf_counter()
            r = req.doRequest({"cmd": "json", "seed": i}, timeout=10)
            lat.append(time.perf_counter() - t)
            if r.get("data", {}).get("seq") != i:
                raise RuntimeError(f"bad reply {str(r)[:200]}")

    run_workers(1, one, timeout)
    return {"p50_us": pct(lat, 0.5) * 1e6, "bytes_per_req": (req.wire_bytes() - start) / n}


# --------------------------------------------------------------------------
# websocket-client, as the seed's peers used it
# --------------------------------------------------------------------------
class WebsocketClientClient:
    """The echo and bulk client for tornado_seed and websocket_server."""

    def __init__(self, port: int, path: str) -> None:
        import websocket

        self.c = websocket.create_connection(ws_url(port, path), timeout=30)

    def send(self, msg: Any) -> None:
        """A str as a text frame, bytes as a binary one."""
        if isinstance(msg, str):
            self.c.send(msg)
        else:
            self.c.send_binary(msg)

    def recv(self) -> Any:
        """The next message."""
        return self.c.recv()

    def close(self) -> None:
        """Close the connection."""
        self.c.close()


def peer_websocket_client(url: str, b64: bool) -> None:
    """The seed's peer: websocket-client, plain loop on create_connection, answering on its reader."""
    import websocket

    ws = websocket.create_connection(url, timeout=None)
    while True:
        try:
            m = ws.recv()
        except websocket.WebSocketConnectionClosedException:
            return
        if not m:
            return
        reply, data = handle_cmd(json.loads(m), b64)
        if data is None:
            ws.send(json.dumps(reply))
        else:
            ws.send_binary(binary_reply(reply, data))


# --------------------------------------------------------------------------
# the implementations: one module each, with the same four names
# --------------------------------------------------------------------------
# Serve(impl), Client(port, path), Requester(impl) and run_peer(impl, url).
# A module is imported only when its implementation runs, so that a peer
# process measures no other stack's imports.
MODULES = {
    "raw": "raw",
    "syncws": "syncws_impl",
    "syncws_inline": "syncws_impl",
    "syncws_peer_asks": "syncws_impl",
    "syncws_deflate": "syncws_impl",
    "syncws_metrics": "syncws_impl",
    "syncws_uncounted": "syncws_impl",
    "syncws_reactor": "syncws_impl",
    "syncws_threads": "syncws_impl",
    "websockets": "websockets_impl",
    "tornado_seed": "tornado_design",
    "tornado_seed_b64": "tornado_design",
    "websocket_server": "websocket_server_impl",
}


def implementation(impl: str) -> Any:
    """The module of implementation ``impl`` (a name of ``MODULES``)."""
    import importlib

    if impl not in MODULES:
        raise ValueError(f"unknown implementation {impl!r}")
    return importlib.import_module(f"{__package__}.{MODULES[impl]}")

"""Benchmark syncws against a raw-TCP floor and other websocket stacks.

Usage:
    python scripts/bench.py [--quick] [--reps N] [--only raw,syncws]
                            [--workloads echo,bulk] [--json PATH]
    python -m syncws bench ...           (runs this file's main(argv))

Implementations:
    raw               plain TCP, length-prefixed messages (the floor)
    syncws            this library
    websockets        websockets.sync.server / websockets.sync.client
    tornado_seed      the old rtCommon.webSocketHandlers design: Tornado
                      IOLoop thread, add_callback sends, per-call Semaphore;
                      peers and clients use websocket-client. Bytes replies
                      go as binary frames.
    tornado_seed_b64  tornado_seed with bytes replies as base64 text, as the
                      seed did (large_reply only)
    syncws_inline     syncws with the peer's echo command registered
                      inline=True (req_latency and req_throughput only)
    websocket_server  websocket-server 0.6.4, unmodified (text only; bytes
                      replies as base64 text)

Workloads (figures):
    echo            2,000 round trips of 100 bytes, one client: p50, p99
    bulk            16 MiB binary messages up and down: MB/s
    req_latency     small JSON request answered by a peer process, one
                    worker thread: p50, p99
    req_throughput  16 worker threads x 500 requests: requests/s
    large_reply     one 64 MiB bytes result through the request pattern:
                    MB/s, server peak RSS (VmHWM) and its growth / payload
    fanout          1 KiB broadcast to 500 clients: time until the last
                    client has it, p50 over the broadcasts
    idle            1,000 idle connections: server RSS and threads per
                    connection

Every server side runs in a subprocess of its own (scripts/bench_peers.py);
clients run in this process (echo, bulk, fan-out, idle) or in a peer process
(request workloads). Runs are interleaved: for each repetition, for each
workload, every implementation in turn. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import queue
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.join(HERE, "peers.py")
for _p in (HERE, ROOT):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import peers as bp  # noqa: E402

MiB = 1 << 20
IMPLS = ["raw", "syncws", "syncws_inline", "websockets", "tornado_seed", "tornado_seed_b64", "websocket_server"]
WORKLOADS = ["echo", "bulk", "req_latency", "req_throughput", "large_reply", "fanout", "idle"]
ALIASES = {"latency": "req_latency", "throughput": "req_throughput", "large": "large_reply",
           "fan-out": "fanout", "fan_out": "fanout", "request_latency": "req_latency",
           "request_throughput": "req_throughput", "bulk_up": "bulk", "bulk_down": "bulk"}

# (key, label, unit, better) -- better is "lower" or "higher"
FIGURES = {
    "echo": [("p50_us", "p50", "us", "lower"), ("p99_us", "p99", "us", "lower")],
    "bulk": [("up_MBps", "up", "MB/s", "higher"), ("down_MBps", "down", "MB/s", "higher")],
    "req_latency": [("p50_us", "p50", "us", "lower"), ("p99_us", "p99", "us", "lower")],
    "req_throughput": [("rps", "throughput", "req/s", "higher")],
    "large_reply": [("MBps", "speed", "MB/s", "higher"),
                    ("peak_MiB", "server peak RSS", "MiB", "lower"),
                    ("peak_over_payload", "RSS growth / payload", "x", "lower")],
    "fanout": [("p50_ms", "last client, p50", "ms", "lower")],
    "idle": [("KiB_per_conn", "RSS per conn", "KiB", "lower"),
             ("threads_per_conn", "threads per conn", "", "lower")],
}
# where the workload is impossible or not meant to run
NA = {("websocket_server", "bulk"): "n/a: websocket-server 0.6.4 has no binary frames"}
ONLY_FOR = {"tornado_seed_b64": {"large_reply"}, "syncws_inline": {"req_latency", "req_throughput"}}
NOTES = {
    ("websocket_server", "large_reply"): "base64 text",
    ("tornado_seed_b64", "large_reply"): "base64 text",
    ("tornado_seed", "large_reply"): "binary frame",
    ("syncws_inline", "req_latency"): "peer command inline",
    ("syncws_inline", "req_throughput"): "peer command inline",
}

FULL = dict(reps=5, echo_n=2000, echo_size=100, bulk_size=16 * MiB, bulk_count=4,
            lat_n=2000, thr_threads=16, thr_n=500, large_size=64 * MiB,
            fan_clients=500, fan_rounds=20, fan_size=1024, idle_n=1000, settle=0.4)
QUICK = dict(reps=2, echo_n=300, echo_size=100, bulk_size=4 * MiB, bulk_count=2,
              lat_n=300, thr_threads=16, thr_n=100, large_size=4 * MiB,
             fan_clients=100, fan_rounds=5, fan_size=1024, idle_n=200, settle=0.1)
RUN_TIMEOUT = 180.0  # seconds, any single run


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------
# subprocess handling
# --------------------------------------------------------------------------
def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Peer:
    """A bench_peers.py subprocess speaking JSON lines on stdout."""

    def __init__(self, args):
        self.errf = tempfile.TemporaryFile()
        self.p = subprocess.Popen([sys.executable, PEERS, *list(args)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.errf, env=_env(), text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        try:
            for line in self.p.stdout:
                self.lines.put(line)
        except (OSError, ValueError):
            pass
        self.lines.put(None)

    def read(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError(f"peer {self.p.args[2:4]}: no answer in {timeout:.0f}s{self.tail()}") from None
        if line is None:
            try:
                self.p.wait(2)
            except subprocess.TimeoutExpired:
                pass
            raise BenchError(f"peer {self.p.args[2:4]} exited (rc={self.p.returncode}){self.tail()}")
        return json.loads(line)

    def cmd(self, line, timeout=15.0):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.read(timeout)

    def tail(self, n=600):
        try:
            self.errf.seek(0)
            err = self.errf.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""
        return (": ..." + err[-n:]) if err else ""

    def close(self):
        try:
            if self.p.poll() is None:
                try:
                    self.p.stdin.write("quit\n")
                    self.p.stdin.flush()
                except (OSError, ValueError):
                    pass
                try:
                    self.p.wait(2)
                except subprocess.TimeoutExpired:
                    self.p.kill()
                    self.p.wait(5)
        finally:
            for f in (self.p.stdin, self.p.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass
            self.errf.close()


class Server:
    def __init__(self, impl):
        self.peer = Peer(["serve", impl])
        try:
            info = self.peer.read(30)
        except BaseException:
            self.peer.close()
            raise
        self.port = info["port"]
        self.pid = info["pid"]

    def url(self, path):
        return "ws://%s:%d%s" % (bp.HOST, self.port, path)

    def cmd(self, line, timeout=15.0):
        return self.peer.cmd(line, timeout)

    def wait_count(self, path, n, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            c = self.cmd("count " + path)["count"]
            if c >= n:
                return c
            if time.monotonic() > deadline:
                raise BenchError("server registered %d of %d connections on %s" % (c, n, path))
            time.sleep(0.02)

    def close(self):
        self.peer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# per-implementation clients (echo and bulk)
# --------------------------------------------------------------------------
class RawClient:
    def __init__(self, port, path):
        self.s = bp.raw_connect(port, path)
        self.s.settimeout(30)
        self.rf = self.s.makefile("rb", buffering=65536)

    def send(self, msg):
        if isinstance(msg, str):
            bp.raw_send(self.s, bp.RAW_TEXT, msg.encode())
        else:
            bp.raw_send(self.s, bp.RAW_BIN, msg)

    def recv(self):
        m = bp.raw_recv(self.rf)
        if m is None:
            raise BenchError("raw connection closed")
        kind, _, data = m
        return data.decode() if kind == bp.RAW_TEXT else data

    def close(self):
        self.rf.close()
        self.s.close()


class SyncwsClient:
    def __init__(self, url):
        import syncws

        self.c = syncws.connect(url)
        self.timeout_ok = True

    def send(self, msg):
        self.c.send(msg)

    def recv(self):
        if self.timeout_ok:
            try:
                m = self.c.recv(timeout=30)
            except (ValueError, TypeError):  # recv() without a per-call timeout
                self.timeout_ok = False
                m = self.c.recv()
        else:
            m = self.c.recv()
        if m is None:
            raise BenchError("syncws connection closed")
        return m

    def close(self):
        self.c.close()


class WebsocketsClient:
    def __init__(self, url):
        from websockets.sync.client import connect

        # entered as a context manager, the form websockets 15+ asks for
        self.c = connect(url, compression=None, max_size=None, ping_interval=None).__enter__()

    def send(self, msg):
        self.c.send(msg)

    def recv(self):
        return self.c.recv(timeout=30)

    def close(self):
        self.c.close()


class WebsocketClientClient:
    """websocket-client, as the seed's peers used it."""

    def __init__(self, url):
        import websocket

        self.c = websocket.create_connection(url, timeout=30)

    def send(self, msg):
        if isinstance(msg, str):
            self.c.send(msg)
        else:
            self.c.send_binary(msg)

    def recv(self):
        return self.c.recv()

    def close(self):
        self.c.close()


def make_client(impl, srv, path):
    if impl == "raw":
        return RawClient(srv.port, path)
    if impl == "syncws":
        return SyncwsClient(srv.url(path))
    if impl == "websockets":
        return WebsocketsClient(srv.url(path))
    return WebsocketClientClient(srv.url(path))


def pct(vals, q):
    s = sorted(vals)
    i = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[i]


# --------------------------------------------------------------------------
# minimal client for many connections (fan-out and idle): one selector,
# hand-made handshake, same code for every websocket implementation
# --------------------------------------------------------------------------
class ManyClients:
    def __init__(self, impl, srv, path, n):
        self.raw = impl == "raw"
        self.socks = []
        self.state = {}
        self.sel = selectors.DefaultSelector()
        try:
            for _ in range(n):
                s = self._open(srv.port, path)
                self.socks.append(s)
                st = self.state[s.fileno()] = {"sock": s, "buf": bytearray(), "msgs": 0}
                self.sel.register(s, selectors.EVENT_READ, st)
        except BaseException:
            self.close()
            raise

    def _open(self, port, path):
        if self.raw:
            s = bp.raw_connect(port, path)
        else:
            s = socket.create_connection((bp.HOST, port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = base64.b64encode(os.urandom(16)).decode()
            s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n" % (path, bp.HOST, port, key)).encode())
            resp = b""
            while b"\r\n\r\n" not in resp:
                chunk = s.recv(4096)
                if not chunk:
                    raise BenchError("handshake: connection closed")
                resp += chunk
                if len(resp) > 65536:
                    raise BenchError("handshake: response too long")
            if not resp.startswith(b"HTTP/1.1 101"):
                raise BenchError(f"handshake refused: {resp[:80]!r}")
            if resp.split(b"\r\n\r\n", 1)[1]:
                raise BenchError("unexpected data after handshake")
        s.setblocking(False)
        return s

    def _parse(self, st):
        buf = st["buf"]
        pos, n = 0, len(buf)
        while True:
            if self.raw:
                if n - pos < bp.RAW_HDR.size:
                    break
                _, _, ln = bp.RAW_HDR.unpack_from(buf, pos)
                total = bp.RAW_HDR.size + ln
                fin_data = True
            else:
                if n - pos < 2:
                    break
                b0, b1 = buf[pos], buf[pos + 1]
                ln, hl = b1 & 0x7F, 2
                if ln == 126:
                    if n - pos < 4:
                        break
                    ln, hl = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
                elif ln == 127:
                    if n - pos < 10:
                        break
                    ln, hl = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
                if b1 & 0x80:
                    hl += 4
                total = hl + ln
                fin_data = bool(b0 & 0x80) and (b0 & 0x0F) in (0, 1, 2)
            if n - pos < total:
                break
            pos += total
            if fin_data:
                st["msgs"] += 1
        if pos:
            del buf[:pos]

    def collect(self, target, timeout):
        """Read until every connection has `target` messages; returns the
        monotonic time at which the last one completed."""
        waiting = {fd for fd, st in self.state.items() if st["msgs"] < target}
        t_last = None
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("%d of %d clients did not receive the broadcast"
                                 % (len(waiting), len(self.state)))
            for key, _ in self.sel.select(min(left, 0.5)):
                st = key.data
                try:
                    chunk = st["sock"].recv(262144)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise BenchError("server closed a fan-out connection")
                st["buf"] += chunk
                self._parse(st)
                fd = key.fd
                if fd in waiting and st["msgs"] >= target:
                    waiting.discard(fd)
                    if not waiting:
                        t_last = time.monotonic()
        return t_last

    def close(self):
        for s in self.socks:
            try:
                self.sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
        self.socks = []
        self.sel.close()


# --------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------
def wl_echo(impl, cfg):
    with Server(impl) as srv:
        c = make_client(impl, srv, "/echo")
        try:
            msg = ("0123456789" * ((cfg["echo_size"] + 9) // 10))[:cfg["echo_size"]]
            for _ in range(20):
                c.send(msg)
                if c.recv() != msg:
                    raise BenchError("echo mismatch")
            lat = []
            deadline = time.monotonic() + RUN_TIMEOUT
            for _ in range(cfg["echo_n"]):
                t = time.perf_counter()
                c.send(msg)
                r = c.recv()
                lat.append(time.perf_counter() - t)
                if len(r) != len(msg):
                    raise BenchError("echo length mismatch")
                if time.monotonic() > deadline:
                    raise BenchError("echo took too long")
        finally:
            c.close()
    return {"p50_us": pct(lat, 0.5) * 1e6, "p99_us": pct(lat, 0.99) * 1e6}


def wl_bulk(impl, cfg):
    size, count = cfg["bulk_size"], cfg["bulk_count"]
    data = bytes(size)
    out = {}
    with Server(impl) as srv:
        c = make_client(impl, srv, "/bulkup")
        try:
            c.send(bytes(1024))
            c.recv()
            t = time.perf_counter()
            for _ in range(count):
                c.send(data)
                ack = c.recv()
                if int(ack) != size:
                    raise BenchError(f"bulk up: server got {ack} bytes")
            out["up_MBps"] = size * count / (time.perf_counter() - t) / 1e6
        finally:
            c.close()
        c = make_client(impl, srv, "/bulkdown")
        try:
            c.send("1024")
            c.recv()
            t = time.perf_counter()
            for _ in range(count):
                c.send(str(size))
                r = c.recv()
                if len(r) != size:
                    raise BenchError("bulk down: got %d bytes" % len(r))
            out["down_MBps"] = size * count / (time.perf_counter() - t) / 1e6
        finally:
            c.close()
    return out


def run_reqserver(impl, workload, params):
    peer = Peer(["reqserver", impl, workload, json.dumps(params)])
    try:
        return peer.read(RUN_TIMEOUT)
    finally:
        peer.close()


def wl_req_latency(impl, cfg):
    return run_reqserver(impl, "latency", {"n": cfg["lat_n"]})


def wl_req_throughput(impl, cfg):
    return run_reqserver(impl, "throughput", {"threads": cfg["thr_threads"], "n": cfg["thr_n"]})


def wl_large_reply(impl, cfg):
    r = run_reqserver(impl, "large", {"size": cfg["large_size"], "timeout": RUN_TIMEOUT - 30})
    return {k: r[k] for k in ("MBps", "peak_MiB", "peak_over_payload")}


def wl_fanout(impl, cfg):
    n, rounds = cfg["fan_clients"], cfg["fan_rounds"]
    with Server(impl) as srv:
        clients = ManyClients(impl, srv, "/fanout", n)
        try:
            srv.wait_count("/fanout", n)
            lat = []
            for r in range(rounds + 1):  # round 0 is a warm-up
                srv.peer.p.stdin.write("bcast %d\n" % cfg["fan_size"])
                srv.peer.p.stdin.flush()
                t_last = clients.collect(r + 1, 30)
                t0 = srv.peer.read(15)["t0"]
                if r:
                    lat.append(t_last - t0)
        finally:
            clients.close()
    return {"p50_ms": pct(lat, 0.5) * 1e3}


def wl_idle(impl, cfg):
    n, warm = cfg["idle_n"], 10
    with Server(impl) as srv:
        first = ManyClients(impl, srv, "/idle", warm)
        more = None
        try:
            srv.wait_count("/idle", warm)
            time.sleep(cfg["settle"])
            s0 = srv.cmd("stat")
            more = ManyClients(impl, srv, "/idle", n)
            srv.wait_count("/idle", warm + n, timeout=60)
            time.sleep(cfg["settle"])
            s1 = srv.cmd("stat")
        finally:
            first.close()
            if more is not None:
                more.close()
    return {"KiB_per_conn": (s1["VmRSS"] - s0["VmRSS"]) / n,
            "threads_per_conn": (s1["Threads"] - s0["Threads"]) / n}


RUNNERS = {"echo": wl_echo, "bulk": wl_bulk, "req_latency": wl_req_latency,
           "req_throughput": wl_req_throughput, "large_reply": wl_large_reply,
           "fanout": wl_fanout, "idle": wl_idle}


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------
def fmt(v):
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


def summarize(results, impls, workloads):
    rows = []
    for wl in workloads:
        for key, label, unit, better in FIGURES[wl]:
            raw_med = None
            raw_vals = results.get(("raw", wl), {}).get("values", {}).get(key)
            if raw_vals:
                raw_med = statistics.median(raw_vals)
            for impl in impls:
                if wl not in ONLY_FOR.get(impl, {wl}):
                    continue
                res = results.get((impl, wl), {})
                row = {"workload": wl, "figure": key, "label": label, "unit": unit,
                       "better": better, "impl": impl, "note": NOTES.get((impl, wl), "")}
                vals = res.get("values", {}).get(key)
                if (impl, wl) in NA:
                    row.update(status="n/a", note=NA[(impl, wl)])
                elif vals:
                    med = statistics.median(vals)
                    row.update(status="ok", values=vals, median=med, min=min(vals), max=max(vals),
                               ratio_to_raw=(med / raw_med) if raw_med else None,
                               runs=len(vals))
                    if res.get("errors"):
                        row["errors"] = res["errors"]
                else:
                    row.update(status="error", errors=res.get("errors", ["not run"]))
                rows.append(row)
    return rows


def markdown(rows, meta):
    out = ["# syncws benchmark (%s mode, %d repetitions)" % (meta["mode"], meta["reps"]), ""]
    out.append("Python %s on %s, %d CPUs; %s" % (meta["python"], meta["platform"], meta["cpus"],
                                                 ", ".join("{} {}".format(*kv) for kv in meta["versions"].items())))
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
            out.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["workload"], fig, r["impl"], fmt(r["median"]), fmt(r["min"]), fmt(r["max"]),
                ratio, note))
        elif r["status"] == "n/a":
            out.append("| {} | {} | {} | n/a | n/a | n/a | n/a | {} |".format(
                r["workload"], fig, r["impl"], r["note"]))
        else:
            err = str(r["errors"][-1]).replace("|", "/").replace("\n", " ")[:160]
            out.append("| {} | {} | {} | error | | | | {} |".format(r["workload"], fig, r["impl"], err))
    out.append("")
    out.append("x raw = median / raw median. Wall time {:.1f} s.".format(meta["wall_s"]))
    return "\n".join(out)


def versions():
    out = {}
    for mod, name in (("syncws", "syncws"), ("websockets", "websockets"), ("tornado", "tornado"),
                      ("websocket", "websocket-client"), ("numpy", "numpy")):
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


def parse_list(value, allowed, aliases=None, what="value"):
    if not value:
        return list(allowed)
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        item = (aliases or {}).get(item, item)
        if item not in allowed:
            raise SystemExit("unknown {} {!r} (choose from {})".format(what, item, ", ".join(allowed)))
        if item not in out:
            out.append(item)
    return [x for x in allowed if x in out]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 2 repetitions, < 1 minute")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 2)")
    ap.add_argument("--only", default="", help="implementations, comma-separated: " + ",".join(IMPLS))
    ap.add_argument("--workloads", default="", help="workloads, comma-separated: " + ",".join(WORKLOADS))
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        cfg["reps"] = max(1, args.reps)
    impls = parse_list(args.only, IMPLS, what="implementation")
    workloads = parse_list(args.workloads, WORKLOADS, ALIASES, what="workload")
    bp.raise_nofile()

    t_start = time.monotonic()
    results = {}
    for rep in range(cfg["reps"]):
        for wl in workloads:
            for impl in impls:
                if wl not in ONLY_FOR.get(impl, {wl}) or (impl, wl) in NA:
                    continue
                res = results.setdefault((impl, wl), {"values": {}, "errors": []})
                t = time.monotonic()
                try:
                    figs = RUNNERS[wl](impl, cfg)
                    for k, v in figs.items():
                        res["values"].setdefault(k, []).append(float(v))
                    status = " ".join(f"{k}={fmt(v)}" for k, v in figs.items())
                except Exception as e:
                    res["errors"].append(f"{type(e).__name__}: {e}")
                    status = f"ERROR {type(e).__name__}: {str(e)[:300]}"
                print("[%d/%d] %-14s %-16s %5.1fs  %s" % (rep + 1, cfg["reps"], wl, impl,
                                                          time.monotonic() - t, status),
                      file=sys.stderr, flush=True)

    meta = {"mode": "quick" if args.quick else "full", "reps": cfg["reps"], "config": cfg,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count() or 0, "versions": versions(),
            "wall_s": time.monotonic() - t_start, "impls": impls, "workloads": workloads}
    rows = summarize(results, impls, workloads)
    print(markdown(rows, meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
    ok = all(r["status"] in ("ok", "n/a") for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Subprocess peers for scripts/bench.py.

Every role runs in its own process so that each implementation's server
side can be measured (RSS, threads, peak memory) without the benchmark
driver's own allocations, and so that client and server never share a GIL.

Roles (all traffic is on 127.0.0.1 only; every process has an alarm so it
can never outlive the benchmark by more than its time limit):

    serve IMPL
        Starts IMPL's websocket server (or the raw TCP floor) with the
        endpoints /echo, /bulkup, /bulkdown, /fanout and /idle, prints
        {"port": N} and then obeys line commands on stdin:
        "stat", "count PATH", "bcast SIZE", "quit".
    reqserver IMPL WORKLOAD PARAMS_JSON
        Starts IMPL's request server, spawns a `reqpeer` process that
        answers the requests, runs WORKLOAD (latency, throughput, large)
        from worker threads and prints the figures as one JSON line.
    reqpeer IMPL URL
        The remote service answering {"cmd": "echo"} and {"cmd": "blob"}.

The module is also imported by bench.py for the raw framing helpers and the
minimal selector-based websocket client used for fan-out and idle.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
PROCESS_TIME_LIMIT = 900  # seconds; SIGALRM kills any peer left behind
IMPLS_B64 = ("tornado_seed_b64", "websocket_server")  # bytes travel as base64 text

# --------------------------------------------------------------------------
# raw TCP framing: header (kind, callId, length), kind 0 = text, 1 = binary
# --------------------------------------------------------------------------
RAW_HDR = struct.Struct("!BQQ")
RAW_TEXT, RAW_BIN = 0, 1


def raw_send(sock, kind, payload, call_id=0):
    hdr = RAW_HDR.pack(kind, call_id, len(payload))
    if len(payload) <= 65536:
        sock.sendall(hdr + payload)
    else:  # avoid copying large payloads
        sock.sendall(hdr)
        sock.sendall(payload)


def raw_recv(rfile):
    """Read one message from a buffered reader; None on EOF.

    Returns (kind, call_id, bytearray payload)."""
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


def raw_connect(port, path):
    s = socket.create_connection((HOST, port), timeout=10)
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    raw_send(s, RAW_TEXT, path.encode())
    return s


# --------------------------------------------------------------------------
# process helpers
# --------------------------------------------------------------------------
def proc_status(pid="self"):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])  # kB
            elif k == "Threads":
                out[k] = int(v)
    return out


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def raise_nofile():
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


_payload_cache = {}


def payload(n):
    b = _payload_cache.get(n)
    if b is None:
        _payload_cache.clear()
        b = _payload_cache[n] = bytes(n)
    return b


def start_tornado(routes):
    """Run a Tornado application on its own thread with its own asyncio
    loop; returns (port, ioloop)."""
    import asyncio

    import tornado.httpserver
    import tornado.ioloop
    import tornado.netutil
    import tornado.web

    box = {}
    ready = threading.Event()

    async def main():
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

    def run():
        try:
            asyncio.run(main())
        except Exception as e:  # pragma: no cover - surfaced via ready timeout
            box["error"] = repr(e)
            ready.set()

    threading.Thread(target=run, name="tornado-ioloop", daemon=True).start()
    if not ready.wait(15) or "error" in box:
        raise RuntimeError("tornado did not start: {}".format(box.get("error")))
    return box["port"], box["ioloop"]


def ensure_syncws_importable():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)


# --------------------------------------------------------------------------
# role: serve IMPL  (echo / bulk / fan-out / idle servers)
# --------------------------------------------------------------------------
class ServeBase:
    port = 0

    def count(self, path):
        raise NotImplementedError

    def broadcast(self, msg):
        raise NotImplementedError


class RawServe(ServeBase):
    """Thread per connection, blocking reads, length-prefixed messages."""

    def __init__(self):
        self.lsock = socket.create_server((HOST, 0), backlog=2048)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = {}
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            s, _ = self.lsock.accept()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._conn, args=(s,), daemon=True).start()

    def _conn(self, s):
        rfile = s.makefile("rb", buffering=65536)
        first = raw_recv(rfile)
        if first is None:
            s.close()
            return
        path = first[2].decode()
        entry = (s, threading.Lock())
        with self.lock:
            self.conns.setdefault(path, []).append(entry)
        try:
            while True:
                m = raw_recv(rfile)
                if m is None:
                    break
                kind, _, data = m
                if path == "/echo":
                    if kind == RAW_TEXT:
                        out = data.decode().encode()  # same work as a text frame
                    else:
                        out = data
                    with entry[1]:
                        raw_send(s, kind, out)
                elif path == "/bulkup":
                    with entry[1]:
                        raw_send(s, RAW_TEXT, str(len(data)).encode())
                elif path == "/bulkdown":
                    with entry[1]:
                        raw_send(s, RAW_BIN, payload(int(data.decode())))
        except OSError:
            pass
        finally:
            with self.lock:
                self.conns[path].remove(entry)
            s.close()

    def count(self, path):
        with self.lock:
            return len(self.conns.get(path, ()))

    def broadcast(self, msg):
        data = msg.encode()
        with self.lock:
            targets = list(self.conns.get("/fanout", ()))
        for s, lk in targets:
            with lk:
                raw_send(s, RAW_TEXT, data)


class SyncwsServe(ServeBase):
    def __init__(self):
        ensure_syncws_importable()
        import syncws

        owner = self
        self.lock = threading.Lock()
        self.conns = {"/fanout": [], "/idle": []}

        class Echo(syncws.BaseWebSocketHandler):
            def on_message(self, message):
                self.write_message(message, binary=isinstance(message, bytes))

        class BulkUp(syncws.BaseWebSocketHandler):
            def on_message(self, message):
                self.write_message(str(len(message)))

        class BulkDown(syncws.BaseWebSocketHandler):
            def on_message(self, message):
                self.write_message(payload(int(message)), binary=True)

        def tracked(path):
            class Tracked(syncws.BaseWebSocketHandler):
                def open(self):
                    super().open()  # joins the registry (used by sendWebSocketMessage)
                    with owner.lock:
                        owner.conns[path].append(self)

                def on_close(self):
                    super().on_close()
                    with owner.lock:
                        if self in owner.conns[path]:
                            owner.conns[path].remove(self)

                def on_message(self, message):
                    pass

            return Tracked

        self.server = syncws.WebSocketServer(host=HOST, port=0)
        self.server.add_handler("/echo", Echo, name="echo")
        self.server.add_handler("/bulkup", BulkUp, name="bulkup")
        self.server.add_handler("/bulkdown", BulkDown, name="bulkdown")
        self.server.add_handler("/fanout", tracked("/fanout"), name="fanout")
        self.server.add_handler("/idle", tracked("/idle"), name="idle")
        self.server.start()
        self.port = self.server.port
        self.syncws = syncws

    def count(self, path):
        with self.lock:
            return len(self.conns.get(path, ()))

    def broadcast(self, msg):
        send = getattr(self.syncws, "sendWebSocketMessage", None)
        if send is not None and os.environ.get("BENCH_SYNCWS_OWN_LOOP") != "1":
            send("fanout", msg, registry=self.server.registry)  # the library's broadcast
        else:
            with self.lock:
                targets = list(self.conns["/fanout"])
            for h in targets:
                h.write_message(msg)


class WebsocketsServe(ServeBase):
    def __init__(self):
        from websockets.sync.server import serve

        self.lock = threading.Lock()
        self.conns = {"/fanout": set(), "/idle": set()}

        def handler(ws):
            path = ws.request.path
            if path == "/echo":
                for m in ws:
                    ws.send(m)
            elif path == "/bulkup":
                for m in ws:
                    ws.send(str(len(m)))
            elif path == "/bulkdown":
                for m in ws:
                    ws.send(payload(int(m)))
            else:
                with self.lock:
                    self.conns.setdefault(path, set()).add(ws)
                try:
                    for _ in ws:
                        pass
                finally:
                    with self.lock:
                        self.conns[path].discard(ws)

        self.server = serve(handler, HOST, 0, compression=None, max_size=None,
                            ping_interval=None, backlog=2048)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path):
        with self.lock:
            return len(self.conns.get(path, ()))

    def broadcast(self, msg):
        with self.lock:
            targets = list(self.conns["/fanout"])
        for ws in targets:
            ws.send(msg)


class TornadoServe(ServeBase):
    def __init__(self):
        import tornado.websocket

        owner = self
        self.conns = {"/fanout": set(), "/idle": set()}  # touched on the IOLoop only

        class Echo(tornado.websocket.WebSocketHandler):
            def on_message(self, message):
                self.write_message(message, binary=isinstance(message, bytes))

        class BulkUp(tornado.websocket.WebSocketHandler):
            def on_message(self, message):
                self.write_message(str(len(message)))

        class BulkDown(tornado.websocket.WebSocketHandler):
            def on_message(self, message):
                self.write_message(payload(int(message)), binary=True)

        class Tracked(tornado.websocket.WebSocketHandler):
            def open(self):
                owner.conns[self.request.path].add(self)

            def on_close(self):
                owner.conns[self.request.path].discard(self)

            def on_message(self, message):
                pass

        routes = [("/echo", Echo), ("/bulkup", BulkUp), ("/bulkdown", BulkDown),
                  ("/fanout", Tracked), ("/idle", Tracked)]
        self.port, self.ioloop = start_tornado(routes)

    def count(self, path):
        return len(self.conns.get(path, ()))

    def broadcast(self, msg):
        def send_all():
            for h in list(self.conns["/fanout"]):
                h.write_message(msg)

        self.ioloop.add_callback(send_all)


class WebsocketServerServe(ServeBase):
    """websocket-server 0.6.4, unmodified: text only, no paths (echo for all)."""

    def __init__(self):
        import logging

        from websocket_server import WebsocketServer

        self.server = WebsocketServer(host=HOST, port=0, loglevel=logging.ERROR)
        self.server.set_fn_message_received(lambda c, s, m: s.send_message(c, m))
        self.server.run_forever(threaded=True)
        self.port = self.server.port

    def count(self, path):
        return len(self.server.clients)

    def broadcast(self, msg):
        self.server.send_message_to_all(msg)


SERVE = {"raw": RawServe, "syncws": SyncwsServe, "websockets": WebsocketsServe,
         "tornado_seed": TornadoServe, "websocket_server": WebsocketServerServe}


def role_serve(impl):
    srv = SERVE[impl]()
    emit({"port": srv.port, "pid": os.getpid()})
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        parts = line.split()
        if not parts:
            continue
        cmd = parts[0]
        if cmd == "stat":
            emit(proc_status())
        elif cmd == "count":
            emit({"count": srv.count(parts[1])})
        elif cmd == "bcast":
            msg = "x" * int(parts[1])
            t0 = time.monotonic()
            srv.broadcast(msg)
            emit({"t0": t0, "t1": time.monotonic()})
        elif cmd == "quit":
            break
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------
# role: reqserver IMPL WORKLOAD PARAMS  (request pattern, server side)
# --------------------------------------------------------------------------
class Pending:
    """Per-call rendezvous: the worker waits on its own condition."""

    __slots__ = ("cond", "done", "reply")

    def __init__(self):
        self.cond = threading.Condition(threading.Lock())
        self.reply = None
        self.done = False

    def set(self, reply):
        with self.cond:
            self.reply = reply
            self.done = True
            self.cond.notify()

    def wait(self, timeout):
        with self.cond:
            if not self.done:
                self.cond.wait_for(lambda: self.done, timeout)
            if not self.done:
                raise TimeoutError("request timed out")
            return self.reply


class RequesterBase:
    b64 = False

    def __init__(self):
        self.lock = threading.Lock()
        self.next_id = 0
        self.pending = {}
        self.connected = threading.Event()

    def _new_call(self):
        with self.lock:
            self.next_id += 1
            cid = self.next_id
            p = self.pending[cid] = Pending()
        return cid, p

    def _dispatch_text(self, text):
        reply = json.loads(text)
        p = self.pending.pop(reply.get("callId"), None)
        if p is not None:
            p.set(reply)

    def _dispatch_binary(self, data):
        # binary frame: 4-byte header length, JSON header, then the bytes
        mv = memoryview(data)
        hlen = int.from_bytes(mv[:4], "big")
        reply = json.loads(bytes(mv[4:4 + hlen]))
        reply["data"] = mv[4 + hlen:]
        p = self.pending.pop(reply.get("callId"), None)
        if p is not None:
            p.set(reply)

    def wait_connected(self, timeout):
        if not self.connected.wait(timeout):
            raise RuntimeError("peer did not connect")

    def finish(self, reply):
        if self.b64 and isinstance(reply.get("data"), str) and reply.get("b64"):
            reply["data"] = base64.b64decode(reply["data"])
        return reply


class RawRequester(RequesterBase):
    def __init__(self):
        super().__init__()
        self.lsock = socket.create_server((HOST, 0))
        self.url = "raw://%s:%d" % (HOST, self.lsock.getsockname()[1])
        self.sock = None
        self.wlock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        s, _ = self.lsock.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        threading.Thread(target=self._reader, args=(s,), daemon=True).start()
        self.connected.set()

    def _reader(self, s):
        rfile = s.makefile("rb", buffering=65536)
        while True:
            m = raw_recv(rfile)
            if m is None:
                return
            kind, cid, data = m
            if kind == RAW_TEXT:
                self._dispatch_text(data)
            else:
                p = self.pending.pop(cid, None)
                if p is not None:
                    p.set({"callId": cid, "status": 200, "data": data})

    def doRequest(self, msg, timeout=10):
        cid, p = self._new_call()
        msg = dict(msg, callId=cid)
        data = json.dumps(msg).encode()
        with self.wlock:
            raw_send(self.sock, RAW_TEXT, data, cid)
        return p.wait(timeout)


class WebsocketsRequester(RequesterBase):
    def __init__(self):
        super().__init__()
        from websockets.sync.server import serve

        self.ws = None

        def handler(ws):  # runs on the connection's thread: the reader
            self.ws = ws
            self.connected.set()
            for m in ws:
                if isinstance(m, str):
                    self._dispatch_text(m)
                else:
                    self._dispatch_binary(m)

        self.server = serve(handler, HOST, 0, compression=None, max_size=None,
                            ping_interval=None)
        self.url = "ws://%s:%d/wsData" % (HOST, self.server.socket.getsockname()[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def doRequest(self, msg, timeout=10):
        cid, p = self._new_call()
        self.ws.send(json.dumps(dict(msg, callId=cid)))  # send() is thread-safe
        return p.wait(timeout)


class TornadoRequester(RequesterBase):
    """The old rtCommon.webSocketHandlers design: IOLoop thread, sends
    scheduled with add_callback, each caller waits on its own Semaphore."""

    def __init__(self, b64=False):
        super().__init__()
        import tornado.websocket

        self.b64 = b64
        owner = self
        self.conn = None

        class DataHandler(tornado.websocket.WebSocketHandler):
            def open(self):
                owner.conn = self
                owner.connected.set()

            def on_message(self, message):
                if isinstance(message, str):
                    reply = json.loads(message)
                else:
                    mv = memoryview(message)
                    hlen = int.from_bytes(mv[:4], "big")
                    reply = json.loads(bytes(mv[4:4 + hlen]))
                    reply["data"] = mv[4 + hlen:]
                with owner.lock:
                    entry = owner.pending.pop(reply.get("callId"), None)
                if entry is not None:
                    entry["reply"] = reply
                    entry["sem"].release()

        port, self.ioloop = start_tornado([("/wsData", DataHandler)])
        self.url = "ws://%s:%d/wsData" % (HOST, port)

    def doRequest(self, msg, timeout=10):
        with self.lock:
            self.next_id += 1
            cid = self.next_id
            entry = {"sem": threading.Semaphore(0), "reply": None}
            self.pending[cid] = entry
        self.ioloop.add_callback(self.conn.write_message, json.dumps(dict(msg, callId=cid)))
        if not entry["sem"].acquire(timeout=timeout):
            with self.lock:
                self.pending.pop(cid, None)
            raise TimeoutError("request timed out")
        return self.finish(entry["reply"])


class WebsocketServerRequester(RequesterBase):
    b64 = True

    def __init__(self):
        super().__init__()
        import logging

        from websocket_server import WebsocketServer

        self.client = None
        self.server = WebsocketServer(host=HOST, port=0, loglevel=logging.ERROR)

        def new_client(client, server):
            self.client = client
            self.connected.set()

        # message_received runs on the connection's handler thread: the reader
        self.server.set_fn_new_client(new_client)
        self.server.set_fn_message_received(lambda c, s, m: self._dispatch_text(m))
        self.server.run_forever(threaded=True)
        self.url = "ws://%s:%d/wsData" % (HOST, self.server.port)

    def doRequest(self, msg, timeout=10):
        cid, p = self._new_call()
        self.server.send_message(self.client, json.dumps(dict(msg, callId=cid)))
        return self.finish(p.wait(timeout))


class SyncwsRequester(RequesterBase):
    def __init__(self):
        super().__init__()
        ensure_syncws_importable()
        import syncws

        self.syncws = syncws
        self.server = syncws.WebSocketServer(host=HOST, port=0)
        RequestHandler = getattr(syncws, "RequestHandler", None)
        if RequestHandler is None:  # not exported yet
            from syncws.requests import RequestHandler
        self.rh = RequestHandler("wsData", self.server)
        self.server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData",
                                callback=self.rh.callback)
        self.server.start()
        self.url = self.server.url + "/wsData"

    def wait_connected(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.rh.doRequest({"cmd": "echo", "x": 0}, timeout=max(0.5, deadline - time.monotonic()))
                return
            except self.syncws.NotConnected:
                if time.monotonic() > deadline:
                    raise RuntimeError("syncws peer did not connect") from None
                time.sleep(0.02)

    def doRequest(self, msg, timeout=10):
        return self.rh.doRequest(msg, timeout=timeout)


def make_requester(impl):
    if impl == "raw":
        return RawRequester()
    if impl in ("syncws", "syncws_inline"):
        return SyncwsRequester()
    if impl == "websockets":
        return WebsocketsRequester()
    if impl == "tornado_seed":
        return TornadoRequester(b64=False)
    if impl == "tornado_seed_b64":
        return TornadoRequester(b64=True)
    if impl == "websocket_server":
        return WebsocketServerRequester()
    raise ValueError(impl)


def _pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[i]


def run_workers(n_threads, fn, timeout):
    errors = []
    barrier = threading.Barrier(n_threads + 1, timeout=timeout)

    def body(i):
        try:
            barrier.wait()
            fn(i)
        except BaseException as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=body, args=(i,), name="worker-%d" % i, daemon=True)
               for i in range(n_threads)]
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


def role_reqserver(impl, workload, params):
    peer = None
    try:
        req = make_requester(impl)
        env = dict(os.environ)
        peer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "reqpeer", impl, req.url],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        req.wait_connected(15)
        for i in range(20):  # warm-up
            r = req.doRequest({"cmd": "echo", "x": i}, timeout=10)
            if r.get("data") != i:
                raise RuntimeError(f"bad echo reply: {r!r}")
        timeout = float(params.get("timeout", 120))
        if workload == "latency":
            n = int(params["n"])
            lat = []

            def one(_):
                for i in range(n):
                    t = time.perf_counter()
                    r = req.doRequest({"cmd": "echo", "x": i}, timeout=10)
                    lat.append(time.perf_counter() - t)
                    if r.get("data") != i:
                        raise RuntimeError(f"bad reply {r!r}")

            run_workers(1, one, timeout)
            lat.sort()
            emit({"p50_us": _pct(lat, 0.5) * 1e6, "p99_us": _pct(lat, 0.99) * 1e6})
        elif workload == "throughput":
            threads, n = int(params["threads"]), int(params["n"])

            def many(w):
                for i in range(n):
                    x = w * 100000 + i
                    r = req.doRequest({"cmd": "echo", "x": x}, timeout=30)
                    if r.get("data") != x:
                        raise RuntimeError(f"bad reply {r!r}")

            elapsed = run_workers(threads, many, timeout)
            emit({"rps": threads * n / elapsed})
        elif workload == "large":
            size = int(params["size"])
            base = proc_status()
            box = {}

            def big(_):
                box["reply"] = req.doRequest({"cmd": "blob", "size": size}, timeout=timeout)

            elapsed = run_workers(1, big, timeout)
            data = box["reply"]["data"]
            if len(data) != size:
                raise RuntimeError("large reply has %d bytes, expected %d" % (len(data), size))
            st = proc_status()
            emit({"MBps": size / elapsed / 1e6,
                  "peak_MiB": st["VmHWM"] / 1024.0,
                  "peak_over_payload": (st["VmHWM"] - base["VmRSS"]) * 1024.0 / size,
                  "base_MiB": base["VmRSS"] / 1024.0})
        else:
            raise ValueError(workload)
    finally:
        sys.stdout.flush()
        if peer is not None:
            peer.kill()
            try:
                peer.wait(5)
            except subprocess.TimeoutExpired:
                pass
    os._exit(0)


# --------------------------------------------------------------------------
# role: reqpeer IMPL URL  (the remote service answering requests)
# --------------------------------------------------------------------------
def handle_cmd(msg, b64):
    """Returns (reply_dict, bytes_or_None)."""
    cmd = msg.get("cmd")
    reply = {"callId": msg.get("callId"), "status": 200}
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


def binary_reply(reply, data):
    hdr = json.dumps(reply).encode()
    return len(hdr).to_bytes(4, "big") + hdr + data


def peer_raw(url):
    host, port = url[len("raw://"):].rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.settimeout(None)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rfile = s.makefile("rb", buffering=65536)
    while True:
        m = raw_recv(rfile)
        if m is None:
            return
        reply, data = handle_cmd(json.loads(m[2]), False)
        if data is None:
            raw_send(s, RAW_TEXT, json.dumps(reply).encode(), reply["callId"])
        else:
            raw_send(s, RAW_BIN, data, reply["callId"])


def peer_websockets(url):
    from websockets.sync.client import connect

    with connect(url, compression=None, max_size=None, ping_interval=None) as ws:
        for m in ws:
            reply, data = handle_cmd(json.loads(m), False)
            ws.send(json.dumps(reply) if data is None else binary_reply(reply, data))


def peer_websocket_client(url, b64):
    """The seed's peer: websocket-client, plain loop on create_connection."""
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


def peer_syncws(url, inline=False):
    ensure_syncws_importable()
    import syncws

    svc = syncws.RemoteService(url)
    svc.register("echo", lambda msg: msg.get("x"), inline=inline)
    svc.register("blob", lambda msg: bytes(int(msg["size"])))
    svc.run_forever()


def role_reqpeer(impl, url):
    try:
        if impl == "raw":
            peer_raw(url)
        elif impl == "websockets":
            peer_websockets(url)
        elif impl in ("tornado_seed", "tornado_seed_b64", "websocket_server"):
            peer_websocket_client(url, impl in IMPLS_B64)
        elif impl in ("syncws", "syncws_inline"):
            peer_syncws(url, inline=impl == "syncws_inline")
        else:
            raise ValueError(impl)
    except (OSError, EOFError):
        pass
    os._exit(0)


def main(argv):
    signal.alarm(PROCESS_TIME_LIMIT)
    raise_nofile()
    role = argv[0]
    try:
        if role == "serve":
            role_serve(argv[1])
        elif role == "reqserver":
            role_reqserver(argv[1], argv[2], json.loads(argv[3]) if len(argv) > 3 else {})
        elif role == "reqpeer":
            role_reqpeer(argv[1], argv[2])
        else:
            raise SystemExit(f"unknown role {role!r}")
    except BaseException:  # report and leave at once, whatever threads remain
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

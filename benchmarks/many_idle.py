"""Many idle connections: what N open, silent websocket connections cost a server, and how it still answers.

Run it from the repository root::

    python -m benchmarks.many_idle [--n 10000] [--impls syncws,websockets] [--json PATH] [--quick]
    python -m benchmarks many-idle ...        (the same, through the runner)

For each implementation in turn, its server runs in a child process of its
own (``python -m benchmarks.peers idle-serve IMPL MAX``) with three
endpoints: /idle (a handler that does nothing), /echo and /fanout (each
message it gets is broadcast to every /idle connection). The clients are in
this process: the N idle ones in one thread on one selector
(``ManyClients``), the others on plain sockets with the same hand-made
framing, so that every server is measured with the same client code.

Implementations:

    syncws      syncws.WebSocketServer on its default engine (the selector engine),
                compression off, max_connections N + 100, the broadcast through
                ``sendWebSocketMessage("idle", ...)``
    syncws_threads, syncws_reactor
                the same on the thread engine, or on the selector engine by name
    reactor     syncws.reactor's parts alone, without the server around them
    websockets  python-websockets' asyncio server (``websockets.asyncio.server.serve``,
                else ``websockets.serve``), compression off, on its own event
                loop; the broadcast through ``websockets.broadcast``

Keepalive pings are off on both: the idle clients never read until the
broadcast, so they could not answer a ping, and the figure wanted is what
silence costs.

What it measures, with all N connections open and idle:

    N held      connections opened (in batches of 100, within 120 s) and still
                open after a settling second: a server that cannot take them all
                is measured with what it holds, and the table says so
    KiB/conn    the server's VmRSS after opening them minus before, divided by N held
    threads     the server process's thread count (/proc/PID/status)
    idle CPU %  the server's utime + stime over 20 s of silence (--quick: 5 s),
                in percent of one core
    echo        p50 and p99 of 200 round trips of 100 bytes on one more connection
                (bounded to 30 s in all; "no answer" past it)
    handshake   a new client's TCP connect and upgrade, median of 5 (each bounded to 30 s)
    broadcast   64 bytes sent on a control connection to /fanout, until the last
                idle client has the server's broadcast of it (bounded to 120 s)

The open-file soft limit is raised to the hard one here and in the server
child; where the hard limit is too low for N, N is lowered to fit, and a
line says so. Every wait is bounded, all traffic stays on 127.0.0.1, and the
server child is killed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from .common import HOST, BenchError, emit, pct
from .many_clients import ManyClients
from .peers import command, package_parent

IMPLS = ["syncws", "syncws_threads", "syncws_reactor", "websockets", "reactor"]
DEFAULT_IMPLS = ["syncws", "websockets"]
FULL_N, QUICK_N = 10_000, 300
BATCH = 100  # handshakes in flight at once: below syncws's max_handshakes (128) and its listen backlog (128)
OPEN_BUDGET = 120.0  # seconds to open the N connections
PROGRESS_STEP = 1000  # connections between two progress lines while opening
SETTLE = 1.0  # seconds between the last handshake and the memory figure: the server's threads finish starting
IDLE_S, QUICK_IDLE_S = 20.0, 5.0
ECHO_N, ECHO_WARMUP, ECHO_SIZE, ECHO_BUDGET = 200, 10, 100, 30.0
HANDSHAKES, HANDSHAKE_BUDGET = 5, 30.0
BCAST_SIZE, BCAST_BUDGET = 64, 120.0
START_BUDGET = 30.0  # seconds for a server child to report its port
# Descriptors this process needs beside the N idle connections: stdio, the child's pipes,
# the echo, handshake and control connections, selectors, imported modules' files.
FD_SPARE = 64


# --------------------------------------------------------------------------
# the server child: python -m benchmarks.peers idle-serve IMPL MAX_CONNECTIONS
# --------------------------------------------------------------------------
def serve_role(impl: str, max_connections: str, ping_interval: str = "") -> None:
    """Serve /idle, /echo and /fanout with ``impl``, print {"port", "pid"}, and run until "quit" or EOF on stdin.

    ``ping_interval`` (seconds; syncws only) turns keepalive pings on, for clients that answer them
    (benchmarks.keepalive); empty: off.
    """
    interval = float(ping_interval) if ping_interval else None
    if impl == "syncws":  # the default engine
        port = _serve_syncws(int(max_connections), engine=None, ping_interval=interval)
    elif impl == "syncws_threads":
        port = _serve_syncws(int(max_connections), engine="threads", ping_interval=interval)
    elif impl == "syncws_reactor":
        port = _serve_syncws(int(max_connections), engine="reactor", ping_interval=interval)
    elif impl == "websockets":
        port = _serve_websockets()
    elif impl == "reactor":
        port = _serve_reactor()
    else:
        raise SystemExit(f"unknown implementation {impl!r}")
    emit({"port": port, "pid": os.getpid()})
    for line in sys.stdin:  # ends on EOF (the driver is gone) or "quit"; the peers' alarm bounds the rest
        if line.strip() == "quit":
            break
    os._exit(0)


def _serve_syncws(max_connections: int, engine: Optional[str], ping_interval: Optional[float] = None) -> int:
    import syncws

    class Idle(syncws.BaseWebSocketHandler):
        """Joins the registry on open (the base class does) and ignores what it is sent."""

        def on_message(self, message: Any) -> None:
            pass

    class Echo(syncws.BaseWebSocketHandler):
        def on_message(self, message: Any) -> None:
            self.write_message(message, binary=isinstance(message, bytes))

    class Fanout(syncws.BaseWebSocketHandler):
        def on_message(self, message: Any) -> None:
            syncws.sendWebSocketMessage("idle", message, registry=server.registry)

    # Pings off unless asked: the idle clients do not read, so they could not answer (see the module's docstring).
    server = syncws.WebSocketServer(host=HOST, port=0, compression=None, max_connections=max_connections, ping_interval=ping_interval, engine=engine)
    server.add_handler("/idle", Idle, name="idle")
    server.add_handler("/echo", Echo, name="echo")
    server.add_handler("/fanout", Fanout, name="fanout")
    server.start()
    return server.port


def _serve_reactor() -> int:
    """syncws's selector engine's parts alone (syncws.reactor: one loop thread, streams, the handler pool).

    Without the server around them: the opening handshake is done here, on
    one accept thread, with syncws's sans-I/O handshake functions; each
    upgraded socket then becomes a Stream on the loop. What the engine costs
    by itself, to tell it from what the server adds.
    """
    import socket

    from syncws.protocol.handshake import accept_response, check_upgrade, parse_http_request
    from syncws.protocol.protocol import Protocol
    from syncws.reactor.handler_pool import HandlerPool
    from syncws.reactor.loop import IOLoop
    from syncws.reactor.stream import Stream

    loop = IOLoop().start()
    pool = HandlerPool(max_workers=1000, idle_timeout=5.0)
    listener = socket.create_server((HOST, 0), backlog=1024)
    idle: set[Stream] = set()  # the accept thread adds, the loop's on_close (a worker) removes: set ops hold the GIL

    def accept() -> None:
        while True:  # ends with the process
            sock, address = listener.accept()
            try:
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 16384:
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed during the handshake")
                    head += chunk
                head, rest = head.split(b"\r\n\r\n", 1)
                request = parse_http_request(head, address)
                check_upgrade(request.headers)
                sock.sendall(accept_response(request))
            except Exception:
                sock.close()
                continue
            holder: list[Stream] = []

            def on_message(message: Any, path: str = request.path, holder: list[Stream] = holder) -> None:
                if path == "/echo":
                    holder[0].send(message, binary=isinstance(message, bytes))
                elif path == "/fanout":
                    for stream in list(idle):
                        stream.send(message, binary=isinstance(message, bytes))

            def on_close(code: int, reason: str, holder: list[Stream] = holder) -> None:
                idle.discard(holder[0])

            stream = Stream(loop, sock, Protocol(is_client=False), pool, on_message, on_close, initial_data=rest)
            holder.append(stream)
            if request.path not in ("/echo", "/fanout"):
                idle.add(stream)
            stream.start()

    threading.Thread(target=accept, name="reactor-accept", daemon=True).start()
    return int(listener.getsockname()[1])


def _serve_websockets() -> int:
    import asyncio

    import websockets

    try:
        from websockets.asyncio.server import broadcast, serve
    except ImportError:  # before websockets 13: the legacy API at the top level
        broadcast, serve = websockets.broadcast, websockets.serve  # type: ignore[attr-defined]

    idle: set[Any] = set()
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def handler(ws: Any) -> None:
        path = ws.request.path if hasattr(ws, "request") else ws.path
        if path not in ("/echo", "/fanout"):
            idle.add(ws)
            try:
                await ws.wait_closed()
            finally:
                idle.discard(ws)
            return
        try:
            async for m in ws:
                if path == "/echo":
                    await ws.send(m)
                else:
                    broadcast(idle, m)
        except websockets.exceptions.ConnectionClosed:
            pass  # the benchmark's clients leave without a closing handshake: not an error to log

    async def main() -> None:
        server = await serve(handler, HOST, 0, compression=None, ping_interval=None, max_size=None, backlog=1024)
        box["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.Event().wait()  # until the process ends

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:
            box["error"] = repr(e)
            ready.set()

    # The loop on a thread of its own: the main thread waits for the driver's "quit".
    threading.Thread(target=run, name="websockets-loop", daemon=True).start()
    if not ready.wait(START_BUDGET) or "error" in box:
        raise RuntimeError("websockets server did not start: {}".format(box.get("error")))
    return int(box["port"])


# --------------------------------------------------------------------------
# /proc figures of the server child
# --------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of ``pid``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "VmRSS":
                out[k] = int(v.split()[0])
            elif k == "Threads":
                out[k] = int(v)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# one websocket client on a plain socket, every wait bounded
# --------------------------------------------------------------------------
class WsClient:
    """A client connection with the same hand-made framing as ManyClients; ``handshake_s`` is its connect + upgrade time."""

    def __init__(self, port: int, path: str, budget: float) -> None:
        deadline = time.monotonic() + budget
        t0 = time.perf_counter()
        self.sock = socket.create_connection((HOST, port), timeout=budget)
        try:
            self._upgrade(port, path, deadline)
        except BaseException:
            self.sock.close()
            raise
        self.handshake_s = time.perf_counter() - t0
        self.mask = os.urandom(4)

    def _upgrade(self, port: int, path: str, deadline: float) -> None:
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, HOST, port, key)
            ).encode()
        )
        self.buf = bytearray()
        while b"\r\n\r\n" not in self.buf:  # bounded by the deadline and the 64 KiB check
            self._fill(deadline)
            if len(self.buf) > 65536:
                raise BenchError("handshake: response too long")
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise BenchError(f"handshake refused: {head[:80]!r}")
        self.buf = bytearray(rest)

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no answer") from None
        if not chunk:
            raise BenchError("server closed the connection")
        self.buf += chunk

    def frame(self, payload: bytes, opcode: int) -> bytes:
        """A masked frame of ``payload``, made once so that a round trip times the server, not the masking."""
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
        masked = bytes(b ^ self.mask[i & 3] for i, b in enumerate(payload))
        return head + self.mask + masked

    def recv(self, deadline: float) -> bytes:
        """The next data message's payload (control frames skipped); TimeoutError past ``deadline``."""
        while True:  # each pass reads one frame; bounded by the deadline
            while len(self.buf) < 2:
                self._fill(deadline)
            b0, b1 = self.buf[0], self.buf[1]
            n, hl = b1 & 0x7F, 2
            if n >= 126:
                hl = 4 if n == 126 else 10
                while len(self.buf) < hl:
                    self._fill(deadline)
                n = int.from_bytes(self.buf[2:hl], "big")
            while len(self.buf) < hl + n:
                self._fill(deadline)
            data = bytes(self.buf[hl:hl + n])
            del self.buf[:hl + n]
            opcode = b0 & 0x0F
            if opcode == 8:
                raise BenchError("server closed the connection")
            if opcode in (0, 1, 2):
                return data

    def close(self) -> None:
        """Close the socket (no closing handshake: the server sees EOF)."""
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------
class ServerChild:
    """A server child process; ``stop`` kills it, whatever state it is in."""

    def __init__(self, impl: str, max_connections: int, ping_interval: Optional[float] = None) -> None:
        # A session of its own: a Ctrl-C reaches the driver alone, which then kills the child.
        interval = "" if ping_interval is None else repr(ping_interval)
        self.proc = subprocess.Popen(command("idle-serve", impl, str(max_connections), interval), cwd=package_parent(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            line = self._readline(START_BUDGET)
            info = json.loads(line)
        except BaseException:
            self.stop()
            raise
        self.port, self.pid = int(info["port"]), int(info["pid"])

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise BenchError("server child did not start within %.0f s" % timeout)
        line = self.proc.stdout.readline()
        if not line:
            raise BenchError("server child exited before reporting its port (rc %s)" % self.proc.poll())
        return line

    def alive(self) -> bool:
        """Whether the child still runs."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill the child and reap it (bounded)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def nofile_for(n: int) -> tuple[int, Optional[str]]:
    """Raise the open-file soft limit to the hard one; the N that fits in it, and a line saying so when it is below ``n``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (ValueError, OSError):
        pass
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
    # This process holds the N client sockets; the server child (which inherits the same hard limit) N server ones.
    if limit >= n + FD_SPARE:
        return n, None
    fit = max(1, limit - FD_SPARE)
    return fit, "open-file limit %d (hard %s) is below the %d that N = %d needs: N lowered to %d" % (
        limit, "unlimited" if hard == resource.RLIM_INFINITY else hard, n + FD_SPARE, n, fit)


def measure_echo(port: int) -> dict[str, Any]:
    """p50 and p99 of ECHO_N round trips of ECHO_SIZE bytes on a new /echo connection, bounded to ECHO_BUDGET in all."""
    deadline = time.monotonic() + ECHO_BUDGET
    c: Optional[WsClient] = None
    done = -1  # round trips answered; -1 while the connection's handshake is not
    try:
        c = WsClient(port, "/echo", ECHO_BUDGET)
        done = 0
        payload = os.urandom(ECHO_SIZE)
        frame = c.frame(payload, 2)
        lat: list[float] = []
        for i in range(ECHO_WARMUP + ECHO_N):
            done = i
            t = time.perf_counter()
            c.sock.sendall(frame)
            got = c.recv(deadline)
            if i >= ECHO_WARMUP:
                lat.append(time.perf_counter() - t)
            if got != payload:
                raise BenchError("echo: wrong reply")
        return {"echo_p50_us": pct(lat, 0.5) * 1e6, "echo_p99_us": pct(lat, 0.99) * 1e6}
    except (TimeoutError, socket.timeout, OSError, BenchError) as e:
        stage = "the handshake" if done < 0 else "%d of %d round trips answered" % (done, ECHO_WARMUP + ECHO_N)
        what = "no answer within %.0f s" % ECHO_BUDGET if isinstance(e, (TimeoutError, socket.timeout)) else "echo failed: %s" % e
        return {"echo_p50_us": None, "echo_p99_us": None, "echo_note": "%s (%s)" % (what, stage)}
    finally:
        if c is not None:
            c.close()


def measure_handshakes(port: int) -> dict[str, Any]:
    """Median of HANDSHAKES new /echo connections' connect + upgrade times, each bounded to HANDSHAKE_BUDGET."""
    times: list[float] = []
    notes: list[str] = []
    for _ in range(HANDSHAKES):
        try:
            c = WsClient(port, "/echo", HANDSHAKE_BUDGET)
        except (TimeoutError, socket.timeout):
            notes.append("no answer within %.0f s" % HANDSHAKE_BUDGET)
            continue
        except (OSError, BenchError) as e:
            notes.append(str(e))
            continue
        times.append(c.handshake_s)
        c.close()
    out: dict[str, Any] = {"handshake_ms": pct(times, 0.5) * 1e3 if times else None, "handshakes_ok": len(times)}
    if notes:
        out["handshake_note"] = "%d of %d failed: %s" % (len(notes), HANDSHAKES, "; ".join(sorted(set(notes))))
    return out


def measure_broadcast(port: int, mc: ManyClients) -> dict[str, Any]:
    """BCAST_SIZE bytes on a /fanout control connection; seconds until the last idle client has the broadcast (bounded)."""
    try:
        ctl = WsClient(port, "/fanout", HANDSHAKE_BUDGET)
    except (OSError, BenchError, TimeoutError) as e:
        return {"broadcast_s": None, "broadcast_got": 0, "broadcast_note": "control connection failed: %s" % (str(e) or "no answer")}
    try:
        frame = ctl.frame(b"x" * BCAST_SIZE, 1)
        t0 = time.monotonic()
        ctl.sock.sendall(frame)
        try:
            t_last = mc.collect(1, BCAST_BUDGET)
            note = None
        except BenchError as e:
            t_last, note = None, str(e)
        got = sum(1 for st in mc.state.values() if st["msgs"] >= 1)
        out: dict[str, Any] = {"broadcast_s": (t_last - t0) if t_last is not None else None, "broadcast_got": got}
        if note:
            out["broadcast_note"] = "%s (%d of %d had it within %.0f s)" % (note, got, len(mc.state), BCAST_BUDGET)
        return out
    finally:
        ctl.close()


def run_impl(impl: str, n: int, idle_s: float, log: Any) -> dict[str, Any]:
    """Every figure of one implementation; what could not be measured is None with a note."""
    res: dict[str, Any] = {"impl": impl, "n_asked": n}
    child: Optional[ServerChild] = None
    mc: Optional[ManyClients] = None
    try:
        child = ServerChild(impl, n + 100)
        time.sleep(0.5)  # let the child finish its imports and start-up before the baseline
        base = proc_status(child.pid)
        res["base_rss_kib"] = base["VmRSS"]
        res["base_threads"] = base["Threads"]

        mc = ManyClients(impl, child.port, "/idle", 0)
        t0 = time.monotonic()
        why: Optional[str] = None
        progress: list[tuple[int, float]] = []  # (connections open, seconds): where a server slows down
        while len(mc.socks) < n and why is None:  # a step of PROGRESS_STEP connections per pass; bounded by n and the budget
            want = min(PROGRESS_STEP, n - len(mc.socks))
            why = mc.open_batched(child.port, "/idle", want, t0 + OPEN_BUDGET, BATCH)
            progress.append((len(mc.socks), round(time.monotonic() - t0, 2)))
            log("%s: %d open after %.1f s" % (impl, *progress[-1]))
        if why is not None:
            why = "stopped at %d of %d connections: %s" % (len(mc.socks), n, why)
        res["open_s"] = time.monotonic() - t0
        res["open_progress"] = progress
        if why:
            res["open_note"] = why
        time.sleep(SETTLE)
        held = mc.drop_closed()
        res["n_held"] = held
        if not child.alive():
            raise BenchError("server child exited (rc %s)" % child.proc.poll())
        st = proc_status(child.pid)
        res["rss_kib"] = st["VmRSS"]
        res["threads"] = st["Threads"]
        res["kib_per_conn"] = (st["VmRSS"] - base["VmRSS"]) / held if held else None

        c0, t_idle = cpu_seconds(child.pid), time.monotonic()
        time.sleep(idle_s)
        res["idle_cpu_pct"] = (cpu_seconds(child.pid) - c0) / (time.monotonic() - t_idle) * 100.0
        res["idle_s"] = idle_s
        log("%s: %d held, %.1f KiB/conn, %d threads, idle CPU %.2f %%" % (impl, held, res["kib_per_conn"] or 0, res["threads"], res["idle_cpu_pct"]))

        res.update(measure_echo(child.port))
        log("%s: echo p50 %s us" % (impl, fmt(res["echo_p50_us"], 1)))
        res.update(measure_handshakes(child.port))
        log("%s: handshake %s ms" % (impl, fmt(res["handshake_ms"], 2)))
        res.update(measure_broadcast(child.port, mc))
        log("%s: broadcast %s s to %d" % (impl, fmt(res["broadcast_s"], 3), res["broadcast_got"]))
        res["n_held_end"] = mc.drop_closed()
        res["threads_end"] = proc_status(child.pid)["Threads"] if child.alive() else None
    except (OSError, BenchError) as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
        log("%s: ERROR %s" % (impl, res["error"]))
    finally:
        # The server first: closing thousands of client sockets would otherwise set it to work on them.
        if child is not None:
            child.stop()
        if mc is not None:
            mc.close()
    return res


def fmt(v: Any, digits: int = 1) -> str:
    """A figure for the table: thousands separated, "-" when missing."""
    if v is None:
        return "-"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.{digits}f}"


COLUMNS = [
    ("implementation", "impl", 0), ("N held", "n_held", 0), ("KiB/conn", "kib_per_conn", 1), ("threads", "threads", 0),
    ("idle CPU %", "idle_cpu_pct", 2), ("echo p50 us", "echo_p50_us", 1), ("echo p99 us", "echo_p99_us", 1),
    ("handshake ms", "handshake_ms", 2), ("broadcast s", "broadcast_s", 3),
]
NOTES = ("open_note", "echo_note", "handshake_note", "broadcast_note", "error")


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, then a line for every note."""
    lines = ["| " + " | ".join(c[0] for c in COLUMNS) + " |", "|---" + "|---:" * (len(COLUMNS) - 1) + "|"]
    for r in results:
        cells = [r["impl"] if key == "impl" else fmt(r.get(key), d) for _, key, d in COLUMNS]
        if r.get("n_held") is not None and r["n_held"] < r["n_asked"]:
            cells[1] += " of " + fmt(r["n_asked"])
        lines.append("| " + " | ".join(cells) + " |")
    for r in results:
        for key in NOTES:
            if r.get(key):
                lines.append("- %s: %s" % (r["impl"], r[key]))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark, print the table; 0 when every figure was produced."""
    ap = argparse.ArgumentParser(prog="many-idle", description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="idle connections (default %d, --quick %d)" % (FULL_N, QUICK_N))
    ap.add_argument("--impls", default=",".join(DEFAULT_IMPLS),
                    help="implementations, comma-separated (default %s): %s" % (",".join(DEFAULT_IMPLS), ",".join(IMPLS)))
    ap.add_argument("--idle-seconds", type=float, default=None, help="the idle CPU window (default %.0f, --quick %.0f)" % (IDLE_S, QUICK_IDLE_S))
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    ap.add_argument("--quick", action="store_true", help="%d connections, a %.0f s idle window" % (QUICK_N, QUICK_IDLE_S))
    args = ap.parse_args(argv)
    impls = [x.strip() for x in args.impls.split(",") if x.strip()]
    unknown = [x for x in impls if x not in IMPLS]
    if unknown or not impls:
        ap.error("unknown implementation(s) %s (choose from %s)" % (", ".join(unknown), ", ".join(IMPLS)))
    n = args.n if args.n is not None else (QUICK_N if args.quick else FULL_N)
    if n < 1:
        ap.error("--n must be at least 1")
    idle_s = args.idle_seconds if args.idle_seconds is not None else (QUICK_IDLE_S if args.quick else IDLE_S)

    def log(msg: str) -> None:
        print("[many-idle] " + msg, file=sys.stderr, flush=True)

    n_fit, limit_note = nofile_for(n)
    if limit_note:
        print("NOTE: " + limit_note, flush=True)
    results: list[dict[str, Any]] = []
    t_start = time.monotonic()
    interrupted = False
    try:
        for impl in impls:
            results.append(run_impl(impl, n_fit, idle_s, log))
    except KeyboardInterrupt:  # run_impl's finally has killed the child; report what was measured
        interrupted = True
    meta = {"n": n, "n_run": n_fit, "limit_note": limit_note, "idle_s": idle_s, "impls": impls, "interrupted": interrupted,
            "python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count() or 0,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "wall_s": time.monotonic() - t_start, "versions": _versions(impls)}
    print("many idle connections: N = %d, idle window %.0f s, Python %s, %d CPUs%s" % (
        n_fit, idle_s, meta["python"], meta["cpus"], " (interrupted)" if interrupted else ""))
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    if interrupted:
        return 128 + signal.SIGINT
    ok = all(r.get("error") is None and r.get("n_held") == n_fit and r.get("echo_p50_us") is not None
             and r.get("handshake_ms") is not None and r.get("broadcast_s") is not None for r in results)
    return 0 if ok else 1


def _versions(impls: list[str]) -> dict[str, str]:
    """The version of each implementation's package, as this interpreter imports it (the child's is the same)."""
    import importlib

    out = {}
    for impl in impls:
        try:
            out[impl] = str(getattr(importlib.import_module(impl), "__version__", "?"))
        except ImportError:
            out[impl] = "not installed"
    return out


if __name__ == "__main__":
    sys.exit(main())

"""The main job: a server, a RemoteService in a second process, worker threads making requests, and a call each way.

``python -m syncws demo`` runs :func:`run_demo`; the peer process runs
``python -m syncws peer URL``, a :func:`demo_peer_service` that runs until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, TextIO

from ..calls.commands import current_call
from ..exceptions import RequestError, RequestTimeout, SyncWSError
from ..handlers.handlers import DataWebSocketHandler
from ..handlers.registry import ConnectionRegistry
from ..peer.remote import RemoteService
from ..server.request_handler import RequestHandler
from ..server.server import WebSocketServer
from .progress import ProgressBar

__all__ = ["run_demo", "demo_peer_service", "demo_payload", "DEMO_PEER_COMMANDS", "DEMO_SETTINGS"]

logger = logging.getLogger(__name__)


_BLOCK = 65521  # the largest prime below 2**16: a repeat never lines up with a part boundary


def demo_payload(size: int, seed: int) -> bytes:
    """Deterministic bytes that both processes can make and check: a block of
    SHAKE-128 output for the seed, repeated.

    The block's length is prime, so parts that came back swapped or shifted
    do not compare equal; and a large payload costs one copy, not a hash of
    every byte (that would cap the demo's transfer figure at the hash's speed).
    """
    block = hashlib.shake_128(seed.to_bytes(8, "big")).digest(min(size, _BLOCK))
    if size <= len(block):
        return block
    repeats, rest = divmod(size, len(block))
    return b"".join([block] * repeats + [block[:rest]])


#: The commands of the demo peer (``syncws peer``), each with the request fields it reads;
#: a field in brackets has a default.
DEMO_PEER_COMMANDS = (
    "echo data=JSON (returns data)",
    "add a=N b=N (returns a + b)",
    "getBytes size=N [seed=N, default 0] (returns N bytes, the same for the same seed)",
    "fail [why=TEXT] (raises: status 500)",
    "sleep [seconds=S, default 1] (returns after S seconds, or when the caller gives up)",
    "askServer [ask=CMD, default getSettings] (calls the server's command CMD and returns its data; `syncws serve` and `demo` answer getSettings)",
)

#: The settings the demo's server, and ``syncws serve``, answer a peer's ``getSettings`` with.
DEMO_SETTINGS: dict[str, Any] = {"TR": 2.0, "run": 3, "slices": 36}


def demo_peer_service(url: str, *, token: Optional[str] = None, sslopt: Optional[dict[str, Any]] = None, unix_socket: Optional[str] = None) -> RemoteService:
    """The demo's peer, not yet started: a RemoteService answering the commands of :data:`DEMO_PEER_COMMANDS`.

    ValueError for a URL that is not ``ws://`` or ``wss://``. A request that
    lacks a field without a default, or gives one that is not a number where
    one is wanted, is answered 500 with a ValueError saying which.
    """
    service = RemoteService(url, backoff_max=1.0, token=token, sslopt=sslopt, unix_socket=unix_socket)
    service.register("echo", lambda msg: msg.get("data"))
    service.register("add", lambda msg: _number(msg, "add", "a") + _number(msg, "add", "b"))
    service.register("getBytes", lambda msg: demo_payload(int(_number(msg, "getBytes", "size")), int(_number(msg, "getBytes", "seed", 0))))
    service.register("fail", _fail)
    service.register("sleep", _sleep)
    # The other direction: the peer asks the server (RequestHandler.register) and waits, before it answers.
    service.register("askServer", lambda msg: service.request({"cmd": msg.get("ask", "getSettings")}, timeout=10).get("data"))
    return service


def _number(msg: dict[str, Any], cmd: str, field: str, default: Optional[float] = None) -> Any:
    """The number in ``msg[field]`` (``default`` when missing); ValueError naming the command and field otherwise."""
    value = msg.get(field, default)
    if value is None:
        raise ValueError(f"{cmd} needs {field}=N")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{cmd}: {field} must be a number, not {value!r}")
    return value


def _sleep(msg: dict[str, Any]) -> str:
    seconds = float(_number(msg, "sleep", "seconds", 1))
    call = current_call()
    if call is not None and call.wait_cancelled(seconds):
        return "cancelled"  # the caller gave up: nobody reads this reply
    return "slept"


def _fail(msg: dict[str, Any]) -> None:
    raise ValueError(f"asked to fail: {msg.get('why', 'no reason')}")


class _Tally:
    """Counts and latencies from many worker threads; ``lock`` guards the fields."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.bytes_moved = 0

    def add(self, outcome: str, latency: float, nbytes: int = 0) -> None:
        with self.lock:
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
            self.latencies.append(latency)
            self.bytes_moved += nbytes


def _one_request(handler: RequestHandler, i: int, tally: _Tally, progress: Optional[TextIO]) -> None:
    kind = ("json", "json", "json", "bytes")[i % 4]
    if i == 7:
        kind = "fail"
    elif i == 11:
        kind = "timeout"
    started = time.perf_counter()
    try:
        if kind == "json":
            reply = handler.doRequest({"cmd": "echo", "data": {"i": i, "values": list(range(10))}}, timeout=10)
            ok = reply["data"]["i"] == i
            tally.add("ok" if ok else "mismatch", time.perf_counter() - started)
        elif kind == "bytes":
            size = (1 + i % 5) * 1024 * 1024
            reply = handler.doRequest({"cmd": "getBytes", "size": size, "seed": i}, timeout=30)
            ok = reply["data"] == demo_payload(size, i)
            tally.add("ok" if ok else "mismatch", time.perf_counter() - started, size)
        elif kind == "fail":
            handler.doRequest({"cmd": "fail", "why": "demonstration"}, timeout=10)
            tally.add("mismatch", time.perf_counter() - started)
        else:
            handler.doRequest({"cmd": "sleep", "seconds": 2.0}, timeout=0.5)
            tally.add("mismatch", time.perf_counter() - started)
    except RequestError as exc:
        if kind != "fail":
            logger.warning("request %d (%s) failed: %s", i, kind, exc)
        tally.add("error reply (expected)" if kind == "fail" else f"error {exc.status}", time.perf_counter() - started)
    except RequestTimeout:
        tally.add("timeout (expected)" if kind == "timeout" else "timeout", time.perf_counter() - started)
    except SyncWSError as exc:
        tally.add(type(exc).__name__, time.perf_counter() - started)


def run_demo(requests: int = 400, threads: int = 8, out: TextIO = sys.stdout) -> int:
    """Run the demo and print a report; return 0 when every reply matched its request."""
    server = WebSocketServer(registry=ConnectionRegistry()).start()
    handler = RequestHandler("wsData", server)
    # A command peers may call: the server answers too (docs/protocol.md).
    handler.register("getSettings", lambda request, conn: DEMO_SETTINGS)
    server.add_handler("/wsData", DataWebSocketHandler, name="wsData", callback=handler.callback)
    print(f"server listening on {server.url}; starting a RemoteService peer process", file=out, flush=True)
    peer = subprocess.Popen([sys.executable, "-m", "syncws", "peer", server.url + "/wsData"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not server.registry.connections("wsData"):
            if time.monotonic() > deadline or peer.poll() is not None:
                print("the peer did not connect", file=out)
                return 1
            threading.Event().wait(0.05)
        tally = _Tally()
        print(f"{threads} worker threads making {requests} mixed requests ...", file=out, flush=True)
        started = time.perf_counter()
        with ThreadPoolExecutor(threads, thread_name_prefix="demo-worker") as pool:
            for i in range(requests):
                pool.submit(_one_request, handler, i, tally, None)
        elapsed = time.perf_counter() - started
        _report(tally, elapsed, out)
        _large_transfer(handler, out)
        _both_ways(handler, out)
        bad = sum(n for k, n in tally.outcomes.items() if "expected" not in k and k != "ok")
        return 0 if bad == 0 else 1
    finally:
        peer.terminate()  # SIGTERM: the peer stops its RemoteService and exits 0
        try:
            peer.wait(5)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait(5)
        server.stop()


def _large_transfer(handler: RequestHandler, out: TextIO, size: int = 64 * 1024 * 1024) -> None:
    """One large bytes result, with a progress bar, checked byte for byte."""
    print(f"one {size >> 20} MiB transfer:", file=out, flush=True)
    bar = ProgressBar(out, "  ")
    started = time.perf_counter()
    reply = handler.doRequest({"cmd": "getBytes", "size": size, "seed": 7}, timeout=30, progress=bar.update)
    elapsed = time.perf_counter() - started
    bar.finish()
    intact = reply["data"] == demo_payload(size, 7)
    print(f"  {'intact' if intact else 'DAMAGED'}, {size / 2**20 / elapsed:.0f} MiB/s", file=out, flush=True)


def _both_ways(handler: RequestHandler, out: TextIO) -> None:
    """One call each way on the same connection: the server asks the peer's askServer, which asks the server's getSettings."""
    started = time.perf_counter()
    reply = handler.doRequest({"cmd": "askServer", "ask": "getSettings"}, timeout=15)
    elapsed = (time.perf_counter() - started) * 1000
    print("both ways on one connection: the server asked the peer, which asked the server's getSettings first:", file=out)
    print(f"  {reply['data']} in {elapsed:.1f} ms", file=out, flush=True)


def _report(tally: _Tally, elapsed: float, out: TextIO) -> None:
    lat = sorted(tally.latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    print(f"done in {elapsed:.2f} s", file=out)
    for outcome, count in sorted(tally.outcomes.items()):
        print(f"  {outcome:<24} {count:>6}", file=out)
    print(f"  latency p50 {p50:.2f} ms, p99 {p99:.2f} ms", file=out)
    mib = tally.bytes_moved / 2**20
    print(f"  bytes moved {mib:.1f} MiB, {mib / elapsed:.1f} MiB/s overall", file=out, flush=True)

"""The benchmark's child processes: ``python -m benchmarks.peers ROLE ...``.

Every role runs in its own process so that each implementation's server
side can be measured (RSS, threads, peak memory) without the benchmark
driver's own allocations, and so that client and server never share a GIL.
The driver (``benchmarks.run``) starts them from the directory that holds the
``benchmarks`` package, and stops them.

Roles (all traffic is on 127.0.0.1 only; every process has an alarm so it
can never outlive the benchmark by more than its time limit):

    serve IMPL
        Starts IMPL's websocket server (or the raw TCP floor) with the
        endpoints /echo, /bulkup, /bulkdown, /fanout and /idle, prints
        {"port": N} and then obeys line commands on stdin:
        "stat", "count PATH", "bcast SIZE", "jbcast SEED" (a JSON update), "quit".
    reqserver IMPL WORKLOAD PARAMS_JSON
        Starts IMPL's request server, spawns a `reqpeer` process that
        answers the requests, runs WORKLOAD (latency, throughput, large)
        from worker threads and prints the figures as one JSON line.
    reqpeer IMPL URL
        The remote service answering {"cmd": "echo"}, {"cmd": "blob"} and {"cmd": "json"}.
    cluster-node, cluster-caller, cluster-peer ...
        The cluster group's nodes, caller without a server and peer: see
        benchmarks.cluster_peers.
    idle-serve IMPL MAX_CONNECTIONS [PING_INTERVAL]
        The many-idle benchmark's server (/idle, /echo, /fanout): prints
        {"port": N, "pid": P} and runs until "quit" or EOF on stdin; see
        benchmarks.many_idle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from .common import emit, implementation, json_message, measure, proc_status, raise_nofile

PROCESS_TIME_LIMIT = 900  # seconds; SIGALRM kills any peer left behind


def command(role: str, *args: str) -> list[str]:
    """The command line of a child process in ``role``, run from the directory holding the package."""
    return [sys.executable, "-m", f"{__package__}.peers", role, *args]


def package_parent() -> str:
    """The directory that holds the ``benchmarks`` package: the working directory of its child processes."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------
# role: serve IMPL  (echo / bulk / fan-out / idle servers)
# --------------------------------------------------------------------------
def role_serve(impl: str) -> None:
    """Serve IMPL's endpoints and obey the driver's line commands until "quit" or EOF."""
    srv = implementation(impl).Serve(impl)
    emit({"port": srv.port, "pid": os.getpid()})
    while True:  # one command per line; ends on EOF, "quit" or the alarm
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
        elif cmd == "jbcast":
            msg = json.dumps(json_message(int(parts[1])))
            t0 = time.monotonic()
            srv.broadcast(msg)
            emit({"t0": t0, "t1": time.monotonic(), "size": len(msg)})
        elif cmd == "quit":
            break
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------
# role: reqserver IMPL WORKLOAD PARAMS  (request pattern, server side)
# --------------------------------------------------------------------------
def role_reqserver(impl: str, workload: str, params: dict[str, Any]) -> None:
    """Serve requests to a ``reqpeer`` child, measure ``workload``, print its figures, stop the child."""
    peer = None
    try:
        req = implementation(impl).Requester(impl)
        peer = subprocess.Popen(command("reqpeer", impl, req.url), cwd=package_parent(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        req.wait_connected(15)
        for i in range(20):  # warm-up
            r = req.doRequest({"cmd": "echo", "x": i}, timeout=10)
            if r.get("data") != i:
                raise RuntimeError(f"bad echo reply: {r!r}")
        emit(measure(req, workload, params))
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
def role_reqpeer(impl: str, url: str) -> None:
    """Answer requests on ``url`` until the connection ends."""
    try:
        implementation(impl).run_peer(impl, url)
    except (OSError, EOFError):
        pass
    os._exit(0)


def main(argv: list[str]) -> int:
    """Run one role; a failure is printed to stderr and exits 1 at once, whatever threads remain."""
    signal.alarm(PROCESS_TIME_LIMIT)
    raise_nofile()
    role = argv[0] if argv else ""
    try:
        if role == "serve":
            role_serve(argv[1])
        elif role == "reqserver":
            role_reqserver(argv[1], argv[2], json.loads(argv[3]) if len(argv) > 3 else {})
        elif role == "reqpeer":
            role_reqpeer(argv[1], argv[2])
        elif role == "idle-serve":
            from .many_idle import serve_role  # here, so that no other role's process imports it

            serve_role(*argv[1:4])
        elif role.startswith("cluster-"):
            from .cluster_peers import ROLES  # here, so that no other role's process imports syncws

            if role not in ROLES:
                raise SystemExit(f"unknown role {role!r}")
            ROLES[role](*argv[1:])
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

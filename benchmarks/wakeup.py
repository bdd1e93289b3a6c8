"""What a thread hand-off costs on this machine: one request's round trip with and without waking a thread.

    python -m benchmarks.wakeup [--n 3000] [--reps 3]

A child process echoes what it reads on a loopback TCP connection. This
process sends 40 bytes and waits for the echo three ways, ``n`` times each
(after 300 to warm up), and prints the p50 of each:

* ``reader thread, recv``: a reader thread blocked in ``recv`` releases a
  lock the caller waits on (the thread engine's way, and the raw floor's);
* ``reader thread, epoll``: the same reader waits in ``epoll_wait`` first
  (the selector engine's loop thread);
* ``caller reads``: the caller waits in ``epoll_wait`` and reads the echo
  itself (a caller that leads the loop, ``syncws.reactor.caller_lead``).

No syncws inside: the difference between the first two and the last is the
wake-up of one thread by another. The processes run where the scheduler
puts them: on one core, a round trip without a hand-off is much shorter
still. Everything is on 127.0.0.1; the child ends when its socket closes.
"""

from __future__ import annotations

import argparse
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable

ECHO = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = s.recv(65536)
    if not data:
        break
    s.sendall(data)
"""


def _connect_child() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    listener = socket.create_server(("127.0.0.1", 0))
    child: subprocess.Popen[bytes] = subprocess.Popen([sys.executable, "-c", ECHO, str(listener.getsockname()[1])])
    listener.settimeout(10)
    conn, _ = listener.accept()
    listener.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn, child


def _reader_thread(conn: socket.socket, use_epoll: bool) -> Callable[[], None]:
    """Start a reader that releases a lock per echo; return the caller's wait."""
    arrived = threading.Lock()
    arrived.acquire()

    def read() -> None:
        poller = None
        if use_epoll:
            poller = select.epoll()
            poller.register(conn.fileno(), select.EPOLLIN)
        while True:  # until the connection closes
            if poller is not None:
                poller.poll(30.0)
            if not conn.recv(65536):
                return
            arrived.release()

    threading.Thread(target=read, name="wakeup-reader", daemon=True).start()

    def wait() -> None:
        if not arrived.acquire(timeout=30):
            raise TimeoutError("no echo within 30 s")

    return wait


def _caller_reads(conn: socket.socket) -> Callable[[], None]:
    poller = select.epoll()
    poller.register(conn.fileno(), select.EPOLLIN)

    def wait() -> None:
        for _ in range(1000):  # until the echo is in (one ready event is enough)
            poller.poll(30.0)
            if conn.recv(65536):
                return

    return wait


def measure(kind: str, n: int) -> float:
    """p50 of ``n`` round trips, in µs, for one way of waiting."""
    conn, child = _connect_child()
    try:
        if kind == "caller reads":
            wait = _caller_reads(conn)
        else:
            wait = _reader_thread(conn, use_epoll=kind == "reader thread, epoll")
        message = b"q" * 40
        times = []
        for i in range(n + 300):
            started = time.perf_counter()
            conn.sendall(message)
            wait()
            if i >= 300:
                times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6
    finally:
        conn.shutdown(socket.SHUT_RDWR)  # the child sees the end, and a reader blocked in recv wakes
        conn.close()
        child.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000, help="round trips per measurement (default 3000)")
    parser.add_argument("--reps", type=int, default=3, help="measurements of each kind (default 3)")
    args = parser.parse_args()
    for kind in ("reader thread, recv", "reader thread, epoll", "caller reads"):
        p50s = [measure(kind, args.n) for _ in range(args.reps)]
        print(f"{kind:22s} p50 " + ", ".join(f"{p:.1f}" for p in p50s) + " us")


if __name__ == "__main__":
    main()

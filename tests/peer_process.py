"""A RemoteService peer in its own process, for the request tests.

Run as ``python tests/peer_process.py URL [--part-size N] [--workers N] [--ask N --threads T]``.
It connects to URL, prints ``READY`` once connected and serves until its
stdin closes or it is killed (and at most ``LIFETIME`` seconds, by SIGALRM).
With ``--ask-hold``, one thread calls the server's ``hold`` command. With ``--ask N``, T threads then call the server N times each with
:func:`mixed_request` (``service.request``) and the process prints
``ASKED <replies checked> <errors>`` and the first errors, one per line.

Commands:

* ``echo``: returns ``msg["x"]``.
* ``bytes``: returns :func:`det_bytes` of ``msg["seed"]`` and ``msg["size"]``.
* ``sleep``: blocks ``msg["seconds"]``, then returns ``"slept"``.
* ``array``: a float64 numpy array of ``msg["n"]`` values from ``msg["seed"]``.
* ``fail``: raises ``ValueError("boom")``.
* ``block``: prints ``BLOCKED`` on stdout, then blocks until the process
  ends (at most ``LIFETIME`` seconds).

The tests import :func:`det_bytes` to check what came back, and
:func:`register_mixed` and :func:`mixed_request` to run the same mixed
workload the other way (the server's commands, its threads' requests).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
from typing import Any, Callable

LIFETIME = 60  # seconds: no peer outlives a test run by more than this

_PRIME_BLOCK = 65521  # largest prime below 2**16: a repeat never lines up with a part boundary


def det_bytes(seed: int, size: int) -> bytes:
    """Deterministic bytes for ``seed``: random up to 64 KiB, then that random block repeated.

    The block length is prime, so parts of any power-of-two size that came back
    swapped or shifted do not compare equal; and 20 MiB cost a copy, not 20 MiB
    of random numbers.
    """
    block = random.Random(seed).randbytes(min(size, _PRIME_BLOCK))
    if size <= len(block):
        return block
    repeats = -(-size // len(block))
    return (block * repeats)[:size]


def det_array(seed: int, n: int) -> Any:
    """A float64 array of ``n`` values, deterministic for ``seed``."""
    import numpy

    return numpy.random.default_rng(seed).standard_normal(n)


def register_mixed(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register echo, bytes, array and fail with ``register(cmd, fn)``; each fn takes the request first."""
    register("echo", lambda msg, *conn: msg["x"])
    register("bytes", lambda msg, *conn: det_bytes(int(msg["seed"]), int(msg["size"])))
    register("array", lambda msg, *conn: det_array(int(msg["seed"]), int(msg["n"])))

    def fail(msg: dict, *conn: Any) -> None:
        raise ValueError("boom")

    register("fail", fail)


def mixed_request(call: Callable[[dict], dict], k: int, i: int, rng: random.Random) -> str:
    """Request ``i`` of thread ``k`` of the mixed workload through ``call(msg)``, checked; returns its kind.

    One in 100 is bytes from 256 KiB to 20 MiB (exactly 20 MiB for thread
    0's first); the rest JSON, small bytes, arrays and a failing command.
    Raises AssertionError for a wrong reply.
    """
    seed = k * 100_000 + i
    if i % 100 == 50:
        size = 20 << 20 if (k == 0 and i == 50) else int(2 ** rng.uniform(18, 24.32))
        reply = call({"cmd": "bytes", "seed": seed, "size": size})
        assert type(reply["data"]) is bytes and reply["data"] == det_bytes(seed, size), f"large bytes {size} wrong"
        return "large"
    choice = rng.random()
    if choice < 0.4:
        x = {"k": k, "i": i, "seed": seed}
        reply = call({"cmd": "echo", "x": x})
        assert reply["data"] == x and reply["cmd"] == "echo" and reply["status"] == 200, f"echo wrong: {str(reply)[:200]}"
        return "echo"
    if choice < 0.7:
        size = rng.randint(0, 5000)
        reply = call({"cmd": "bytes", "seed": seed, "size": size})
        assert reply["data"] == det_bytes(seed, size), "small bytes wrong"
        return "small"
    if choice < 0.9:
        n = rng.randint(0, 2000)
        reply = call({"cmd": "array", "seed": seed, "n": n})
        assert reply["data"].shape == (n,) and (reply["data"] == det_array(seed, n)).all(), "array wrong"
        return "array"
    import syncws

    try:
        call({"cmd": "fail"})
    except syncws.RequestError as exc:
        assert exc.status == 500 and "ValueError: boom" in str(exc), f"fail wrong: {exc!r}"
        return "fail"
    raise AssertionError("a failing command returned")


def run_mixed(call: Callable[[dict], dict], threads: int, per_thread: int, budget: float) -> tuple[dict[str, int], list[str]]:
    """``threads`` threads making ``per_thread`` mixed requests each through ``call``: (counts per kind, errors)."""
    counts: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        rng = random.Random(k)
        for i in range(per_thread):
            try:
                kind = mixed_request(call, k, i, rng)
            except Exception as exc:  # collected and reported by the caller
                with lock:
                    errors.append(f"thread {k} request {i}: {exc!r}"[:300])
                    if len(errors) > 20:
                        return
                continue
            with lock:
                counts[kind] = counts.get(kind, 0) + 1

    workers = [threading.Thread(target=worker, args=(k,), name=f"mixed-{k}", daemon=True) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(budget)
    if any(w.is_alive() for w in workers):
        errors.append("workers still running")
    return counts, errors


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--part-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--ask", type=int, default=0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--ask-hold", action="store_true")
    args = parser.parse_args(argv)

    if hasattr(signal, "alarm"):
        signal.alarm(LIFETIME)

    import syncws

    ending = threading.Event()
    print_lock = threading.Lock()
    options = {"workers": args.workers, "backoff_min": 0.05, "backoff_max": 0.5}
    if args.part_size is not None:
        options["part_size"] = args.part_size
    service = syncws.RemoteService(args.url, **options)

    @service.command("sleep")
    def pause(msg: dict) -> str:  # waits on an event that ends with the process, not a sleep
        ending.wait(float(msg["seconds"]))
        return "slept"

    register_mixed(service.register)

    @service.command("block")
    def block(msg: dict) -> str:
        with print_lock:
            print("BLOCKED", flush=True)
        ending.wait(LIFETIME)
        return "unblocked"

    service.start(timeout=20)
    with print_lock:
        print("READY", flush=True)
    if args.ask_hold:  # a request to the server's "hold" command that never ends on its own
        threading.Thread(target=lambda: service.request({"cmd": "hold"}, timeout=LIFETIME), daemon=True).start()
    if args.ask:
        counts, errors = run_mixed(lambda msg: service.request(msg, timeout=30), args.threads, args.ask, LIFETIME - 10)
        with print_lock:
            print(f"ASKED {sum(counts.values())} {len(errors)}", flush=True)
            for error in errors[:5]:
                print(error, flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin
    finally:
        ending.set()
        service.stop()
        sys.stdout.flush()
        os._exit(0)  # do not wait for worker threads still inside a command


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

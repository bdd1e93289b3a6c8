"""A RemoteService peer in its own process, for the request tests.

Run as ``python tests/peer_process.py URL [--part-size N] [--workers N]``.
It connects to URL, prints ``READY`` once connected and serves until its
stdin closes or it is killed (and at most ``LIFETIME`` seconds, by SIGALRM).

Commands:

* ``echo``: returns ``msg["x"]``.
* ``bytes``: returns :func:`det_bytes` of ``msg["seed"]`` and ``msg["size"]``.
* ``sleep``: blocks ``msg["seconds"]``, then returns ``"slept"``.
* ``fail``: raises ``ValueError("boom")``.
* ``block``: prints ``BLOCKED`` on stdout, then blocks until the process
  ends (at most ``LIFETIME`` seconds).

The tests import :func:`det_bytes` to check what came back.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading

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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--part-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=16)
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

    @service.command("echo")
    def echo(msg: dict) -> object:
        return msg["x"]

    @service.command("bytes")
    def make_bytes(msg: dict) -> bytes:
        return det_bytes(int(msg["seed"]), int(msg["size"]))

    @service.command("sleep")
    def sleep(msg: dict) -> str:
        ending.wait(float(msg["seconds"]))
        return "slept"

    @service.command("fail")
    def fail(msg: dict) -> None:
        raise ValueError("boom")

    @service.command("block")
    def block(msg: dict) -> str:
        with print_lock:
            print("BLOCKED", flush=True)
        ending.wait(LIFETIME)
        return "unblocked"

    service.start(timeout=20)
    with print_lock:
        print("READY", flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin
    finally:
        ending.set()
        service.stop()
        sys.stdout.flush()
        os._exit(0)  # do not wait for worker threads still inside a command


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

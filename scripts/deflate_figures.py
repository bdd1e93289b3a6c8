#!/usr/bin/env python3
"""The figures behind permessage-deflate's defaults (docs/tuning.md): ratio, time and memory per setting.

Usage::

    python scripts/deflate_figures.py [--messages N]

For a feed of JSON dashboard updates (the benchmark's ``json_message``,
about 1.5 KB each, keys repeating and numbers not), compressed one message at
a time with context takeover as syncws does, it prints for each window size,
memory level and compression level: the compressed size as a share of the
text, the time to compress and to inflate one message, and the memory of one
compressor and one inflater (traced allocations). Then the share saved for
small messages (what ``min_size`` is about), and the speed of compressing
incompressible and all-zero binary data against the speed of sending it
(what ``compress_binary`` is about). Runs in a few seconds; no sockets.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
import zlib

from benchmarks.common import json_message
from syncws.protocol.deflate import Agreement, DeflateOptions, PerMessageDeflate

SETTINGS = [(15, 8, 6), (15, 8, 1), (12, 5, 6), (12, 5, 1), (10, 4, 1), (9, 1, 1)]  # (window bits, memory level, level)


def codec_pair(bits: int, mem_level: int, level: int) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A server's codec with these settings, and a client's that inflates what it sends."""
    options = DeflateOptions(window_bits=bits, mem_level=mem_level, level=level)
    agreement = Agreement(server_max_window_bits=bits)
    return PerMessageDeflate(agreement, False, options), PerMessageDeflate(agreement, True, options)


def feed(count: int) -> list[bytes]:
    """The messages: JSON updates as UTF-8."""
    return [json.dumps(json_message(seed)).encode() for seed in range(count)]


def traced(make: object) -> int:
    """Bytes held by what ``make()`` returns, after one use (zlib allocates through PyMem_Raw, which tracemalloc traces)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = make()  # type: ignore[operator]
        after = tracemalloc.get_traced_memory()[0]
        del keep
        return after - before
    finally:
        tracemalloc.stop()


def settings_table(messages: list[bytes]) -> None:
    text = sum(map(len, messages))
    print(f"{len(messages)} JSON updates, {text / len(messages):.0f} bytes each on average, context takeover")
    print("| window bits | mem level | level | compressed / text | compress us/msg | inflate us/msg | compressor KiB | inflater KiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for bits, mem_level, level in SETTINGS:
        server, client = codec_pair(bits, mem_level, level)
        t0 = time.perf_counter()
        wire = [server.compress(m) for m in messages]
        t1 = time.perf_counter()
        for w in wire:
            client.inflate(w, None)
            client.end_message(None)
        t2 = time.perf_counter()

        def compressor(bits: int = bits, mem_level: int = mem_level, level: int = level) -> object:
            s, _ = codec_pair(bits, mem_level, level)
            s.compress(messages[0])
            return s

        def inflater(bits: int = bits, mem_level: int = mem_level, level: int = level) -> object:
            s, c = codec_pair(bits, mem_level, level)
            c.inflate(s.compress(messages[0]), None)
            return c

        print(
            f"| {bits} | {mem_level} | {level} | {sum(map(len, wire)) / text:.2f} | {(t1 - t0) / len(messages) * 1e6:.1f} "
            f"| {(t2 - t1) / len(messages) * 1e6:.1f} | {traced(compressor) / 1024:.0f} | {traced(inflater) / 1024:.0f} |"
        )


def small_messages() -> None:
    defaults = DeflateOptions()
    print("\nsmall messages (defaults, after 200 earlier messages of the same kind):")
    print("| text bytes | compressed bytes | compress us |")
    print("|---:|---:|---:|")
    for size in (16, 32, 64, 128, 256):
        server = PerMessageDeflate(Agreement(), False, defaults)
        samples = [json.dumps({"cmd": "tick", "n": i, "v": os.urandom(size).hex()})[:size].encode() for i in range(400)]
        for m in samples[:200]:
            server.compress(m)
        t0 = time.perf_counter()
        out = [server.compress(m) for m in samples[200:]]
        elapsed = (time.perf_counter() - t0) / 200
        print(f"| {size} | {sum(map(len, out)) / 200:.0f} | {elapsed * 1e6:.1f} |")


def binary_speed() -> None:
    defaults = DeflateOptions()
    size = 16 * 1024 * 1024
    print("\nbinary, 16 MiB in one message (defaults):")
    print("| data | compressed / data | compress MB/s |")
    print("|---|---:|---:|")
    for name, data in (("random (incompressible)", os.urandom(size)), ("zeros", bytes(size))):
        server = PerMessageDeflate(Agreement(), False, defaults)
        t0 = time.perf_counter()
        out = server.compress(data)
        elapsed = time.perf_counter() - t0
        print(f"| {name} | {len(out) / size:.3f} | {size / elapsed / 1e6:.0f} |")
    t0 = time.perf_counter()
    zlib.crc32(bytes(size))
    print(f"(for scale: zlib.crc32 of the same runs at {size / (time.perf_counter() - t0) / 1e6:.0f} MB/s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="JSON updates in the feed (default 2000)")
    args = parser.parse_args()
    settings_table(feed(args.messages))
    small_messages()
    binary_speed()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

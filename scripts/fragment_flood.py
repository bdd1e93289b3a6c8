"""How much server memory a message of millions of empty fragments costs.

Starts ``syncws serve`` in a child process, opens a raw websocket connection
to its /echo endpoint, begins a binary message and sends ``--frames`` empty
continuation frames in batches, each batch followed by a ping whose pong is
awaited (so the server has read everything before its memory is measured).
Prints the server's resident memory before and after, and checks that the
message, once finished, comes back whole.

    python scripts/fragment_flood.py --frames 3000000
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import socket
import subprocess
import sys
import time

from syncws import frames


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def read_frame(sock: socket.socket, buffer: bytearray) -> tuple[int, bytes]:
    def need(n: int) -> None:
        while len(buffer) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            buffer.extend(chunk)

    need(2)
    opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
    start = 2 + {126: 2, 127: 8}.get(length, 0)
    need(start)
    if length >= 126:
        length = int.from_bytes(buffer[2:start], "big")
    need(start + length)
    payload = bytes(buffer[start : start + length])
    del buffer[: start + length]
    return opcode, payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, "-m", "syncws", "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        port = int(re.search(r"ws://127\.0\.0\.1:(\d+)/", banner).group(1))  # type: ignore[union-attr]
        sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        sock.sendall(f"{upgrade}Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        buffer = bytearray()
        mask = os.urandom(4)
        sock.sendall(frames.encode_frame(frames.OP_BINARY, b"a", fin=False, mask_key=mask))
        ping = frames.encode_frame(frames.OP_PING, b"sync", mask_key=mask)
        sock.sendall(ping)
        assert read_frame(sock, buffer) == (frames.OP_PONG, b"sync")
        before = rss_kib(server.pid)
        batch = frames.encode_frame(frames.OP_CONTINUATION, b"", fin=False, mask_key=mask) * args.batch
        started = time.monotonic()
        for _ in range(args.frames // args.batch):
            sock.sendall(batch)
            sock.sendall(ping)
            assert read_frame(sock, buffer) == (frames.OP_PONG, b"sync"), "no pong"
        after = rss_kib(server.pid)
        sock.sendall(frames.encode_frame(frames.OP_CONTINUATION, b"z", mask_key=mask))
        echoed = read_frame(sock, buffer)
        sent = args.frames // args.batch * args.batch
        print(f"{sent:,} empty continuation frames ({sent * 6 / 1e6:.1f} MB on the wire) in {time.monotonic() - started:.1f} s")
        print(f"server RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: growth {(after - before) / 1024:.2f} MiB")
        print(f"pings answered after every batch; the finished message echoed back as {echoed[1]!r}")
        sock.close()
        return 0 if echoed == (frames.OP_BINARY, b"az") else 1
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())

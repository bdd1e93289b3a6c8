"""Many worker threads making requests at once through one RequestHandler.

What it shows: ``doRequest`` is safe from any number of threads. A
ThreadPoolExecutor makes a few hundred requests concurrently (small JSON ones
and some bytes); each call blocks only its own worker, replies are matched to
their callers by callId, and the peer (a RemoteService, here on a thread of
this process for brevity) answers them on its own worker pool.

Run it:

    python examples/thread_pool.py                       # 300 requests on 8 threads
    python examples/thread_pool.py --requests 2000 --threads 16

Everything stays on 127.0.0.1 (a free port unless --port is given).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import syncws


def payload(i: int, size: int) -> bytes:
    """Bytes that depend on the request, so that a reply matched to the wrong caller would show."""
    return (i.to_bytes(4, "big") * (size // 4 + 1))[:size]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    parser.add_argument("--requests", type=int, default=300, help="number of requests (default 300)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    args = parser.parse_args()

    server = syncws.WebSocketServer("127.0.0.1", args.port, registry=syncws.ConnectionRegistry()).start()
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)

    service = syncws.RemoteService(server.url + "/wsData", workers=8)
    service.register("square", lambda msg: msg["x"] * msg["x"])
    service.register("blob", lambda msg: payload(msg["i"], msg["size"]))
    try:
        service.start(timeout=10)

        def one(i: int) -> bool:
            """One request (a worker thread): every fifth asks for bytes, the rest for a square."""
            if i % 5 == 0:
                size = 64 * 1024 + i
                return handler.doRequest({"cmd": "blob", "i": i, "size": size}, timeout=30)["data"] == payload(i, size)
            return handler.doRequest({"cmd": "square", "x": i}, timeout=30)["data"] == i * i

        started = time.perf_counter()
        good = bad = 0
        with ThreadPoolExecutor(args.threads, thread_name_prefix="worker") as pool:
            futures = [pool.submit(one, i) for i in range(args.requests)]
            for future in as_completed(futures, timeout=120):
                try:
                    if future.result():
                        good += 1
                    else:
                        bad += 1
                except syncws.SyncWSError as exc:
                    print(f"request failed: {exc}")
                    bad += 1
        elapsed = time.perf_counter() - started
        print(f"{args.requests} requests on {args.threads} threads in {elapsed:.2f} s ({args.requests / elapsed:.0f} requests/s)")
        print(f"correct replies: {good}, wrong or failed: {bad}")
        return 0 if bad == 0 and good == args.requests else 1
    finally:
        service.stop()
        server.stop()


if __name__ == "__main__":
    sys.exit(main())

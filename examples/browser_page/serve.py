"""A browser tab as a syncws peer: the server asks the page for things and prints the answers.

What it shows: a page that loads the JavaScript client (``/syncws.js``, served
by the server itself with ``add_static``) and answers requests with its own
functions, JSON and binary (a canvas's pixels), plus an error and a broadcast.
The Python side is the same RequestHandler that talks to a RemoteService.

Run it interactively and open the printed address in a browser on this machine:

    python examples/browser_page/serve.py --port 8888
    # then open http://127.0.0.1:8888/ ; it waits up to --wait seconds for the page

or let it start a headless Chromium by itself (needs ``chromium`` on PATH):

    python examples/browser_page/serve.py --selftest

Everything stays on 127.0.0.1 (a free port unless --port is given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Optional

import syncws
from syncws.static import javascript_client

HERE = Path(__file__).resolve().parent

#: Chromium without a display, as root in a container, and with nothing fetched from outside.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(url: str, profile: str, browser: str) -> subprocess.Popen:
    """Start a headless Chromium on ``url`` in its own process group (so that all of it can be killed)."""
    return subprocess.Popen(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def ask_the_page(handler: syncws.RequestHandler) -> bool:
    """Make the page's requests and print what came back; True when every answer was as expected."""
    ok = True
    hello = handler.doRequest({"cmd": "hello"}, timeout=10)["data"]
    print(f"hello -> user agent {hello['userAgent']!r}, language {hello['language']}, page {hello['page']}")

    values = list(range(1, 101))
    total = handler.doRequest({"cmd": "sum", "values": values}, timeout=10)["data"]
    print(f"sum of 1..100 -> {total}")
    ok = ok and total == 5050

    print(f"wait -> {handler.doRequest({'cmd': 'wait', 'ms': 200}, timeout=10)['data']}")

    color = [30, 144, 255]
    pixels = handler.doRequest({"cmd": "drawing", "color": color}, timeout=10)["data"]
    first = list(pixels[:4])
    print(f"drawing -> {len(pixels)} bytes of RGBA pixels (64x48), first pixel {first}")
    ok = ok and len(pixels) == 64 * 48 * 4 and first == [*color, 255]

    try:
        handler.doRequest({"cmd": "fail", "why": "just showing"}, timeout=10)
        print("fail -> no error?!")
        ok = False
    except syncws.RequestError as exc:
        print(f"fail -> RequestError status {exc.status}: {exc.error}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the page to connect (default 120)")
    parser.add_argument("--selftest", action="store_true", help="start a headless Chromium on the page instead of waiting for you")
    parser.add_argument("--browser", default="chromium", help="the Chromium executable for --selftest (default: chromium)")
    args = parser.parse_args()

    connected = threading.Event()
    registry = syncws.ConnectionRegistry()
    server = syncws.WebSocketServer("127.0.0.1", args.port, registry=registry).start()
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler(
        "/wsData",
        syncws.DataWebSocketHandler,
        name="wsData",
        callback=handler.callback,
        connNotify=lambda name, event: connected.set() if event == "open" else None,
    )
    page = (HERE / "index.html").read_bytes()
    server.add_static("/", page)
    server.add_static("/index.html", page)
    server.add_static("/syncws.js", javascript_client(), "text/javascript; charset=utf-8")
    address = f"http://127.0.0.1:{server.port}/"

    browser: Optional[subprocess.Popen] = None
    profile = tempfile.mkdtemp(prefix="syncws-example-chromium-")
    try:
        if args.selftest:
            executable = shutil.which(args.browser)
            if executable is None:
                print(f"--selftest needs {args.browser!r} on PATH", file=sys.stderr)
                return 2
            print(f"serving {address}; starting headless Chromium on it", flush=True)
            browser = launch_chromium(address, profile, executable)
        else:
            print(f"serving {address}; open it in a browser (waiting up to {args.wait:.0f} s)", flush=True)
        if not connected.wait(args.wait):
            print("no page connected", file=sys.stderr)
            return 1
        print("the page connected")
        ok = ask_the_page(handler)
        syncws.sendWebSocketMessage("wsData", {"cmd": "done", "text": "thank you, that is all"}, registry=registry)
        print("done" if ok else "FAILED: an answer was not as expected")
        return 0 if ok else 1
    finally:
        if browser is not None:
            try:
                os.killpg(browser.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            browser.wait(10)
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Make docs/status-page.png: the status page of a server under a little load, as headless Chromium shows it.

Run ``python docs/make_status_picture.py`` (needs ``chromium`` on PATH). It
starts a server on 127.0.0.1 with a status page, a RemoteService peer and a
few echo clients that come and go, makes requests at a rate that rises and
falls (some fail, more of them for a while), lets the page collect about
45 seconds of samples, and saves a 1200x900 screenshot through the DevTools
protocol. Everything it starts it stops; it takes about a minute.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

import syncws
from syncws.server.endpoints import EchoHandler

OUT = Path(__file__).resolve().with_name("status-page.png")
HISTORY = 45.0  # seconds of samples on the page when the picture is taken
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def serve() -> tuple[syncws.WebSocketServer, syncws.RequestHandler, syncws.RemoteService]:
    """A server with /echo, /wsData (a RequestHandler and its peer) and the status page."""
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry()).start()
    server.add_handler("/echo", EchoHandler, name="echo")
    handler = syncws.RequestHandler("wsData", server)
    server.add_handler("/wsData", syncws.DataWebSocketHandler, name="wsData", callback=handler.callback)
    server.add_status_page()
    peer = syncws.RemoteService(server.url + "/wsData")

    @peer.command("compute")
    def compute(msg: dict[str, Any]) -> dict[str, Any]:
        time.sleep(min(0.2, random.expovariate(1 / 0.012)))  # a few ms, now and then much longer
        if random.random() < msg["fail"]:
            raise ValueError("no such volume")
        return {"ok": True}

    peer.start(timeout=10)
    return server, handler, peer


def load(handler: syncws.RequestHandler, started: float, stop: threading.Event) -> None:
    """One worker: requests at a rate that rises and falls, with a spell of failures from 20 to 28 s."""
    while not stop.is_set():
        t = time.monotonic() - started
        fail = 0.35 if 20 < t < 28 else 0.03
        try:
            handler.doRequest({"cmd": "compute", "fail": fail}, timeout=5)
        except syncws.RequestError:
            pass  # counted by the server: what the picture shows
        rate = 12 + 10 * math.sin(t / 6)  # per worker and second
        stop.wait(1 / rate)


def clients(url: str, started: float, stop: threading.Event) -> None:
    """Echo clients that come and go (one more every 4 s up to 8, half of them gone at 32 s), each echoing twice a second.

    Reading the echo also answers the server's pings: a client that never reads is dropped after a ping timeout.
    """
    open_: list[syncws.ClientConnection] = []
    try:
        while not stop.wait(0.5):
            t = time.monotonic() - started
            if t < 32 and len(open_) < min(8, 1 + int(t / 4)):
                open_.append(syncws.connect(url, timeout=5))
            elif t >= 32 and len(open_) > 4:
                open_.pop().close()
            for conn in open_:
                conn.send(f"sample {t:.1f}")
                conn.recv(timeout=5)
    finally:
        for conn in open_:
            conn.abort()


class Chromium:
    """Headless Chromium showing one page, with a DevTools protocol connection to it."""

    def __init__(self, url: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix="syncws-picture-")
        profile = os.path.join(self.tmp, "profile")
        self.proc = subprocess.Popen(
            ["chromium", *FLAGS, "--window-size=1200,900", "--hide-scrollbars", "--remote-debugging-port=0", f"--user-data-dir={profile}", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killpg takes the renderers too
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with open(os.path.join(profile, "DevToolsActivePort")) as f:
                    port = int(f.read().split()[0])
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    target = next(t for t in json.load(r) if t.get("type") == "page" and t.get("url") == url)
                break
            except (OSError, ValueError, IndexError, StopIteration):
                time.sleep(0.2)
        else:
            raise RuntimeError("Chromium's DevTools did not answer within 30 s")
        self.cdp = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)

    def call(self, method: str, **params: Any) -> Any:
        """Send one DevTools command and return its result."""
        self.cdp.send(json.dumps({"id": 1, "method": method, "params": params}))
        for _ in range(1000):
            message = json.loads(self.cdp.recv())
            if message.get("id") == 1:
                return message["result"]
        raise RuntimeError(f"no answer to {method}")

    def close(self) -> None:
        self.cdp.close()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    if shutil.which("chromium") is None:
        sys.exit("needs chromium on PATH")
    server, handler, peer = serve()
    stop = threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=load, args=(handler, started, stop)) for _ in range(3)]
    threads.append(threading.Thread(target=clients, args=(server.url + "/echo", started, stop)))
    browser = None
    try:
        for thread in threads:
            thread.start()
        browser = Chromium(f"http://127.0.0.1:{server.port}/status")
        browser.call("Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1, mobile=False)
        time.sleep(HISTORY)
        png = browser.call("Page.captureScreenshot", format="png")["data"]
        OUT.write_bytes(base64.b64decode(png))
        print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        if browser is not None:
            browser.close()
        peer.stop()
        server.stop()


if __name__ == "__main__":
    main()

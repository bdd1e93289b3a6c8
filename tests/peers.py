"""Shared peers for the request tests: a server with a RequestHandler (:class:`Env`), and the peers that talk to it.

Peers: an in-process RemoteService (``Env.service``), tests/peer_process.py in
a subprocess (:class:`PeerProcess`), syncws client connections that play a
peer by hand (:class:`FakePeer`), or a plain websocket-client connection, as
a browser would be. Everything is on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import websocket

import syncws

ROOT = Path(__file__).resolve().parent.parent
PEER_SCRIPT = Path(__file__).resolve().with_name("peer_process.py")
NAME = "wsData"


class FakePeer:
    """A peer played by hand over syncws.connect; a reader thread queues what arrives."""

    def __init__(self, url: str) -> None:
        self.conn = syncws.connect(url, timeout=5, close_timeout=1.0)
        self.inbox: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, name="test-fakepeer", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for _ in range(10_000_000):  # ends when the connection closes (recv returns None)
            message = self.conn.recv()
            self.inbox.put(message)
            if message is None:
                return

    def recv_request(self, timeout: float = 5.0) -> dict:
        message = self.inbox.get(timeout=timeout)
        assert isinstance(message, str), f"expected a JSON request, got {message!r}"
        return json.loads(message)

    def send(self, message: Any) -> None:
        self.conn.send(json.dumps(message) if isinstance(message, dict) else message)

    def close(self) -> None:
        self.conn.abort()
        self.thread.join(5)


class PeerProcess:
    """tests/peer_process.py in a subprocess; its stdout lines are queued by a reader thread."""

    def __init__(self, url: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER_SCRIPT), url, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            env=env,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="test-peer-stdout", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # ends at EOF, when the process exits
            self.lines.put(line.strip())
        self.lines.put(None)

    def expect(self, text: str, timeout: float = 20.0) -> None:
        line = self.lines.get(timeout=timeout)
        assert line == text, f"peer printed {line!r}, expected {text!r}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        self.reader.join(5)


class Env:
    """A started server with its own registry, one /wsData endpoint and its RequestHandler."""

    def __init__(self, port: int = 0, **rh_options: Any) -> None:
        self.registry = syncws.ConnectionRegistry()
        self.server = syncws.WebSocketServer("127.0.0.1", port, registry=self.registry, close_timeout=1.0).start()
        self.rh = syncws.RequestHandler(NAME, self.server, **rh_options)
        self.events: queue.Queue = queue.Queue()
        self.server.add_handler("/" + NAME, syncws.DataWebSocketHandler, name=NAME, callback=self.rh.callback, connNotify=self._notify)
        self.url = self.server.url + "/" + NAME
        #: Set on cleanup: commands of in-process services that block wait on it.
        self.release = threading.Event()
        self._cleanups: list[Callable[[], Any]] = []

    def _notify(self, name: str, event: str) -> None:
        self.events.put(event)

    def wait_event(self, kind: str, timeout: float = 10.0) -> None:
        """Wait until the server side reports ``kind`` ("open"/"close") for a connection."""
        deadline = time.monotonic() + timeout
        for _ in range(1000):
            event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if event == kind:
                return
        raise AssertionError(f"no {kind!r} event")

    def service(self, commands: dict[str, Callable[[dict], Any]], cls: type = syncws.RemoteService, **options: Any) -> Any:
        """An in-process RemoteService answering ``commands``, connected and registered on the server."""
        options.setdefault("backoff_min", 0.05)
        options.setdefault("backoff_max", 0.2)
        svc = cls(self.url, **options)
        for cmd, fn in commands.items():
            svc.register(cmd, fn)
        self._cleanups.append(svc.stop)
        svc.start(timeout=10)
        self.wait_event("open")
        return svc

    def peer_process(self, *args: str) -> PeerProcess:
        """tests/peer_process.py connected and registered on the server."""
        peer = PeerProcess(self.url, *args)
        self._cleanups.append(peer.stop)
        peer.expect("READY")
        self.wait_event("open")
        return peer

    def fake_peer(self) -> FakePeer:
        """A hand-played peer, registered on the server."""
        peer = FakePeer(self.url)
        self._cleanups.append(peer.close)
        self.wait_event("open")
        return peer

    def browser_peer(self) -> websocket.WebSocket:
        """A plain websocket-client connection, registered on the server."""
        ws = websocket.create_connection(self.url, timeout=5)
        self._cleanups.append(ws.close)
        self.wait_event("open")
        return ws

    def add_cleanup(self, fn: Callable[[], Any]) -> None:
        self._cleanups.append(fn)

    def close(self) -> None:
        self.release.set()
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception:  # one failed cleanup must not leak the rest
                logging.getLogger(__name__).exception("cleanup failed")
        self.server.stop()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, queue.Queue]:
    """Run ``fn`` on a thread; its queue gets ("ok", result, t) or ("err", exception, t)."""
    results: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:  # handed to the test thread
            results.put(("err", exc, time.monotonic()))
        else:
            results.put(("ok", value, time.monotonic()))

    thread = threading.Thread(target=run, name="test-caller", daemon=True)
    thread.start()
    return thread, results

"""The server on the selector engine (engine="reactor"): a thread only while a handler runs, and the blocking API's promise kept.

Real clients (websocket-client) against a real server on 127.0.0.1. The
handlers block on barriers and events, not on sleeps, so that each test
states what ran at once rather than how long it took.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

import syncws

from ..helpers import wait_for

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0


def workers() -> list[threading.Thread]:
    """The reactor's handler threads alive now, but the one leading the I/O loop (named syncws-io while it does)."""
    return [t for t in threading.enumerate() if t.name.startswith("syncws-worker-")]


class Blocking(syncws.BaseWebSocketHandler):
    """On "block": waits at the server's barrier (every connection's handler at once), then answers; else echoes."""

    def on_message(self, message: Any) -> None:
        server: Any = self.server
        if message == "block":
            server.barrier.wait(WAIT)  # BrokenBarrierError unless every party's handler runs at the same moment
            self.write_message("unblocked")
        elif message == "hold":
            server.release.wait(WAIT)
            self.write_message("released")
        else:
            self.write_message(message)


class Ordered(syncws.BaseWebSocketHandler):
    """Records the messages in the order handled, and how many of this connection's ran at once at most."""

    def initialize(self, **kwargs: Any) -> None:
        super().initialize(**kwargs)
        self.running = 0
        self.most = 0
        self.seen: list[int] = []
        self.guard = threading.Lock()

    def on_message(self, message: Any) -> None:
        with self.guard:
            self.running += 1
            self.most = max(self.most, self.running)
        self.seen.append(int(message))
        os.sched_yield()  # let another thread run here: a second call of this connection would overlap now if it could
        with self.guard:
            self.running -= 1
        if int(message) == 299:
            self.write_message("done")


@pytest.fixture
def server() -> Iterator[syncws.WebSocketServer]:
    """A started server on the reactor engine with /block and /ordered, and its own registry."""
    made = syncws.WebSocketServer("127.0.0.1", 0, engine="reactor", registry=syncws.ConnectionRegistry(), max_connections=1000, close_timeout=1.0)
    made.barrier = threading.Barrier(300)  # type: ignore[attr-defined]
    made.release = threading.Event()  # type: ignore[attr-defined]
    made.add_handler("/block", Blocking, name="block")
    made.add_handler("/ordered", Ordered, name="ordered")
    made.start()
    try:
        yield made
    finally:
        made.release.set()  # type: ignore[attr-defined]
        made.stop()


def connect_all(url: str, count: int) -> list[websocket.WebSocket]:
    clients = []
    for _ in range(count):
        clients.append(websocket.create_connection(url, timeout=WAIT))
    return clients


def test_300_handlers_that_block_at_once_each_get_a_thread_and_answer(server: syncws.WebSocketServer) -> None:
    """300 connections whose handlers all block at the same moment (a 300-party barrier) all run at once and all answer."""
    clients = connect_all(server.url + "/block", 300)
    try:
        for ws in clients:
            ws.send("block")
        assert [ws.recv() for ws in clients] == ["unblocked"] * 300
    finally:
        for ws in clients:
            ws.close()


def test_the_threads_that_ran_blocked_handlers_leave_once_idle(server: syncws.WebSocketServer) -> None:
    """After 300 handlers ran at once, the worker threads leave once idle (idle_timeout 5 s), down to none."""
    clients = connect_all(server.url + "/block", 300)
    try:
        for ws in clients:
            ws.send("block")
        for ws in clients:
            assert ws.recv() == "unblocked"
        assert len(workers()) + 1 >= 300  # and the one that leads the loop now
        assert wait_for(lambda: len(workers()) == 0, 20), f"{len(workers())} workers left"
    finally:
        for ws in clients:
            ws.close()


def test_one_connections_messages_are_handled_in_order_one_at_a_time(server: syncws.WebSocketServer) -> None:
    """300 messages on one connection are handled in the order sent, never two at once."""
    ws = websocket.create_connection(server.url + "/ordered", timeout=WAIT)
    try:
        for n in range(300):
            ws.send(str(n))
        assert ws.recv() == "done"
        handler = server.registry.connections("ordered")[0]
        assert handler.seen == list(range(300))
        assert handler.most == 1
    finally:
        ws.close()


def test_a_blocked_handler_holds_up_only_its_own_connection(server: syncws.WebSocketServer) -> None:
    """While one connection's handler is blocked, 199 others keep being answered; then the blocked one answers too."""
    held = websocket.create_connection(server.url + "/block", timeout=WAIT)
    others = connect_all(server.url + "/block", 199)
    try:
        held.send("hold")
        for round_ in range(3):
            for n, ws in enumerate(others):
                ws.send(f"{round_}-{n}")
            assert [ws.recv() for ws in others] == [f"{round_}-{n}" for n in range(199)]
        server.release.set()  # type: ignore[attr-defined]
        assert held.recv() == "released"
    finally:
        held.close()
        for ws in others:
            ws.close()


def test_an_idle_connection_holds_no_thread(server: syncws.WebSocketServer) -> None:
    """100 open, idle connections on the reactor hold no thread of their own: the server keeps its accept, I/O and watchdog threads only."""
    clients = connect_all(server.url + "/block", 100)
    try:
        assert wait_for(lambda: len(server.clients) == 100)
        assert wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("syncws-conn-")], 10)
        assert wait_for(lambda: len(workers()) == 0, 20)  # the lanes' open() calls ran; their workers left
        names = {t.name for t in threading.enumerate() if t.name.startswith("syncws-")}
        assert names == {"syncws-server", "syncws-io", "syncws-watchdog"}, names
    finally:
        for ws in clients:
            ws.close()

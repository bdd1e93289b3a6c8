"""Broadcasts that never wait on a slow client: Connection.send_nowait and its Outbox, through sendWebSocketMessage.

Real servers on 127.0.0.1, port 0; clients from websocket-client, one of which never reads (its
receive buffer kept small, so that the server's socket to it fills up).
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

import syncws
from syncws.engine.outbox import Outbox
from syncws.exceptions import ConnectionClosed

from ..helpers import wait_for

pytestmark = pytest.mark.timeout(60)

NAME = "fanout"


class Quiet(syncws.BaseWebSocketHandler):
    """Joins the registry on open; ignores what it is sent."""

    def on_message(self, message: Any) -> None:
        pass


def make(**options: Any) -> syncws.WebSocketServer:
    server = syncws.WebSocketServer("127.0.0.1", 0, registry=syncws.ConnectionRegistry(), **options)
    server.add_handler("/" + NAME, Quiet, name=NAME)
    return server.start()


@pytest.fixture
def server() -> Iterator[syncws.WebSocketServer]:
    srv = make(send_timeout=60)
    try:
        yield srv
    finally:
        srv.stop()


def stuck_client(server: syncws.WebSocketServer) -> websocket.WebSocket:
    """A client that never reads, with a small receive buffer: the server's socket to it fills up soon."""
    return websocket.create_connection(server.url + "/" + NAME, timeout=5, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))


def fill(server: syncws.WebSocketServer, handler: syncws.BaseWebSocketHandler, chunk: bytes) -> int:
    """Broadcast ``chunk`` until the stuck connection's socket takes no more and messages wait in its outbox; how many were sent."""
    for sent in range(1, 2000):
        syncws.sendWebSocketMessage(NAME, chunk, registry=server.registry)
        if handler.connection.send_queue_bytes > 0:
            return sent
    raise AssertionError("the stuck client's socket never filled")


class Reader:
    """A client that reads every message on a thread of its own and queues it with its arrival time."""

    def __init__(self, server: syncws.WebSocketServer) -> None:
        self.ws = websocket.create_connection(server.url + "/" + NAME, timeout=20)
        self.inbox: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, name="test-reader", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for _ in range(100_000):  # ends when the connection closes
            try:
                message = self.ws.recv()
            except (websocket.WebSocketException, OSError):
                return
            self.inbox.put((message, time.monotonic()))

    def next_text(self, timeout: float = 10.0) -> tuple[Any, float]:
        """The next text message (binary ones, the filler, are skipped) and when it came."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            message, at = self.inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            if isinstance(message, str):
                return message, at
        raise AssertionError("no text message")

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


# ---------------------------------------------------------------------- the queue alone


def test_outbox_refuses_past_its_limit_and_calls_overflow() -> None:
    """A message that would pass the limit while nothing is taken for STALL is not queued; the overflow hook gets the bytes it would make."""
    drained = threading.Event()
    hold = threading.Event()
    overflow: list[int] = []
    box = Outbox(lambda: hold.wait(10) and drained.set(), limit=100, overflow=overflow.append, name="test")
    box.put((1, b"x" * 60, None))
    box.put((1, b"y" * 50, None))
    assert overflow == [110] and box.queued_bytes == 60
    hold.set()
    box.drop()


def test_a_sender_waits_for_room_while_the_peer_reads() -> None:
    """A message that does not fit waits while the writer takes messages, and is queued once there is room: no overflow."""
    overflow: list[int] = []
    release = threading.Semaphore(0)
    taken: list[bytes] = []
    box: Outbox

    def drain() -> None:
        for _ in range(100):  # takes one message each time the test releases it
            if not release.acquire(timeout=10):
                return
            item = box.take()
            if item is None:
                return
            taken.append(bytes(item[1]))

    box = Outbox(drain, limit=100, overflow=overflow.append, name="test", burst_wait=10)
    box.put((1, b"a" * 60, None))
    done = threading.Event()

    def send_second() -> None:
        box.put((1, b"b" * 60, None))
        done.set()

    threading.Thread(target=send_second, daemon=True).start()
    assert not done.wait(0.2)  # it waits: 120 bytes would not fit
    release.release()  # the peer reads: the first is taken, the second fits
    assert done.wait(5)
    release.release()
    assert wait_for(lambda: taken == [b"a" * 60, b"b" * 60], timeout=5)
    assert overflow == []
    box.drop()


def test_a_sender_waiting_for_room_gets_connection_closed_when_the_connection_ends() -> None:
    """A sender waiting for room in a full outbox is released at once with ConnectionClosed when the outbox is dropped."""
    hold = threading.Event()
    box = Outbox(lambda: hold.wait(10) and None, limit=100, overflow=lambda n: None, name="test", burst_wait=30)
    box.put((1, b"x" * 60, None))
    outcome: queue.Queue = queue.Queue()

    def send_second() -> None:
        try:
            box.put((1, b"y" * 60, None))
            outcome.put("queued")
        except ConnectionClosed as exc:
            outcome.put(exc)

    threading.Thread(target=send_second, daemon=True).start()
    assert wait_for(lambda: box._waiting == 1, timeout=5)
    box.drop()
    assert isinstance(outcome.get(timeout=2), ConnectionClosed)
    hold.set()


def test_outbox_writer_ends_once_nothing_waits() -> None:
    """The writer thread runs while messages wait and ends once the drain took them all."""
    taken: list[Any] = []
    box: Outbox

    def drain() -> None:
        for _ in range(100):
            item = box.take()
            if item is None:
                return
            taken.append(item[1])

    box = Outbox(drain, limit=1 << 20, overflow=lambda n: None, name="test")
    box.put((1, b"a", None))
    box.put((1, b"b", None))
    assert wait_for(lambda: box.writer is None, timeout=5)
    assert taken[:2] == [b"a", b"b"] and box.queued_bytes == 0


def test_outbox_after_drop_refuses_with_connection_closed() -> None:
    """Once dropped (the connection ended), put raises ConnectionClosed and nothing waits."""
    box = Outbox(lambda: None, limit=100, overflow=lambda n: None, name="test")
    box.drop()
    with pytest.raises(ConnectionClosed):
        box.put((1, b"x", None))
    assert box.queued_bytes == 0


# ---------------------------------------------------------------------- broadcasts


def test_a_client_that_never_reads_does_not_hold_up_the_others(server: syncws.WebSocketServer) -> None:
    """With one client's socket full (send_timeout 60 s), a broadcast returns at once and reaches every other client,
    while the stuck one's share waits in its outbox."""
    stuck = stuck_client(server)
    readers = [Reader(server) for _ in range(3)]
    try:
        assert wait_for(lambda: len(server.registry.connections(NAME)) == 4)
        stuck_handler = server.registry.connections(NAME)[0]
        fill(server, stuck_handler, b"\x00" * 65536)
        started = time.monotonic()
        syncws.sendWebSocketMessage(NAME, "after the stuck one filled up", registry=server.registry)
        returned = time.monotonic()
        arrivals = [reader.next_text(timeout=20) for reader in readers]
        assert all(message == "after the stuck one filled up" for message, _ in arrivals)
        # A blocking broadcast would have waited on the stuck socket for send_timeout (60 s) first.
        assert returned - started < 5 and max(at for _, at in arrivals) - started < 5
        assert stuck_handler.connection.send_queue_bytes > 0 and not stuck_handler.connection.closed
    finally:
        for reader in readers:
            reader.close()
        stuck.close()


def test_a_client_past_max_send_queue_is_closed_with_1008() -> None:
    """A client whose waiting messages pass max_send_queue is closed (1008, "send queue full") and leaves the registry;
    the others go on getting the broadcasts."""
    server = make(send_timeout=60, max_send_queue=256 * 1024)
    stuck = stuck_client(server)
    reader = Reader(server)
    try:
        assert wait_for(lambda: len(server.registry.connections(NAME)) == 2)
        stuck_handler = server.registry.connections(NAME)[0]
        for _ in range(200):  # bounded: the queue passes 256 KiB well before
            syncws.sendWebSocketMessage(NAME, b"\x00" * 65536, registry=server.registry)
            if stuck_handler.connection.closed:
                break
        assert stuck_handler.connection.wait_closed(5)
        assert stuck_handler.close_code == 1008 and stuck_handler.close_reason == "send queue full"
        assert wait_for(lambda: stuck_handler not in server.registry.connections(NAME), timeout=5)
        syncws.sendWebSocketMessage(NAME, "still here", registry=server.registry)
        assert reader.next_text(timeout=20)[0] == "still here"
    finally:
        reader.close()
        stuck.close()
        server.stop()


def test_broadcasts_and_direct_sends_keep_their_order_for_a_slow_reader(server: syncws.WebSocketServer) -> None:
    """A client that reads only after its socket filled gets every message whole and in order: broadcasts that
    waited, the rest of a frame written in part, and a direct write_message sent after them."""
    slow = stuck_client(server)
    try:
        assert wait_for(lambda: len(server.registry.connections(NAME)) == 1)
        handler = server.registry.connections(NAME)[0]
        sent: list[bytes] = []
        for i in range(400):  # bounded: the socket fills well before
            payload = bytes([i % 256]) * (40_000 + i)
            syncws.sendWebSocketMessage(NAME, payload, registry=server.registry)
            sent.append(payload)
            if handler.connection.send_queue_bytes > 200_000:
                break
        assert handler.connection.send_queue_bytes > 0
        done = threading.Event()

        def direct() -> None:
            handler.write_message("direct, after the queue")  # blocks until the queue is out: the client reads now
            done.set()

        threading.Thread(target=direct, name="test-direct", daemon=True).start()
        slow.settimeout(20)
        got = [slow.recv() for _ in range(len(sent))]
        assert [len(g) for g in got] == [len(p) for p in sent] and got == sent
        assert slow.recv() == "direct, after the queue"
        assert done.wait(10)
    finally:
        slow.close()


def test_send_message_to_all_does_not_wait_on_a_stuck_client(server: syncws.WebSocketServer) -> None:
    """The websocket-server API's send_message_to_all goes on past a client whose socket is full, too."""
    stuck = stuck_client(server)
    reader = Reader(server)
    try:
        assert wait_for(lambda: len(server.registry.connections(NAME)) == 2)
        stuck_handler = server.registry.connections(NAME)[0]
        fill(server, stuck_handler, b"\x00" * 65536)
        server.send_message_to_all("to all")
        assert reader.next_text(timeout=20)[0] == "to all"
        assert not stuck_handler.connection.closed
    finally:
        reader.close()
        stuck.close()


def test_broadcasts_to_a_compressing_client_that_fell_behind_arrive_whole_and_in_order() -> None:
    """A permessage-deflate client (python-websockets) that stops reading for a while gets every broadcast, each
    compressed for it in order (not the shared uncompressed frame), once it reads again; a plain client alongside too."""
    from websockets.sync.client import connect as ws_connect

    server = make(send_timeout=60, max_send_queue=64 << 20)
    plain = Reader(server)
    try:
        with ws_connect(server.url + "/" + NAME, compression="deflate", max_queue=1, open_timeout=5) as slow:
            assert wait_for(lambda: len(server.registry.connections(NAME)) == 2)
            handler = next(h for h in server.registry.connections(NAME) if h.connection.extensions)
            assert "permessage-deflate" in handler.connection.extensions
            sent = [f"update {i}: " + os.urandom(6000).hex() for i in range(1500)]  # half compressible: 10 MB on the wire
            waited = 0
            for text in sent:
                syncws.sendWebSocketMessage(NAME, text, registry=server.registry)
                waited = max(waited, handler.connection.send_queue_bytes)
            assert waited > 0  # the slow client's share did wait in its outbox
            got = [slow.recv(timeout=20) for _ in range(len(sent))]
            assert got == sent
        assert [plain.next_text(timeout=20)[0] for _ in range(len(sent))] == sent
    finally:
        plain.close()
        server.stop()


def test_a_burst_larger_than_the_queue_reaches_every_reading_client_and_closes_only_the_stuck_one() -> None:
    """A 12 MiB burst through a 256 KiB max_send_queue: every reading client gets all of it, in order, and stays open;
    only the client that reads nothing is closed with 1008."""
    server = make(send_timeout=30, max_send_queue=256 * 1024)
    stuck = stuck_client(server)
    readers = [Reader(server) for _ in range(2)]
    count, size = 96, 128 * 1024
    try:
        assert wait_for(lambda: len(server.registry.connections(NAME)) == 3)
        stuck_handler = server.registry.connections(NAME)[0]
        for i in range(count):
            syncws.sendWebSocketMessage(NAME, i.to_bytes(4, "big") * (size // 4), registry=server.registry)
        syncws.sendWebSocketMessage(NAME, "end", registry=server.registry)
        for reader in readers:
            got = []
            for _ in range(count + 1):
                message, _ = reader.inbox.get(timeout=20)
                if message == "end":
                    break
                got.append(int.from_bytes(message[:4], "big"))
            assert got == list(range(count))
        assert stuck_handler.connection.wait_closed(5)
        assert stuck_handler.close_code == 1008 and stuck_handler.close_reason == "send queue full"
        assert all(handler.connection.close_code is None for handler in server.registry.connections(NAME))
        assert len(server.registry.connections(NAME)) == 2
    finally:
        for reader in readers:
            reader.close()
        stuck.close()
        server.stop()

"""Stopping the command line's long runs: Ctrl-C on a waiting call exits at once, and peer finishes its calls in flight on Ctrl-C and SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import syncws

from ..peer.test_stopping import Held
from .test_cli import Background

pytestmark = pytest.mark.timeout(60)


class Busy(syncws.BaseWebSocketHandler):
    """A handler busy with its first message until ``release`` is set: it reads nothing meanwhile, not even a close frame."""

    got = threading.Event()
    release = threading.Event()

    def on_message(self, message: Any) -> None:
        Busy.got.set()
        Busy.release.wait(30)


@pytest.fixture
def held() -> Iterator[Held]:
    """A server whose RequestHandler answers ``hold`` once the test releases it."""
    server = Held()
    try:
        yield server
    finally:
        server.release.set()
        server.server.stop()


def test_ctrl_c_on_a_waiting_call_exits_130_at_once() -> None:
    """Ctrl-C on `call --message` waiting for a server busy elsewhere exits 130 within 3 s, not after the 5 s close timeout."""
    Busy.got.clear()
    Busy.release.clear()
    server = syncws.WebSocketServer(port=0, registry=syncws.ConnectionRegistry()).start()
    server.add_handler("/busy", Busy)
    call = Background("call", server.url + "/busy", "--message", "hi", stdin=subprocess.DEVNULL)
    try:
        assert Busy.got.wait(20), "the message never reached the server"
        started = time.monotonic()
        call.proc.send_signal(signal.SIGINT)
        assert call.proc.wait(10) == 130
        assert time.monotonic() - started < 3.0
    finally:
        Busy.release.set()
        call.stop()
        server.stop()


def _peer_with_a_call_in_flight(held: Held) -> tuple[Background, threading.Thread, list[Any]]:
    """`syncws peer` on the held server, answering a request (askServer ask=hold) that waits for the test."""
    peer = Background("peer", held.server.url + "/wsData", stdin=subprocess.DEVNULL)  # --drain: 10 s by default
    peer.wait_line(peer.stdout, "syncws peer connected")
    replies: list[Any] = []

    def ask() -> None:
        try:
            replies.append(held.handler.doRequest({"cmd": "askServer", "ask": "hold"}, timeout=30))
        except syncws.SyncWSError as exc:
            replies.append(exc)

    caller = threading.Thread(target=ask, name="test-caller")
    caller.start()
    assert held.arrived.wait(20), "the peer's askServer never asked the server"
    return peer, caller, replies


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_peer_finishes_its_call_in_flight_on_a_signal(held: Held, sig: int) -> None:
    """peer on Ctrl-C or SIGTERM says it is stopping, lets the call in flight finish and send its reply, then exits 0."""
    peer, caller, replies = _peer_with_a_call_in_flight(held)
    try:
        peer.proc.send_signal(sig)
        peer.wait_line(peer.stderr, "stopping", timeout=10)
        held.release.set()
        caller.join(20)
        assert replies and isinstance(replies[0], dict), replies
        assert replies[0]["status"] == 200 and replies[0]["data"] == "held and released"
        assert peer.proc.wait(10) == 0
    finally:
        held.release.set()
        peer.stop()
        caller.join(5)


def test_a_second_signal_stops_a_draining_peer_at_once(held: Held) -> None:
    """A second SIGTERM while peer waits for its call in flight stops it at once: exit 0 within 3 s, and the call fails."""
    peer, caller, replies = _peer_with_a_call_in_flight(held)
    try:
        peer.proc.send_signal(signal.SIGTERM)
        peer.wait_line(peer.stderr, "stopping", timeout=10)
        started = time.monotonic()
        peer.proc.send_signal(signal.SIGTERM)
        assert peer.proc.wait(10) == 0
        assert time.monotonic() - started < 3.0
        caller.join(10)
        assert replies and isinstance(replies[0], syncws.SyncWSError), replies
    finally:
        held.release.set()
        peer.stop()
        caller.join(5)

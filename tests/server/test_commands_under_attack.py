"""A server's commands against hostile or careless callers: reused callIds, floods, a reply without status, callers who leave.

Each peer here is real: a hand-played syncws client connection (FakePeer) for
what a well-behaved peer never sends, a RemoteService for an honest one, and
websocket-client for a ``/call`` gateway client.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import websocket

import syncws
from syncws.calls.commands import current_call
from syncws.cli.main import is_loopback
from syncws.server.endpoints import CallGatewayHandler

from ..peers import Env, in_thread

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0


class Slow:
    """A command that blocks until released or cancelled, counting the calls that started and that saw their cancellation."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.started: list[Any] = []
        self.cancelled: list[Any] = []
        self.release = threading.Semaphore(0)

    def __call__(self, request: dict[str, Any], conn: Any = None) -> str:
        call = current_call()
        assert call is not None
        with self.changed:
            self.started.append(request.get("n", call.call_id))
            self.changed.notify_all()
        for _ in range(400):  # at most 20 s: a release, or the call's cancellation
            if self.release.acquire(timeout=0.05):
                return "released"
            if call.cancelled:
                with self.changed:
                    self.cancelled.append(request.get("n", call.call_id))
                    self.changed.notify_all()
                return "cancelled"
        return "gave up"

    def wait(self, predicate: Any) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self), WAIT)


@pytest.fixture
def env() -> Iterator[Env]:
    """A server with /wsData and its RequestHandler (2 workers, 8 waiting)."""
    made = Env(workers=2, max_pending=8)
    try:
        yield made
    finally:
        made.close()


def test_a_call_id_in_flight_is_refused_with_409_and_runs_once(env: Env) -> None:
    """Ten requests under one callId: the first runs, the other nine are answered 409 at once and never run."""
    slow = Slow()
    env.rh.register("slow", slow)
    peer = env.fake_peer()
    for n in range(10):
        peer.send({"cmd": "slow", "callId": 5, "n": n})
    refusals = [json.loads(peer.inbox.get(timeout=WAIT)) for _ in range(9)]
    assert all(r["status"] == 409 and r["callId"] == 5 and "already being answered" in r["error"] for r in refusals)
    assert slow.wait(lambda s: len(s.started) == 1) and slow.started == [0]
    slow.release.release()
    reply = json.loads(peer.inbox.get(timeout=WAIT))
    assert (reply["status"], reply["data"]) == (200, "released")


def test_a_closed_connection_cancels_its_running_commands_and_drops_its_queued_ones(env: Env) -> None:
    """Five slow requests with 2 workers, then the peer leaves: the 2 running see their cancellation, the 3 queued never start."""
    slow = Slow()
    env.rh.register("slow", slow)
    peer = env.fake_peer()
    for n in range(5):
        peer.send({"cmd": "slow", "callId": n + 1, "n": n})
    assert slow.wait(lambda s: len(s.started) == 2)
    assert syncws_wait(lambda: env.rh.commands_busy == 5)
    peer.close()
    assert slow.wait(lambda s: len(s.cancelled) == 2)
    assert syncws_wait(lambda: env.rh.commands_busy == 0)
    assert sorted(slow.started) == [0, 1]  # the queued three were dropped, not run for nobody


def test_one_flooding_connection_leaves_room_and_turns_for_another(env: Env) -> None:
    """A peer flooding slow requests holds at most its share (5 of 10 places); an honest peer's request gets the next free worker."""
    slow = Slow()
    env.rh.register("slow", slow)
    env.rh.register("quick", lambda request, conn: "quick")
    flooder = env.fake_peer()
    for n in range(20):
        flooder.send({"cmd": "slow", "callId": n + 1, "n": n})
    refused = [json.loads(flooder.inbox.get(timeout=WAIT)) for _ in range(15)]
    assert all(r["status"] == 503 and "its most" in r["error"] for r in refused)
    assert slow.wait(lambda s: len(s.started) == 2)
    honest = env.service({})
    _, result = in_thread(lambda: honest.request({"cmd": "quick"}, timeout=WAIT))
    assert syncws_wait(lambda: env.rh.commands_busy == 6)  # the flooder's 5 and the honest request
    slow.release.release()  # one worker frees: the honest peer's turn comes before the flooder's queued three
    outcome = result.get(timeout=WAIT)
    assert outcome[0] == "ok" and outcome[1]["data"] == "quick", outcome
    # The freed worker answered the honest request first; only then does it go back to the flooder's queue.
    assert slow.wait(lambda s: len(s.started) == 3)
    for _ in range(5):
        slow.release.release()


def test_a_reply_without_status_fails_its_call_with_502_at_once(env: Env) -> None:
    """A peer's answer that carries the callId but neither status nor cmd fails the call with RequestError 502, not a timeout."""
    peer = env.fake_peer()
    _, result = in_thread(lambda: env.rh.doRequest({"cmd": "getData"}, timeout=30))
    request = peer.recv_request()
    peer.send({"callId": request["callId"], "data": "no status here"})
    kind, error, _ = result.get(timeout=WAIT)
    assert kind == "err" and isinstance(error, syncws.RequestError) and error.status == 502 and "no status" in str(error)
    assert peer.inbox.empty()  # not answered back as a malformed request


def test_a_cancel_token_ends_a_call_from_another_thread_and_tells_the_peer(env: Env) -> None:
    """CancelToken.cancel() makes the waiting doRequest raise RequestCancelled at once, and the peer's command sees its cancellation."""
    slow = Slow()
    service = env.service({"slow": lambda request: slow(request)})
    token = syncws.CancelToken()
    _, result = in_thread(lambda: env.rh.doRequest({"cmd": "slow"}, timeout=60, cancel=token))
    assert slow.wait(lambda s: len(s.started) == 1)
    token.cancel()
    kind, error, _ = result.get(timeout=WAIT)
    assert kind == "err" and isinstance(error, syncws.RequestCancelled)
    assert slow.wait(lambda s: len(s.cancelled) == 1)
    with pytest.raises(syncws.RequestCancelled):
        env.rh.doRequest({"cmd": "slow"}, timeout=60, cancel=token)  # cancelled for good: refused before it is sent
    assert len(slow.started) == 1
    assert service.connected


def test_a_gateway_client_that_leaves_cancels_its_peers_command(env: Env) -> None:
    """A /call client that disconnects while its call runs has the peer's command cancelled; the gateway reads on meanwhile."""
    env.server.add_handler("/call", CallGatewayHandler, name="call", request_handler=env.rh)
    slow = Slow()
    env.service({"slow": lambda request: slow(request)})
    client = websocket.create_connection(env.server.url + "/call", timeout=WAIT)
    try:
        client.send(json.dumps({"cmd": "slow", "timeout": 60}))
        assert slow.wait(lambda s: len(s.started) == 1)
        client.ping(b"still reading?")  # answered while the call waits: the gateway's reader is free
        client.settimeout(WAIT)
        opcode, data = client.recv_data(control_frame=True)
        assert (opcode, data) == (websocket.ABNF.OPCODE_PONG, b"still reading?")
    finally:
        client.close()
    assert slow.wait(lambda s: len(s.cancelled) == 1)
    assert syncws_wait(lambda: env.rh.pending == 0)


def test_is_loopback_tells_which_listen_addresses_reach_only_this_machine() -> None:
    """serve warns about an open /call gateway unless it listens on loopback only."""
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "lab-server"))


def syncws_wait(predicate: Any, timeout: float = WAIT) -> bool:
    """Wait until ``predicate()`` holds, looking every few milliseconds; False after ``timeout``."""
    done = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return True
        done.wait(0.005)
    return bool(predicate())

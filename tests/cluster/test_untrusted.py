"""What a cluster reads from Redis, checked as untrusted input: every kind of junk is Unreadable, and nothing else escapes."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from syncws.cluster import SendUnconfirmed
from syncws.cluster.cluster import ClusterError, RedisCluster
from syncws.cluster.presence import ClusterConnection
from syncws.cluster.threads import Keeper
from syncws.cluster.untrusted import Unreadable, decode_envelope, encode_envelope, read_send, read_token, read_url, valid_token

from .junk import CHANNEL_JUNK, RECORD_JUNK

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("junk", list(CHANNEL_JUNK.values()), ids=list(CHANNEL_JUNK))
def test_channel_junk_is_unreadable(junk: bytes) -> None:
    """Each kind of junk on the cluster's channel raises Unreadable (a ValueError), never RecursionError, struct.error or another error."""
    with pytest.raises(Unreadable):
        read_send(junk, max_payload=64 * 1024)


@pytest.mark.parametrize(("conn_id", "text"), list(RECORD_JUNK.values()), ids=list(RECORD_JUNK))
def test_presence_record_junk_is_unreadable(conn_id: bytes, text: bytes) -> None:
    """Each kind of junk in a presence record raises Unreadable, never UnicodeDecodeError, RecursionError or another error."""
    with pytest.raises(Unreadable):
        ClusterConnection.from_json(b"abcdef012345", conn_id, text)


def test_sends_and_records_of_members_read_back() -> None:
    """A member's text, binary and close-all envelopes, and its presence records, read back unchanged."""
    assert read_send(encode_envelope(1, {"name": "news"}, "héllo".encode())).message == "héllo"
    assert read_send(encode_envelope(2, {"name": "news"}, b"\x00\xff")).message == b"\x00\xff"
    assert read_send(encode_envelope(3, {"code": 4000, "reason": "bye"}))[3:] == (4000, "bye")
    kind, header, payload = decode_envelope(encode_envelope(2, {"name": "n", "future": [1]}, b"x"))
    assert (kind, header, bytes(payload)) == (2, {"name": "n"}, b"x")
    record = ClusterConnection("abcdef012345", "abcdef012345-1", "wsData", ("127.0.0.1", 5000), 1700000000.5)
    assert ClusterConnection.from_json(b"abcdef012345", b"abcdef012345-1", record.to_json().encode()) == record


def test_link_urls_and_tokens_are_checked() -> None:
    """A link URL must be ws:// or wss:// with a host; a token must be 16 to 256 URL-safe characters, so never empty."""
    assert read_url(b"ws://127.0.0.1:8801/_syncws/node") == "ws://127.0.0.1:8801/_syncws/node"
    for junk in (b"", b"javascript:alert(1)", b"http://h/", b"ws://", b"ws://h:99999/", b"ws://h/ x", b"\xff", b"ws://[::1/", None, 5):
        with pytest.raises(Unreadable):
            read_url(junk)
    assert valid_token("a" * 43) and not valid_token("") and not valid_token("short") and not valid_token("a" * 40 + " ")
    for junk in (b"", b"\xff" * 20, None, b"x" * 300):
        with pytest.raises(Unreadable):
            read_token(junk)


def test_close_all_refuses_what_a_close_frame_cannot_carry() -> None:
    """cluster.close_all refuses, with ValueError and before anything is published, a code or reason no node could send."""
    cluster = RedisCluster("redis://127.0.0.1:1/0", name="never-reached")
    for code, reason in ((70000, ""), (1005, ""), (True, ""), (1000, "x" * 124)):
        with pytest.raises(ValueError):
            cluster.close_all(code, reason)


def test_send_to_an_unreachable_redis_is_not_unconfirmed() -> None:
    """A send to a Redis that refuses connections raises ClusterError (nothing went out), not SendUnconfirmed."""
    cluster = RedisCluster("redis://127.0.0.1:1/0", name="never-reached")
    with pytest.raises(ClusterError) as refused:
        cluster.send("news", "x")
    assert not isinstance(refused.value, SendUnconfirmed)


def test_keeper_restarts_a_dead_thread_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A kept loop that raises is run again, and one whose thread is found dead gets a new thread; each at WARNING."""
    stopping = threading.Event()
    keeper = Keeper("cluster test", stopping)
    runs: list[int] = []
    again = threading.Event()

    def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("injected")
        again.set()
        stopping.wait(10)

    with caplog.at_level(logging.WARNING, logger="syncws.cluster.cluster"):
        keeper.spawn("syncws-cluster-test", loop)
        assert again.wait(10)
        assert keeper.restarts("syncws-cluster-test") == 1
        assert any("died (RuntimeError: injected); restarting it" in r.getMessage() for r in caplog.records)
        # A thread gone without its loop ending (nothing in Python can do that to it: a stand-in finished thread).
        kept: Any = keeper._kept[0]
        live = kept.thread
        kept.thread = threading.Thread(target=lambda: None)
        kept.thread.start()
        kept.thread.join()
        again.clear()
        keeper.check()
        assert again.wait(10) and keeper.restarts("syncws-cluster-test") == 2
        assert any("was found dead; started it again" in r.getMessage() for r in caplog.records)
    stopping.set()
    keeper.join(5)
    live.join(5)

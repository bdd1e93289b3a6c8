"""``syncws serve --rtcloud-passwd FILE --cookie-secret-file FILE``: rt-cloud's peer logs in and is asked through /call."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from ..cli.test_cli import run, start_serve
from .rtcloud_peer import RtCloudPeer
from .rtcloud_server import hash_password

pytestmark = pytest.mark.timeout(90)


def test_serve_in_rtcloud_mode_lets_rtclouds_peer_log_in_and_answer(tmp_path: Path) -> None:
    """The peer logs in at /login with a passwd-file account, connects to /wsData, and `call` reaches it in rt-cloud's format."""
    passwd = tmp_path / "passwd"
    passwd.write_text(f"# rt-cloud's certs/passwd\nalice,{hash_password('pw')}\n", encoding="utf-8")
    secret = tmp_path / "cookie-secret"
    secret.write_text("0123456789abcdef\n", encoding="utf-8")
    serve, url = start_serve("--rtcloud-passwd", str(passwd), "--cookie-secret-file", str(secret))
    peer = RtCloudPeer(f"{url}/wsData", url.replace("ws://", "http://") + "/login", "alice", "pw", retry_delay=0.2, reconnect_delay=0.2)
    try:
        peer.start()
        assert peer.wait_connected(20), peer.last_error
        result = run("call", url, "rpc", "class=ExampleInterface", "attribute=echo", 'args=["from the cli"]', "--timeout", "20")
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        assert reply["status"] == 200 and reply["data"] == "Echo: from the cli"
    finally:
        peer.stop()
        assert serve.stop(signal.SIGINT) in (0, 130)


def test_serve_refuses_an_rtcloud_flag_alone(tmp_path: Path) -> None:
    """--rtcloud-passwd without --cookie-secret-file (and an empty passwd file) exits 2 with one line saying why."""
    passwd = tmp_path / "passwd"
    passwd.write_text("", encoding="utf-8")
    alone = run("serve", "--port", "0", "--rtcloud-passwd", str(passwd))
    assert alone.returncode == 2 and "go together" in alone.stderr
    secret = tmp_path / "secret"
    secret.write_text("s", encoding="utf-8")
    empty = run("serve", "--port", "0", "--rtcloud-passwd", str(passwd), "--cookie-secret-file", str(secret))
    assert empty.returncode == 2 and "nobody could log in" in empty.stderr



"""An echo client for the Autobahn|Testsuite's ``fuzzingserver`` mode.

It drives :func:`syncws.connect` (websocket-client's handshake, syncws's
framing), the same connection layer that RemoteService runs on, through the
suite's protocol: ``/getCaseCount``, then ``/runCase?case=N&agent=A`` for each
case (echo every message back as it came), then ``/updateReports?agent=A``.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from ..client.client import connect
from ..exceptions import SyncWSError
from ..protocol.deflate import DeflateOptions

__all__ = ["run_autobahn_client"]

logger = logging.getLogger(__name__)

# Cases 12 and 13 test permessage-deflate: offer it, and echo what came compressed
# compressed, whatever its kind or size, so that the suite sees both directions work.
_COMPRESSION = DeflateOptions(min_size=0, compress_binary=True)


def _echo_case(url: str) -> None:
    try:
        connection = connect(url, max_message_size=None, ping_interval=None, compression=_COMPRESSION)
    except SyncWSError as exc:
        logger.info("case connection %s failed: %s", url, exc)
        return
    try:
        for message in connection:
            try:
                connection.send(message)
            except SyncWSError:
                pass  # closing: recv() will see the close frame
    finally:
        connection.release()


def run_autobahn_client(url: str, agent: str = "syncws") -> int:
    """Run every case of the fuzzingserver at ``url``; return 0 when all ran."""
    base = url.rstrip("/")
    counter = connect(f"{base}/getCaseCount")
    count = int(counter.recv() or 0)
    counter.close()
    agent_q = quote(agent)
    for case in range(1, count + 1):
        _echo_case(f"{base}/runCase?case={case}&agent={agent_q}")
    connect(f"{base}/updateReports?agent={agent_q}").close()
    return 0

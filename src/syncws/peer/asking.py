"""The peer asking the server: :func:`ask`, the body of ``RemoteService.request()``.

A request goes out as JSON on the caller's thread, is registered in the
service's :class:`~syncws.calls.calls.CallTable`, and its reply is read by the
connection's leading worker (:mod:`syncws.peer.remote_worker`), never by the
caller; a timeout sends the server a cancel. Runs on the caller's thread,
safe from any number of them.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from .. import timeouts
from ..calls import callformat
from ..calls.calls import CallTable, PendingCall
from ..calls.commands import current_call
from ..calls.reassembly import Progress
from ..client.client import ClientConnection
from ..exceptions import ConnectionClosed, NotConnected, RequestTimeout, SendTimeout

__all__ = ["ask"]

logger = logging.getLogger(__name__)


def ask(
    calls: CallTable,
    connection: Optional[ClientConnection],
    url: str,
    msg: dict[str, Any],
    timeout: Optional[float],
    progress: Optional[Progress],
) -> dict[str, Any]:
    """Send ``msg`` on ``connection`` and wait for its whole reply; see ``RemoteService.request`` for what it raises."""
    callformat.check_request(msg)
    limit = timeouts.check_timeout(timeout)
    answering = current_call()
    if answering is not None and answering.inline:
        raise RuntimeError(
            f"command {answering.cmd!r} runs inline on the thread that reads the connection, so it cannot wait for a reply; register it without inline=True"
        )
    if connection is None or connection.closed:
        raise NotConnected(f"not connected to {url}")
    if answering is not None and answering.before_wait is not None and answering.conn is connection:
        answering.before_wait()  # this thread may be the one that reads the connection: another reads the reply
    call = calls.add(lambda call_id: PendingCall(call_id, msg.get("cmd"), connection, progress, waiting=True))
    try:
        try:
            connection.send(callformat.encode_request(msg, call.call_id))
        except (ConnectionClosed, SendTimeout) as exc:
            raise ConnectionClosed(getattr(exc, "code", 1006), getattr(exc, "reason", ""), f"request {msg.get('cmd')!r} could not be sent: {exc}") from exc
        if connection.closed:
            # It closed between the check and the registration: the session failed only the calls it saw.
            call.fail(ConnectionClosed(connection.close_code or 1006, connection.close_reason, f"connection to {url} closed"))
        try:
            return callformat.check_reply_status(call.outcome(limit))
        except RequestTimeout:
            try:
                connection.send(callformat.encode_cancel(call.call_id))
            except (ConnectionClosed, SendTimeout) as exc:
                logger.debug("cancel of callId %d not sent: %s", call.call_id, exc)
            raise
    finally:
        calls.forget(call.call_id)

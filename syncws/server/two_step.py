"""The seed's two-step calls: register a call now, send it yourself, wait for its reply later.

``rtCommon.webSocketHandlers`` let a caller split ``doRequest`` in two:
:meth:`TwoStep.prepare_request` gives the request a callId and a connection
and registers the call without sending it; :meth:`TwoStep.get_response`
waits for its reply. A mixin of :class:`~syncws.RequestHandler`, safe from
any thread, as ``doRequest`` is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .. import timeouts
from ..calls import callformat
from ..calls.calls import CallTable, CancelToken, PendingCall
from ..calls.reassembly import Progress
from ..handlers.handlers import BaseWebSocketHandler
from ..handlers.registry import ConnectionRegistry

if TYPE_CHECKING:
    from .request_handler import Channel, Target

__all__ = ["TwoStep"]


class TwoStep(CallTable):
    """``prepare_request`` and ``get_response``: a mixin of RequestHandler, built on its routing and its calls."""

    registry: ConnectionRegistry[BaseWebSocketHandler]
    _server: Optional[object]

    if TYPE_CHECKING:  # what it uses of RequestHandler and Relaying; declared only for the type checker

        def _channel(self, conn: Optional[Target]) -> tuple[Channel, dict[str, Any]]: ...  # RequestHandler's

        def _open_handler(self, handler: Optional[BaseWebSocketHandler]) -> BaseWebSocketHandler: ...  # Relaying's

        def _register(self, msg: dict[str, Any], channel: Channel, progress: Optional[Progress], waiting: bool) -> PendingCall: ...  # RequestHandler's

        def _outcome(
            self, call: PendingCall, channel: Channel, extra: dict[str, Any], timeout: Optional[float], cancel: Optional[CancelToken] = None
        ) -> dict[str, Any]: ...  # RequestHandler's

    def prepare_request(
        self, msg: dict[str, Any], conn: Optional[BaseWebSocketHandler] = None, progress: Optional[Progress] = None
    ) -> tuple[int, BaseWebSocketHandler]:
        """Give ``msg`` a callId and a connection and register the call: ``(callId, conn)``.

        Raises as :meth:`doRequest` does before it sends.
        """
        callformat.check_request(msg)
        if conn is not None and not isinstance(conn, BaseWebSocketHandler):
            raise TypeError("prepare_request takes a handler of this server; a call across nodes goes through doRequest")
        # Only this server's connections: a call across nodes needs doRequest to wait on it.
        handler, _ = self._channel(conn or self._open_handler(self.registry.newest(self.name, server=self._server)))
        assert isinstance(handler, BaseWebSocketHandler)
        call = self._register(msg, handler, progress, waiting=False)
        return call.call_id, handler

    def get_response(self, callId: int, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the reply to ``callId``; see :meth:`doRequest` for what it returns and raises."""
        timeout = timeouts.check_timeout(timeout)
        with self.callbackLock:
            call = self._calls.get(callId)
            if call is not None:
                call.waiting = True
        if call is None:
            raise KeyError(f"no pending call with callId {callId}")
        try:
            reply = self._outcome(call, call.conn, {}, timeout)  # type: ignore[arg-type]  # a handler: prepare_request makes no call across nodes
        finally:
            self.forget(callId)
        return callformat.check_reply_status(reply)

"""The other way: a server's peers call its commands (the commands side of :class:`~syncws.RequestHandler`).

A peer's request is read on its connection's thread, which hands it to the
handler's :class:`~syncws.calls.command_pool.CommandPool` and reads on while
the command runs on a worker (``syncws-cmd-N``); a command registered
``inline=True`` runs on the connection's thread instead. The reply goes
out on the thread that ran the command.
"""

from __future__ import annotations

import logging
from typing import Any

from ..calls import callformat
from ..calls.command_pool import CommandPool
from ..calls.commands import CommandFunction, Commands, IncomingCall, duplicate_error, send_reply
from ..engine.connection import Connection
from ..exceptions import ConnectionClosed, SendTimeout
from ..handlers.handlers import BaseWebSocketHandler
from ..lograte import RateLimitedLog

__all__ = ["Answering"]

logger = logging.getLogger("syncws.server.request_handler")  # its records are the RequestHandler's: one logger


class Answering:
    """The commands peers may call on a RequestHandler, and the pool that runs them: a mixin of RequestHandler.

    ``commands``, ``_pool`` and ``part_size`` are set by RequestHandler.__init__.
    """

    name: str
    commands: Commands
    part_size: int
    _pool: CommandPool
    _junk_log: RateLimitedLog

    def register(self, cmd: str, fn: CommandFunction, *, inline: bool = False) -> None:
        """Answer peers' requests whose ``cmd`` is ``cmd`` with ``fn(request, conn)``. Safe from any thread.

        ``request`` is the request dict; ``conn`` the handler of the
        connection that asked (``doRequest(..., conn=conn)`` asks that same
        peer back, even before answering). ``fn`` returns what the reply
        carries: JSON-able data, bytes-like data or a numpy array (in binary
        parts with their CRC-32), or None; what it raises is answered 500
        with ``"ExceptionType: message"``. Inside it,
        :func:`syncws.current_call` is the call, whose ``cancelled`` turns
        True when the caller gave up.

        ``fn`` runs on the handler's worker pool (``workers`` threads, and
        ``max_pending`` more requests waiting; past that the caller gets 503),
        never on the connection's thread, which reads on. One connection may
        hold at most ``max_per_connection`` of those places (queued or
        running; more get 503), and the workers take the connections' queued
        requests in turn, so that one peer's flood cannot turn the others
        away. A request whose callId is in flight on its connection already
        is answered 409 and not run. ``inline=True``
        runs it on the connection's thread, before anything else is read:
        only for functions that return at once and never block (while one
        runs, the connection answers no ping and takes no reply).
        """
        self.commands.register(cmd, fn, inline)

    def _on_request(self, handler: BaseWebSocketHandler, request: dict[str, Any]) -> None:
        """A peer's request: run its command on the pool, or inline; 503 when the pool is full (connection thread)."""
        if callformat.reply_call_id(request) is None:
            self._junk_log.log(handler, logging.WARNING, "%s: request %r without a valid callId dropped", self.name, str(request.get("cmd"))[:100])
            return
        fn, inline = self.commands.lookup(request["cmd"])
        call = IncomingCall(request, handler, inline)
        if not self.commands.begin(call):
            self._junk_log.log(handler, logging.WARNING, "%s: request %r refused: callId %d is in flight already", self.name, call.cmd, call.call_id)
            self._send_error(handler, call.cmd, call.call_id, 409, duplicate_error(call))
            return
        if fn is None or inline:  # an unknown command's 404 costs no hand-off either
            self.commands.answer(call, fn, (request, handler), handler.connection, self._send_result)
            return
        refused = self._pool.submit(lambda: self.commands.answer(call, fn, (request, handler), handler.connection, self._send_result), handler)
        if refused is not None:
            self.commands.end(call)
            self._junk_log.log(handler, logging.WARNING, "%s: command %r refused: %s", self.name, call.cmd, refused)
            self._send_error(handler, call.cmd, call.call_id, 503, f"server busy: {refused}")

    def _send_result(self, connection: Connection, cmd: Any, call_id: Any, result: Any) -> None:
        send_reply(connection, cmd, call_id, result, self.part_size)

    def _send_error(self, handler: BaseWebSocketHandler, cmd: Any, call_id: Any, status: int, error: str) -> None:
        try:
            handler.write_message(callformat.error_reply(cmd, call_id, status, error))
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("%d reply (callId %r) not sent: %s", status, call_id, exc)

    def stop_commands(self) -> None:
        """Take no more requests: queued ones are dropped, running ones are cancelled and finish. Safe from any thread.

        The server's ``stop()`` calls it.
        """
        self.commands.cancel_all()
        self._pool.close()
        self.commands.forget_all()  # queued calls were dropped; running ones are cancelled and send nothing

    @property
    def commands_busy(self) -> int:
        """How many peers' requests are queued or running now."""
        return self._pool.busy

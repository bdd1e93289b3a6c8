"""The worker threads of one RemoteService connection: :class:`Session`.

``workers + 1`` threads named ``syncws-remote-worker-N`` take turns reading
the connection (leader and followers); see :class:`Session`. What a request
is answered with, and how a result is sent, are the service's business: the
session is given two functions for them. The session parses requests
(:mod:`syncws.callformat`), answers what it cannot take with status 400, an
unknown command with 404 and a failed one with 500.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from typing import Any, Callable, Optional, Union

from . import callformat
from .client import ClientConnection
from .exceptions import ConnectionClosed, SendTimeout
from .lograte import RateLimitedLog

__all__ = ["Session", "CommandFunction"]

logger = logging.getLogger(__name__)

#: ``fn(request)`` returns JSON-able data, bytes-like data, a numpy array, or None.
CommandFunction = Callable[[dict[str, Any]], Any]
_Task = tuple[dict[str, Any], Optional[CommandFunction]]  # a request and its function (None: unknown command)
#: ``command_for(request)``: the function for a request (None: unknown) and whether the reader runs it itself.
CommandFor = Callable[[dict[str, Any]], tuple[Optional[CommandFunction], bool]]
#: ``send_result(connection, cmd, call_id, result)``: send a successful reply.
SendResult = Callable[[ClientConnection, Any, Any, Any], None]


class Session:
    """The worker threads of one connection, taking turns as its reader (leader/followers).

    One worker at a time, the leader, reads. When a request comes in and
    another worker is idle, the leader wakes it to lead and runs the request
    itself; when all others are busy, it queues the request and goes on
    reading, so pings are always answered. A worker that finishes takes
    queued requests first. Requests for inline commands (and for unknown
    ones, a quick 404) the leader answers itself before it reads on, waking
    no one. The lock of ``condition`` guards queued, leading, idle and ended.
    """

    def __init__(self, connection: ClientConnection, url: str, junk_log: RateLimitedLog, command_for: CommandFor, send_result: SendResult) -> None:
        self.connection = connection
        self.url = url
        self.junk_log = junk_log
        self._command_for = command_for
        self._send_result = send_result
        # Synchronize access to queued, leading, idle and ended; condition (on
        # this lock) wakes an idle worker to lead or to take a queued request.
        self._lock = threading.Lock()
        self.condition = threading.Condition(self._lock)
        self.queued: deque[_Task] = deque()
        self.leading = False
        self.idle = 0
        self.ended = False
        # Set with ended; the supervisor waits on it, not on the condition, so
        # that a notify() meant for an idle worker never wakes it instead.
        self.finished = threading.Event()

    def run(self, workers: int) -> None:
        """Start the workers and wait until the connection closed (supervisor thread)."""
        # One thread more than may run functions: whoever leads never runs one
        # while all the others are busy, so there is always a reader.
        count = max(1, workers) + 1
        threads = [threading.Thread(target=self._work, name=f"syncws-remote-worker-{i + 1}", daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        self.finished.wait()
        # Workers still running a request finish it on their own; their replies
        # fail to send and are logged at debug level.

    def _work(self) -> None:
        try:
            self._work_loop()
        except Exception:  # a bug here must not leave the session without a reader
            logger.exception("worker of %s failed; dropping the connection", self.url)
            self.connection.abort()
            with self.condition:
                self.ended, self.leading = True, False
                self.condition.notify_all()
            self.finished.set()

    def _work_loop(self) -> None:
        while True:
            with self.condition:
                task = self._next_task()
            if task is None:
                if self.ended:
                    return
                task = self._lead()
                if task is None:
                    return
            self._answer(self.connection, *task)

    def _next_task(self) -> Optional[_Task]:
        """A queued request, or None when this worker is to lead or the session ended. This method requires holding _lock."""
        assert self._lock.locked()
        while True:
            if self.queued:
                return self.queued.popleft()
            if self.ended:
                return None
            if not self.leading:
                self.leading = True
                return None
            self.idle += 1
            self.condition.wait()
            self.idle -= 1

    def _lead(self) -> Optional[_Task]:
        """Read until a request can be handed to this worker; None when the connection closed."""
        while True:
            message = self.connection.recv()
            if message is None:
                with self.condition:
                    self.ended, self.leading = True, False
                    self.condition.notify_all()
                self.finished.set()
                return None
            request = self._take_request(self.connection, message)
            if request is None:
                continue
            fn, inline = self._command_for(request)
            if inline:
                self._answer(self.connection, request, fn)
                continue
            with self.condition:
                if self.idle:
                    # Hand the reading on and run this request here: no hand-off of the request itself.
                    self.leading = False
                    self.condition.notify()
                    return request, fn
                self.queued.append((request, fn))

    def _take_request(self, connection: ClientConnection, message: Union[str, bytes]) -> Optional[dict[str, Any]]:
        """The request in a message; None for anything else, which is answered 400 and logged (reader thread).

        A message with a ``status`` and no ``cmd`` is a reply, not a request:
        it is logged and never answered, so that two peers cannot keep
        answering each other's answers.
        """
        try:
            return callformat.parse_request(message)
        except callformat.RefusedRequest as refused:
            if refused.answer:
                self._refuse(connection, refused.cmd, refused.call_id, refused.reason)
            else:
                self.junk_log.log(connection, logging.WARNING, "%s: %s ignored", self.url, refused.reason)
            return None

    def _refuse(self, connection: ClientConnection, cmd: Any, call_id: Any, reason: str) -> None:
        """Answer a message that is not a request with status 400, and log it at most once per interval (reader thread)."""
        self.junk_log.log(connection, logging.WARNING, "%s: %s; answered with status 400", self.url, reason)
        try:
            self._send_json(connection, callformat.error_reply(cmd, call_id, 400, reason))
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("400 reply (callId %r) not sent: %s", call_id, exc)

    def _answer(self, connection: ClientConnection, request: dict[str, Any], fn: Optional[CommandFunction]) -> None:
        """Run ``fn`` for one request, or answer 404 when None, and send the reply (worker thread)."""
        cmd, call_id = request.get("cmd"), request.get("callId")
        try:
            if fn is None:
                self._send_json(connection, callformat.error_reply(cmd, call_id, 404, f"unknown command {cmd!r}"))
                return
            try:
                result = fn(request)
            except Exception as exc:
                logger.info("command %r failed: %s: %s", cmd, type(exc).__name__, exc)
                self._send_json(connection, callformat.error_reply(cmd, call_id, 500, f"{type(exc).__name__}: {exc}"))
                return
            try:
                self._send_result(connection, cmd, call_id, result)
            except (ConnectionClosed, SendTimeout):
                raise
            except Exception as exc:
                # The result could not be encoded: the caller must still hear of it.
                logger.info("result of %r could not be sent: %s: %s", cmd, type(exc).__name__, exc)
                self._send_json(connection, callformat.error_reply(cmd, call_id, 500, f"{type(exc).__name__}: {exc}"))
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("reply to %r (callId %r) not sent: %s", cmd, call_id, exc)

    @staticmethod
    def _send_json(connection: ClientConnection, reply: dict[str, Any]) -> None:
        connection.send(json.dumps(reply))

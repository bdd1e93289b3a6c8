"""The worker threads of one RemoteService connection: :class:`Session`.

``workers + 1`` threads named ``syncws-remote-worker-N`` take turns reading
the connection (leader and followers), and one thread named
``syncws-remote-watchdog`` hands the reading on when the leader's command
runs long; see :class:`Session`. The service
gives the session its commands (what a request is answered with), its call
table (the service's own requests to the server, whose replies the reader
matches) and how a result is sent. The session tells requests, replies and
cancels apart (:mod:`syncws.callformat`), answers what it cannot take with
status 400, an unknown command with 404 and a failed one with 500, and fails
the service's calls on the connection at once when it closes. In rt-cloud
mode the service gives it another way to read requests (``take``) and to
write replies (a ``Replier``), :mod:`syncws.peer.rtcloud_peer`.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Optional, Union

from ..calls import callformat
from ..calls.callformat import CANCEL, REPLY
from ..calls.calls import CallTable
from ..calls.commands import CommandFunction, Commands, IncomingCall, Replier, SendResult, duplicate_error
from ..client.client import ClientConnection
from ..exceptions import ConnectionClosed, SendTimeout
from ..lograte import RateLimitedLog
from ..protocol.protocol import Message

__all__ = ["Session", "CommandFunction", "TakeRequest"]

logger = logging.getLogger(__name__)

_Task = tuple[IncomingCall, Optional[CommandFunction]]  # a request and its function (None: unknown command)

#: ``take(connection, message)``: the request in a message, or None for one
#: the reader took care of itself (a reply, a cancel, junk answered 400).
TakeRequest = Callable[[ClientConnection, Union[str, bytes]], Optional[IncomingCall]]

#: Seconds a command may run on the thread that read it before another worker
#: takes over the reading. Waking a thread to read costs about a quarter of a
#: quick request's round trip (docs/benchmarks.md); holding pings and the
#: next requests this long costs nothing a peer would notice.
HAND_OVER_AFTER = 0.002


class Session:
    """The worker threads of one connection, taking turns as its reader (leader/followers).

    One worker at a time, the leader, reads. When a request comes in and
    fewer than ``workers`` functions run, the leader runs it itself, still
    leading: a command that returns within :data:`HAND_OVER_AFTER` costs no
    thread switch at all, and the leader reads on. If it runs longer, the
    watchdog thread takes the lead from it and wakes an idle worker to read
    (there is one thread more than functions may run, so one is always free
    to), so a slow command holds up neither the pings nor the requests
    behind it; the old leader, once its command returns, becomes a follower.
    When ``workers`` functions run already, the leader queues the request and
    goes on reading, so pings are always answered. A worker that finishes
    takes queued requests first.
    Requests for inline commands (and for unknown ones, a quick 404) the
    leader answers itself and is never relieved of the lead; so are replies
    to the service's own calls, and cancels.

    The watchdog costs no wake-up per request: it is told when a command
    starts only if it is not already timing one (nor looking again, one
    period after the last run ended), and while requests keep coming it
    wakes once per :data:`HAND_OVER_AFTER` at most.
    """

    def __init__(
        self,
        connection: ClientConnection,
        url: str,
        junk_log: RateLimitedLog,
        commands: Commands,
        calls: CallTable,
        send_result: SendResult,
        draining: threading.Event,
        take: Optional[TakeRequest] = None,
        replier: Optional[Replier] = None,
    ) -> None:
        self.connection = connection
        self.url = url
        self.junk_log = junk_log
        self._commands = commands
        self._calls = calls
        self._send_result = send_result
        self._draining = draining  # set: the service is stopping, new requests get 503
        # Another wire format (rt-cloud's) reads its requests and writes its replies its own way.
        self._take_request: TakeRequest = take if take is not None else self._take
        self._replier = replier
        connection.on_closing = self._closing
        # Large reply parts to the service's own calls are read straight into their results.
        connection.placer = functools.partial(calls.place, connection)
        # Synchronize access to queued, leading, running, ended, _leader_busy
        # and _watching; condition (on this lock) wakes an idle worker to lead or to
        # take a queued request, _watch (on this lock) wakes the watchdog.
        self._lock = threading.Lock()
        self.condition = threading.Condition(self._lock)
        self._watch = threading.Condition(self._lock)
        self.queued: deque[_Task] = deque()
        self.leading = False
        self.running = 0  # functions running now, the leader's own included
        self.workers = 1  # how many may run at once (set by run)
        self.ended = False
        # (turn, start time, thread ident) of the command the leader runs while
        # it still leads; None while it reads. Each such run has a turn of its
        # own, so a leader whose lead was taken never mistakes a later run for its own.
        self._leader_busy: Optional[tuple[int, float, int]] = None
        self._turns = itertools.count(1)
        self._watching = False  # the watchdog times a command (and needs no notify for the next)
        # Set with ended; the supervisor waits on it, not on the condition, so
        # that a notify() meant for an idle worker never wakes it instead.
        self.finished = threading.Event()

    def _closing(self, code: int, reason: str) -> None:
        """The connection started to end: fail the service's calls on it, cancel the commands answering it (any thread).

        It may run under the connection's send lock: it only finishes futures
        and sets events, and never sends.
        """
        self._commands.cancel_all(self.connection)
        for call in self._calls.calls_on(self.connection):
            call.fail(ConnectionClosed(code, reason, f"connection to {self.url} closed while waiting for {call.cmd!r} (callId {call.call_id})"))

    def run(self, workers: int) -> None:
        """Start the workers and wait until the connection closed (supervisor thread)."""
        # One thread more than may run functions: whoever leads never runs one
        # while all the others are busy, so there is always a reader.
        self.workers = max(1, workers)
        count = self.workers + 1
        threads = [threading.Thread(target=self._work, name=f"syncws-remote-worker-{i + 1}", daemon=True) for i in range(count)]
        threads.append(threading.Thread(target=self._watchdog, name="syncws-remote-watchdog", daemon=True))
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
            self._end()

    def _end(self) -> None:
        """Mark the session ended and wake every thread waiting in it (any worker)."""
        with self.condition:
            self.ended, self.leading = True, False
            self.condition.notify_all()
            self._watch.notify_all()
        self.finished.set()

    def _work_loop(self) -> None:
        while True:
            with self.condition:
                task = self._next_task()
                if task is not None:
                    self.running += 1
            if task is not None:
                self._answer(self.connection, *task)
                with self.condition:
                    self.running -= 1
            elif self.ended:
                return
            else:
                self._lead()

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
            self.condition.wait()

    def _lead(self) -> None:
        """Read and answer until the connection closes or the watchdog takes the lead from this worker."""
        message: Optional[Message] = None
        call: Optional[IncomingCall] = None
        while True:
            # The last request and its message (perhaps large) are not kept while the next is awaited.
            message = call = None
            message = self.connection.recv()
            if message is None:
                # on_closing did this already, unless the connection ended in a way that skips it.
                self._closing(self.connection.close_code or 1006, self.connection.close_reason)
                self._end()
                return
            call = self._take_request(self.connection, message)
            if call is None:
                continue
            if self._draining.is_set():
                self._reject_call(call, 503, "service stopping")
                continue
            fn, inline = self._commands.lookup(call.cmd)
            call.inline = inline
            if not self._commands.begin(call):
                logger.warning("request %r refused: callId %r is in flight already", call.cmd, call.call_id)
                self._reject_call(call, 409, duplicate_error(call))
                continue
            if inline or fn is None:
                self._answer(self.connection, call, fn)
                continue
            with self._lock:  # the condition's lock, without Condition.__enter__'s Python call
                if self.running >= self.workers:
                    self.queued.append((call, fn))
                    continue
                self.running += 1
                # Run it here, still leading; the watchdog takes the lead if it runs long.
                turn = next(self._turns)
                self._leader_busy = (turn, time.monotonic(), threading.get_ident())
                if not self._watching:
                    self._watch.notify()
            call.before_wait = self._give_up_lead  # a command that waits on this connection lets another read at once
            self._answer(self.connection, call, fn)
            with self._lock:
                self.running -= 1
                if self._leader_busy is None or self._leader_busy[0] != turn:
                    return  # the watchdog gave the lead to another worker meanwhile
                self._leader_busy = None

    def _watchdog(self) -> None:
        """Give the lead to another worker when the leader's command has run :data:`HAND_OVER_AFTER` (watchdog thread)."""
        with self.condition:
            quiet = False  # the last look found no command running
            while not self.ended:
                busy = self._leader_busy
                if busy is None:
                    if quiet:
                        self._watching = False
                        self._watch.wait()
                        quiet = False
                    else:
                        # Commands may be coming in a stream: look again after one period
                        # instead of being told of the next run, which would cost the leader
                        # a notify per request. A whole period without one: wait to be told.
                        quiet = True
                        self._watch.wait(HAND_OVER_AFTER)
                    continue
                quiet = False
                self._watching = True
                left = busy[1] + HAND_OVER_AFTER - time.monotonic()
                if left > 0:
                    self._watch.wait(left)
                    continue
                self._hand_over()

    def _give_up_lead(self) -> None:
        """The command the calling worker runs while leading is about to wait on the connection: hand the reading on now.

        Run on the command's thread (``IncomingCall.before_wait``), before a
        ``request()`` to the server or a ``wait_cancelled()``: what it waits
        for must be read by another worker, so the watchdog's 2 ms is not
        worth waiting. Nothing to do when the lead was handed on already.
        """
        with self.condition:
            busy = self._leader_busy
            if busy is not None and busy[2] == threading.get_ident():
                self._hand_over()

    def _hand_over(self) -> None:
        """Take the lead from the worker running a command and wake another to read. This method requires holding _lock."""
        assert self._lock.locked()
        self._leader_busy = None
        self.leading = False
        # An idle worker leads (or, were none idle yet, the first to look for
        # work); the old leader follows once its command returns.
        self.condition.notify()

    def _take(self, connection: ClientConnection, message: Union[str, bytes]) -> Optional[IncomingCall]:
        """The request in a message; None for a reply, a part or a cancel (taken here) and for junk (reader thread).

        Junk is answered 400 and logged. A message with a ``status`` is a
        reply, never answered, so that two peers cannot keep answering each
        other's answers.
        """
        if isinstance(message, bytes) and self._calls.take_part(connection, message):
            return None
        try:
            kind, parsed = callformat.parse_message(message)
        except callformat.RefusedRequest as refused:
            if refused.answer:
                self._refuse(connection, refused.cmd, refused.call_id, refused.reason)
            else:
                self.junk_log.log(connection, logging.WARNING, "%s: %s ignored", self.url, refused.reason)
            return None
        if kind is REPLY:
            self._calls.take_reply(connection, parsed)
            return None
        if kind is CANCEL:
            self._commands.cancel(connection, parsed[callformat.CANCEL_FIELD])
            return None
        return IncomingCall(parsed, connection)

    def _refuse(self, connection: ClientConnection, cmd: Any, call_id: Any, reason: str) -> None:
        """Answer a message that is not a request with status 400, and log it at most once per interval (reader thread)."""
        self.junk_log.log(connection, logging.WARNING, "%s: %s; answered with status 400", self.url, reason)
        self._reject(connection, cmd, call_id, 400, reason)

    def _reject(self, connection: ClientConnection, cmd: Any, call_id: Any, status: int, reason: str) -> None:
        """Answer with an error status at once (reader thread)."""
        try:
            self._send_json(connection, callformat.error_reply(cmd, call_id, status, reason))
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("%d reply (callId %r) not sent: %s", status, call_id, exc)

    def _reject_call(self, call: IncomingCall, status: int, reason: str) -> None:
        """Answer a request with an error status at once, in the session's wire format (reader thread)."""
        if self._replier is None:
            self._reject(self.connection, call.cmd, call.call_id, status, reason)
            return
        try:
            self._replier.error(self.connection, call, status, reason)
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("%d reply (callId %r) not sent: %s", status, call.call_id, exc)

    def _answer(self, connection: ClientConnection, call: IncomingCall, fn: Optional[CommandFunction]) -> None:
        """Run ``fn`` for one request, or answer 404 when None, and send the reply (worker thread)."""
        self._commands.answer(call, fn, (call.request,), connection, self._send_result, self._replier)

    @staticmethod
    def _send_json(connection: ClientConnection, reply: dict[str, Any]) -> None:
        connection.send(json.dumps(reply))

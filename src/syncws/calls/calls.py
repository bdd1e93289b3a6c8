"""The calls this side made and waits on: one pending call, a call relayed for another node, and the table of them.

A server's RequestHandler and a peer's RemoteService both keep their calls
in a :class:`CallTable`, which matches each reply (and binary part) to its
call by callId and by the connection it came on.
:class:`PendingCall` is a :class:`~syncws.future.CallFuture` with what the
table needs to route and prune it; a binary reply's header
finishes it with a :class:`~syncws.reassembly.Transfer`, and a node link's
notes (progress, a peer that went away) finish it as the far side did.
:class:`RelayCall` is a call made for another node, whose reply goes on to
that node's link message by message. :class:`CallTable` keeps them by callId.

Threads: a call is finished by the connection's thread (its reply), by
whichever thread sees the connection close, or by the server's stop; its
caller waits in ``outcome``. The table is safe from any thread.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from typing import Any, Callable, Optional, Protocol, Union

from ..exceptions import ConnectionClosed, NotConnected, RequestCancelled, RequestError, RequestTimeout, SyncWSError
from ..lograte import RateLimitedLog
from . import callformat
from .callformat import LINK_FIELD
from .future import CallFuture
from .reassembly import Progress, Transfer, describe

__all__ = ["CallTable", "CancelToken", "LoopLeader", "PendingCall", "RelayCall", "RelaySink", "closed_while_waiting"]

logger = logging.getLogger("syncws.server.request_handler")  # the records of the calls: one logger

_PRUNE_EVERY = 60.0


class LoopLeader(Protocol):
    """An I/O loop a caller may lead while it waits for its reply (a HandlerPool's, syncws.reactor.caller_lead)."""

    def kept_for_me(self) -> bool:
        """Whether the loop is kept for the calling thread now."""

    def lead_while_waiting(self, until: Callable[[], bool], deadline: Optional[float]) -> None:
        """Lead the loop until ``until()`` or ``deadline`` when it is kept for the calling thread; else return at once."""

    def give_back(self) -> None:
        """The caller waits for more of the loop's work: a loop kept for it goes to another thread now."""


class PendingCall(CallFuture[Union[dict[str, Any], Transfer]]):
    """One request waiting for its reply: a future, and what the handler needs to route and prune it.

    Its outcome is the reply dict, or the Transfer of a binary reply. The
    fields below are written once, or, for ``waiting``, under the table's
    ``callbackLock``; ``transfer`` is set by the reader thread before the
    future is finished with it. ``conn`` is where the call went (a server's
    handler or node link, a peer's connection): only its replies count.
    """

    __slots__ = ("conn", "created", "progress", "transfer", "waiting")

    def __init__(self, call_id: int, cmd: Any, conn: object, progress: Optional[Progress], waiting: bool) -> None:
        super().__init__(call_id, cmd)
        self.conn = conn
        self.progress = progress
        self.created = time.monotonic()
        self.waiting = waiting  # a thread waits (or will) for it: pruning never drops it
        self.transfer: Optional[Transfer] = None

    def fail(self, error: BaseException) -> None:
        """Fail the call with ``error``, whether it waits for its reply or for the parts of one. Any thread."""
        self.set_exception(error)
        # Read after set_exception: a transfer set before the future finished with it is seen here.
        transfer = self.transfer
        if transfer is not None:
            transfer.fail(error)

    def outcome(self, timeout: Optional[float], cancel: Optional[CancelToken] = None, leader: Optional[LoopLeader] = None) -> dict[str, Any]:
        """The whole reply (caller thread); ``timeout`` bounds the wait for it and for each next part.

        ``cancel.cancel()``, from any thread, fails the call at once with
        RequestCancelled, whether it waits for the reply or for its parts.
        With a ``leader``, the caller reads the reply itself while the I/O
        loop is kept for it (syncws.reactor.caller_lead).
        """
        if cancel is None:
            result = self._result_leading(timeout, leader) if leader is not None else self.result(timeout)
            if isinstance(result, dict):
                return result
            if leader is not None:
                leader.give_back()  # the parts come through the loop: a worker leads it meanwhile
            return result.collect(timeout)
        unwatch = cancel.watch(lambda: self.fail(RequestCancelled(self.call_id, self.cmd)))
        try:
            return self.outcome(timeout, leader=leader)
        finally:
            unwatch()

    def _result_leading(self, timeout: Optional[float], leader: LoopLeader) -> Union[dict[str, Any], Transfer]:
        """:meth:`result`, leading the I/O loop until the reply is in when the loop is kept for this thread."""
        if not leader.kept_for_me():
            return self.result(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        leader.lead_while_waiting(self.done, deadline)
        try:
            return self.result(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except RequestTimeout:
            if self.done():
                raise  # the call's own outcome, not this wait's
            raise RequestTimeout(self.call_id, self.cmd, timeout) from None

    def take_reply(self, reply: dict[str, Any], via_link: bool, max_reply_size: int) -> bool:
        """Take a reply (or a binary reply's header) to this call; True once the table may forget it (reader thread)."""
        if via_link and LINK_FIELD in reply:
            self.apply_link_note(reply)
        elif self.transfer is not None:
            self.fail(RequestError(502, "damaged binary reply: a reply came in the middle of its parts", reply))
        elif callformat.is_binary_header(reply):
            self.start_transfer(reply, max_reply_size)
        else:
            self.set_result(reply)
        return False  # the caller forgets it once it has the outcome

    def place_part(self, part: callformat.PartHeader, length: int) -> Optional[memoryview]:
        """Where part ``part`` of the reply, ``length`` bytes, may be read straight into; None: nowhere (reader thread).

        Anything wrong with the part is left to :meth:`take_part`, which sees
        the same part as bytes and fails the call with 502.
        """
        transfer = self.transfer
        if transfer is None:
            return None
        try:
            return transfer.place(part, length)
        except Exception:
            return None

    def take_part(self, part: callformat.PartHeader, message: bytes) -> bool:
        """Take a binary part of the reply; whatever goes wrong fails the call with 502 at once (reader thread)."""
        try:
            if self.transfer is None:
                raise ValueError("binary part before the reply header")
            self.transfer.add(part, message)
        except Exception as exc:
            self.fail(RequestError(502, f"damaged binary reply: {describe(exc)}", {"cmd": self.cmd, "callId": self.call_id, "status": 502}))
        return False

    def apply_link_note(self, reply: dict[str, Any]) -> None:
        """What a node link says of a call beyond its reply: progress, or how the far side failed (link thread)."""
        note = reply[LINK_FIELD]
        if not isinstance(note, dict):
            self.set_result(reply)
        elif "progress" in note:
            received, total = note["progress"]
            if self.progress is not None:
                try:
                    self.progress(int(received), int(total))
                except Exception:
                    logger.exception("progress callback of call %d failed", self.call_id)
        elif "closed" in note:
            code, reason = note["closed"]
            self.fail(ConnectionClosed(int(code), str(reason), str(reply.get("error", "the peer went away"))))
        elif "timeout" in note:
            self.fail(RequestTimeout(self.call_id, self.cmd, None))
        elif "notConnected" in note:
            self.fail(NotConnected(str(note["notConnected"])))
        else:
            self.set_result(reply)

    def start_transfer(self, header: dict[str, Any], max_reply_size: int) -> None:
        """Take a binary reply's header: allocate the result, finish with its Transfer; else a 502 (reader thread)."""
        try:
            callformat.check_binary_header(header, max_reply_size)
            transfer = Transfer(header, self.call_id, self.cmd, self.progress)  # checks an array's layout now, before its bytes come
        except MemoryError:
            self.fail(RequestError(502, f"invalid binary reply: cannot allocate the {header.get('size')} bytes it announces", header))
        except Exception as exc:  # OverflowError from "shape": [Infinity], and whatever else: never a hang
            self.fail(RequestError(502, f"invalid binary reply: {describe(exc)}", header))
        else:
            self.transfer = transfer  # before the future finishes: see PendingCall.fail
            self.set_result(transfer)


class CancelToken:
    """Gives up, from any thread, the calls that other threads wait on with it.

    Pass it as ``doRequest(msg, ..., cancel=token)``; ``token.cancel()`` then
    ends every such call in flight at once with
    :class:`~syncws.exceptions.RequestCancelled`, tells its peer (a cancel
    message, as a timeout does), and refuses every later call made with the
    token before it is sent: once cancelled, always cancelled. One token may
    serve any number of calls and threads (a "Stop" button, a client that
    went away). Safe from any thread.
    """

    __slots__ = ("_cancelled", "_keys", "_lock", "_watchers")

    def __init__(self) -> None:
        # Synchronize access to _cancelled and _watchers.
        self._lock = threading.Lock()
        self._cancelled = False
        self._watchers: dict[int, Callable[[], None]] = {}
        self._keys = itertools.count()

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Give up every call made with this token, now and later. Idempotent."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            watchers, self._watchers = list(self._watchers.values()), {}
        for fail in watchers:  # outside the lock: each fails a call, which wakes its caller
            fail()

    def watch(self, fail: Callable[[], None]) -> Callable[[], None]:
        """Have ``fail()`` called on :meth:`cancel` (at once if cancelled already); returns the function that stops watching."""
        with self._lock:
            if not self._cancelled:
                key = next(self._keys)
                self._watchers[key] = fail
                return lambda: self._unwatch(key)
        fail()
        return lambda: None

    def _unwatch(self, key: int) -> None:
        with self._lock:
            self._watchers.pop(key, None)

    def __repr__(self) -> str:
        return f"<CancelToken{' cancelled' if self._cancelled else ''}>"


class RelaySink(Protocol):
    """Where a relayed call's reply goes on to: a node link (see :meth:`RequestHandler.relay`)."""

    def send_text(self, text: str) -> None: ...

    def send_parts(self, header: bytes, data: memoryview) -> None: ...


class RelayCall(PendingCall):
    """A call made for another node: its reply goes on to that node's link message by message, as it arrives.

    The peer's connection thread relays each message (rewritten for the
    link's callId) and nothing waits here: no thread of this node holds the
    call, no copy of a large reply is assembled, and the caller's own
    Transfer checks the parts and keeps its timeout part by part.
    """

    __slots__ = ("link_call_id", "parts_left", "sink")

    def __init__(self, call_id: int, cmd: Any, conn: object, sink: RelaySink, link_call_id: Any) -> None:
        super().__init__(call_id, cmd, conn, None, waiting=False)
        self.sink = sink
        self.link_call_id = link_call_id
        self.parts_left = 0

    def take_reply(self, reply: dict[str, Any], via_link: bool, max_reply_size: int) -> bool:
        return self.relay_reply(reply)

    def take_part(self, part: callformat.PartHeader, message: bytes) -> bool:
        return self.relay_part(part, message)

    def relay_reply(self, reply: dict[str, Any]) -> bool:
        """Send a text reply (or a binary reply's header) on; True once the call is over (reader thread)."""
        if callformat.is_binary_header(reply):
            parts = reply.get("parts")
            self.parts_left = parts if isinstance(parts, int) and parts > 0 else 0
        return self._send(lambda: self.sink.send_text(json.dumps({**reply, "callId": self.link_call_id}))) or self.parts_left == 0

    def relay_part(self, part: callformat.PartHeader, message: bytes) -> bool:
        """Send a binary part on under the link's callId (same place, same CRC-32); True once it was the last (reader thread)."""
        header = callformat.pack_part_header(self.link_call_id, part.part, part.parts, part.offset, part.crc32)
        self.parts_left = max(0, part.parts - part.part - 1)
        return self._send(lambda: self.sink.send_parts(header, memoryview(message)[callformat.PART_HEADER.size :])) or self.parts_left == 0

    def _send(self, send: Callable[[], None]) -> bool:
        """Run ``send``; True (the call is over: the link is gone) when it fails."""
        try:
            send()
            return False
        except (SyncWSError, OSError) as exc:
            logger.info("link for relayed call %d went away: %s", self.call_id, exc)
            return True

    def fail(self, error: BaseException) -> None:
        """The peer went away (or the server stops): tell the caller's node in a link note (any thread)."""
        if not self.set_exception(error):
            return
        code, reason = (error.code, error.reason) if isinstance(error, ConnectionClosed) else (1006, "")
        note = json.dumps({**callformat.error_reply(self.cmd, self.link_call_id, 502, str(error)), LINK_FIELD: {"closed": [code, reason]}})
        # The closing thread may hold the peer connection's send lock (a failed write aborts
        # under it): the note goes out on a thread of its own, not under that lock.
        threading.Thread(target=self._send, args=(lambda: self.sink.send_text(note),), name="syncws-relay-note", daemon=True).start()


class CallTable:
    """The calls in flight, by callId: registered by callers, matched against replies, pruned. Safe from any thread.

    Args:
        name: what the calls go to (an endpoint name, a URL), for log lines.
        max_reply_size: a binary reply announcing more bytes is refused (502).
        junk_log: where replies that cannot be matched (no valid callId) are
            logged, at most once per interval per connection.
    """

    def __init__(self, name: str, max_reply_size: int, junk_log: RateLimitedLog) -> None:
        self.name = name
        self.max_reply_size = max_reply_size
        self._junk_log = junk_log
        # Synchronize access to _calls, _call_ids, _last_prune and each call's waiting flag.
        self.callbackLock = threading.Lock()
        self._calls: dict[int, PendingCall] = {}
        self._call_ids = itertools.count(1)
        self._last_prune = time.monotonic()

    def add(self, make: Callable[[int], PendingCall]) -> PendingCall:
        """Register the call ``make(call_id)`` under a fresh callId and return it."""
        self._maybe_prune()
        with self.callbackLock:
            call = make(next(self._call_ids))
            self._calls[call.call_id] = call
        return call

    def forget(self, call_id: int) -> None:
        with self.callbackLock:
            self._calls.pop(call_id, None)

    def _find(self, channel: object, call_id: int) -> Optional[PendingCall]:
        """The call ``call_id`` sent on ``channel``, or None (logged at debug level)."""
        with self.callbackLock:
            call = self._calls.get(call_id)
        if call is None or call.conn is not channel:
            logger.debug("%s: reply to unknown or finished callId %d dropped", self.name, call_id)
            return None
        return call

    def relayed(self, sink: RelaySink, link_call_id: Any) -> Optional[RelayCall]:
        """The call relayed for ``sink``'s call ``link_call_id``, or None once it is over (a scan: cancels are rare)."""
        with self.callbackLock:
            for call in self._calls.values():
                if isinstance(call, RelayCall) and call.sink is sink and call.link_call_id == link_call_id:
                    return call
        return None

    def calls_on(self, channel: Optional[object]) -> list[PendingCall]:
        """The calls sent on ``channel`` (every call when None)."""
        with self.callbackLock:
            return [c for c in self._calls.values() if channel is None or c.conn is channel]

    def take_reply(self, channel: object, reply: dict[str, Any], via_link: bool = False) -> None:
        """Match a reply that came on ``channel`` to its call and finish it (reader thread). Never raises for bad input."""
        call_id = callformat.reply_call_id(reply)
        if call_id is None:
            if callformat.is_refusal(reply):
                # The peer's answer to a message it could not take and whose callId it could not read.
                status, error = _short_repr(reply.get("status")), _short_repr(reply["error"])
                self._junk_log.log(channel, logging.WARNING, "%s: the peer refused a message: status %s: %s", self.name, status, error)
            else:
                invalid = _short_repr(reply.get("callId"))
                self._junk_log.log(channel, logging.WARNING, "%s: reply with a missing or invalid callId %s dropped", self.name, invalid)
            return
        call = self._find(channel, call_id)
        if call is not None and call.take_reply(reply, via_link, self.max_reply_size):
            self.forget(call.call_id)

    def take_statusless(self, channel: object, message: dict[str, Any]) -> bool:
        """A message with a callId of a call on ``channel`` but neither ``status`` nor ``cmd``: fail that call (reader thread).

        Such a message cannot be a request (no ``cmd``), so it is a broken
        reply: its caller hears of it at once with RequestError 502 instead
        of waiting out its timeout. False when it names no call of ours.
        """
        call_id = callformat.reply_call_id(message)
        if call_id is None or "status" in message or "cmd" in message:
            return False
        call = self._find(channel, call_id)
        if call is None:
            return False
        call.fail(RequestError(502, "invalid reply: it has no status", {"callId": call_id, "status": 502}))
        return True

    def place(self, channel: object, prefix: bytes, length: int) -> Optional[memoryview]:
        """A :data:`~syncws.payload.Placer` for the connection ``channel`` reads: where a reply part goes (reader thread).

        ``prefix`` is the start of a large binary message of ``length``
        bytes; when it is the header of the next part of a binary reply to a
        call on ``channel``, the place of that part's bytes in the result,
        else None (the message then arrives as bytes, as any other).
        """
        part = callformat.decode_part_header(prefix)
        if part is None:
            return None
        with self.callbackLock:
            call = self._calls.get(part.call_id)
        if call is None or call.conn is not channel:
            return None
        return call.place_part(part, length - callformat.PART_HEADER.size)

    def take_part(self, channel: object, message: bytes) -> bool:
        """Match a binary reply part to its call (reader thread); False if ``message`` is not a part at all."""
        part = callformat.decode_part_header(message)
        if part is None:
            return False
        call = self._find(channel, part.call_id)
        if call is not None and call.take_part(part, message):
            self.forget(call.call_id)
        return True

    @property
    def pending(self) -> int:
        """How many calls are in the table now."""
        with self.callbackLock:
            return len(self._calls)

    def pruneCallbacks(self, max_age: float = 300.0) -> int:
        """Drop calls that no thread waits on and that are older than ``max_age`` s; return how many.

        A call a caller is waiting on is never touched: it ends by its own
        timeout. Only calls registered with prepare_request and never waited
        for can be left behind.
        """
        now = time.monotonic()
        with self.callbackLock:
            stale = [cid for cid, c in self._calls.items() if not c.waiting and now - c.created > max_age]
            for cid in stale:
                del self._calls[cid]
            self._last_prune = now
        return len(stale)

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune > _PRUNE_EVERY:
            self.pruneCallbacks()


def closed_while_waiting(code: int, reason: str, cmd: Any, call_id: Any) -> ConnectionClosed:
    """The error of a call whose connection closed before its reply came: it says the code and reason, with a hint for 1009."""
    text = f"connection closed with code {code}" + (f" ({reason})" if reason else "") + f" while waiting for {cmd!r} (callId {call_id})"
    if code == 1009:
        text += (
            ": a message was over a max_message_size; a large result goes best as bytes or a numpy array "
            "(sent in binary parts, not in one JSON message), or raise max_message_size on the side that closed"
        )
    return ConnectionClosed(code, reason, text)


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: a peer's junk goes into the log only this long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

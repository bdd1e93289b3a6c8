"""Requests from blocking threads to connected peers: :class:`RequestHandler`.

A worker thread calls :meth:`RequestHandler.doRequest`; the request goes out
as JSON with a fresh ``callId`` and the thread blocks on that call's own
``threading.Condition`` (the shape of ``concurrent.futures.Future``). The
connection's thread delivers the reply through :meth:`RequestHandler.callback`;
when the connection closes, :class:`~syncws.handlers.DataWebSocketHandler`
fails every call still waiting on it at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from typing import Any, Callable, Optional

from . import callformat, lograte, timeouts
from .connection import Message
from .exceptions import ConnectionClosed, NotConnected, RequestError, RequestTimeout, SendTimeout
from .handlers import BaseWebSocketHandler, websocketState
from .registry import ConnectionRegistry
from .server import WebSocketServer

__all__ = ["RequestHandler", "Progress"]

logger = logging.getLogger(__name__)

#: ``progress(bytes_received, total_bytes)``, called on the connection's thread.
Progress = Callable[[int, int], Any]

_PRUNE_EVERY = 60.0


class _PendingCall:
    """One request waiting for its reply.

    The connection thread fills it (:meth:`deliver`, :meth:`start_binary`,
    :meth:`add_part`, :meth:`fail`); the caller waits in :meth:`wait`.
    ``condition`` guards every field below it.

    A binary reply is split between the two threads: the connection thread
    checks each part's place and queues it; the caller, otherwise idle, checks
    each part's CRC-32 while the next ones arrive (zlib releases the GIL, so
    the two run at once), copies it into the result, allocated once at the
    announced size, and lets it go. A transfer holds the result and the parts
    still queued, never every part and the result at once.
    """

    def __init__(self, call_id: int, cmd: Any, conn: BaseWebSocketHandler, progress: Optional[Progress]) -> None:
        self.call_id = call_id
        self.cmd = cmd
        self.conn = conn
        self.progress = progress
        self.created = time.monotonic()
        self.condition = threading.Condition(threading.Lock())
        self.done = False
        self.waiting = False
        self.activity = 0  # bumped by each part, so that a moving transfer does not time out
        self.reply: Optional[dict[str, Any]] = None
        self.error: Optional[BaseException] = None
        self.binary_header: Optional[dict[str, Any]] = None
        self.assembler: Optional[callformat.ReplyAssembler] = None  # filled by the caller only
        self.parts: list[tuple[memoryview, int]] = []  # queued for the caller: (slice, its CRC-32 as announced)
        self.parts_received = 0
        self.received = 0
        self.complete = False

    def deliver(self, reply: dict[str, Any]) -> None:
        with self.condition:
            if self.done:
                return
            self.reply, self.done = reply, True
            self.condition.notify_all()

    def fail(self, error: BaseException) -> None:
        with self.condition:
            if self.done:
                return
            self.error, self.done = error, True
            self.condition.notify_all()

    def start_binary(self, header: dict[str, Any], max_size: int) -> None:
        """Take a binary reply's header and allocate its result (connection thread).

        Raises ValueError for an invalid header; anything else the allocation
        raises (MemoryError, OverflowError) goes to the caller of this method too.
        """
        size, parts = header.get("size"), header.get("parts")
        if not isinstance(size, int) or not isinstance(parts, int) or size < 0 or parts < 0 or (parts == 0) != (size == 0):
            raise ValueError(f"invalid size {size!r} or parts {parts!r}")
        if size > max_size:
            raise ValueError(f"reply of {size} bytes exceeds max_reply_size {max_size}")
        assembler = callformat.ReplyAssembler(header)  # checks an array's layout now, before its bytes come
        with self.condition:
            self.binary_header, self.assembler = header, assembler
            self.complete = size == 0
            self.activity += 1
            self.condition.notify_all()

    def add_part(self, part: callformat.PartHeader, message: bytes) -> None:
        """Check a part's place and queue it for the caller (connection thread)."""
        header = self.binary_header
        if header is None:
            raise ValueError("binary part before the reply header")
        data = memoryview(message)[callformat.PART_HEADER.size :]
        size = header["size"]
        if part.part != self.parts_received or part.parts != header["parts"]:
            raise ValueError(f"part {part.part}/{part.parts} out of order (expected {self.parts_received}/{header['parts']})")
        if part.offset != self.received or part.offset + len(data) > size:
            raise ValueError(f"part {part.part} at offset {part.offset} does not follow on (expected {self.received}) or runs past {size}")
        last = part.part + 1 == part.parts
        if last and part.offset + len(data) != size:
            raise ValueError("parts do not add up to the announced size")
        with self.condition:
            self.parts.append((data, part.crc32))
            self.parts_received += 1
            self.received += len(data)
            self.complete = last
            self.activity += 1
            self.condition.notify_all()
        if self.progress is not None:
            try:
                self.progress(self.received, size)
            except Exception:
                logger.exception("progress callback of call %d failed", self.call_id)

    def _moved(self, seen: int) -> Callable[[], bool]:
        return lambda: self.done or self.activity != seen

    def wait(self, timeout: Optional[float]) -> dict[str, Any]:
        """Block until the whole reply is in (caller thread); ``timeout`` bounds each wait for progress."""
        checked = 0
        while True:
            with self.condition:
                self.waiting = True
                while not self.done and not self.parts and not (self.complete and checked == self.parts_received):
                    if not self.condition.wait_for(self._moved(self.activity), timeout):
                        raise RequestTimeout(self.call_id, self.cmd, timeout)
                if self.error is not None:
                    raise self.error
                if self.reply is not None:
                    return self.reply
                new_parts, self.parts = self.parts, []
                assembler, complete, expected_parts = self.assembler, self.complete, self.parts_received
            assert assembler is not None  # set with the header, before any part is queued
            while new_parts:  # popped one by one: each message is let go once it is copied
                self._add_part_data(assembler, *new_parts.pop(0), index=checked)
                checked += 1
            if complete and checked == expected_parts:
                reply = self._reply_fields()
                try:
                    reply["data"] = assembler.value()
                except Exception as exc:  # whatever the parts make, the call ends with a 502
                    raise self._failed(f"damaged binary reply: {_describe(exc)}") from None
                self.deliver(reply)
                return reply

    def _add_part_data(self, assembler: callformat.ReplyAssembler, data: memoryview, checksum: int, index: int) -> None:
        """Check a part's CRC-32 and copy it into the result (caller thread)."""
        if callformat.crc32(data) != checksum:
            raise self._failed(f"damaged binary reply: part {index} failed its CRC-32 check")
        try:
            assembler.add(data)
        except Exception as exc:  # whatever the part holds, the call ends with a 502
            raise self._failed(f"damaged binary reply: {_describe(exc)}") from None

    def _failed(self, reason: str) -> RequestError:
        """Fail the call with a 502 RequestError, and return that error for the caller to raise."""
        error = RequestError(502, reason, self._reply_fields())
        self.fail(error)
        return error

    def _reply_fields(self) -> dict[str, Any]:
        header = self.binary_header or {"cmd": self.cmd, "callId": self.call_id, "status": 502}
        return {k: v for k, v in header.items() if k not in ("size", "parts", "dataType", "dtype", "shape")}


def _describe(exc: BaseException) -> str:
    """An exception as a reason: its message for a ValueError (the checks' own words), else ``Type: message``."""
    return str(exc) if type(exc) is ValueError else f"{type(exc).__name__}: {exc}"


def check_request(msg: Any) -> None:
    """Raise TypeError or ValueError unless ``msg`` is a request: a dict with a str ``cmd``."""
    if not isinstance(msg, dict):
        raise TypeError(f"a request must be a dict with a 'cmd', not {type(msg).__name__}")
    if "cmd" not in msg:
        raise ValueError("a request must have a 'cmd'")
    if not isinstance(msg["cmd"], str):
        raise TypeError(f"a request's 'cmd' must be a str, not {type(msg['cmd']).__name__}")


class RequestHandler:
    """Sends requests to the peers of one endpoint name and matches their replies.

    Register it with its endpoint::

        handler = RequestHandler("wsData", server)
        server.add_handler("/wsData", DataWebSocketHandler, name="wsData", callback=handler.callback)

    Args:
        name: the endpoint name whose connections it sends to.
        server: the server (its registry is used, and its ``stop()`` fails
            waiting calls). Requests then only ever go to connections that
            this server accepted, even when other servers share its registry.
            None uses the shared ``websocketState`` and reaches any connection
            of the name.
        max_reply_size: a binary reply announcing more bytes is refused.
        log_interval: junk from a peer (replies that are not replies) is
            logged at most once per this many seconds per connection; the next
            line says how many were suppressed.
    """

    def __init__(
        self, name: str, server: Optional[WebSocketServer] = None, max_reply_size: int = 4 << 30, log_interval: float = lograte.DEFAULT_INTERVAL
    ) -> None:
        self.name = name
        self._server = server
        self.registry: ConnectionRegistry[BaseWebSocketHandler] = server.registry if server is not None else websocketState
        self.max_reply_size = max_reply_size
        self._junk_log = lograte.RateLimitedLog(logger, log_interval)
        # Synchronize access to _calls, _call_ids and _last_prune.
        self.callbackLock = threading.Lock()
        self._calls: dict[int, _PendingCall] = {}
        self._call_ids = itertools.count(1)
        self._last_prune = time.monotonic()
        # Told when a connection of the name starts to close (DataWebSocketHandler), and when the server stops.
        self.registry.add_closing_listener(name, self)
        if server is not None:
            server.add_stop_callback(self.close_pending_requests)

    # ------------------------------------------------------------------ caller side

    def doRequest(
        self, msg: dict[str, Any], timeout: Optional[float] = None, conn: Optional[BaseWebSocketHandler] = None, progress: Optional[Progress] = None
    ) -> dict[str, Any]:
        """Send ``msg`` to a peer and block until its whole reply is in. Safe from any number of threads.

        Args:
            msg: a JSON-able dict with a str ``cmd``; a ``callId`` is added to a copy.
            timeout: seconds to wait for the reply, any non-negative number
                (None or ``math.inf``: forever). For a reply in binary parts it
                bounds the wait for each next part, so a long transfer that
                keeps moving does not time out.
            conn: the connection to ask; default: the newest one of the name
                (accepted by this handler's server, when it has one).
            progress: ``progress(received, total)`` for binary replies, called
                on the connection's thread after each part.

        Returns the reply dict: ``cmd``, ``callId``, ``status`` and, when the
        peer returned something, ``data`` (bytes for a bytes result).

        Raises, before anything is sent, TypeError or ValueError for a ``msg``
        that is not a dict with a str ``cmd`` or a NaN or negative ``timeout``,
        and NotConnected (no peer, or ``conn`` belongs to another server); then
        RequestTimeout, ConnectionClosed (the peer went away, at once) and
        RequestError (the peer's status was not 200; 502 for a binary reply
        that could not be taken).
        """
        check_request(msg)
        timeout = timeouts.check_timeout(timeout)
        call_id, handler = self._register(msg, conn, progress, claimed=True)
        try:
            request = dict(msg, callId=call_id)
            try:
                handler.write_message(json.dumps(request))
            except (ConnectionClosed, SendTimeout) as exc:
                raise ConnectionClosed(getattr(exc, "code", 1006), getattr(exc, "reason", ""), f"request {msg.get('cmd')!r} could not be sent: {exc}") from exc
            return self.get_response(call_id, timeout)
        finally:
            self._forget(call_id)

    def prepare_request(
        self, msg: dict[str, Any], conn: Optional[BaseWebSocketHandler] = None, progress: Optional[Progress] = None
    ) -> tuple[int, BaseWebSocketHandler]:
        """Give ``msg`` a callId and a connection and register the call: ``(callId, conn)``.

        Raises as :meth:`doRequest` does before it sends.
        """
        check_request(msg)
        return self._register(msg, conn, progress, claimed=False)

    def _register(
        self, msg: dict[str, Any], conn: Optional[BaseWebSocketHandler], progress: Optional[Progress], claimed: bool
    ) -> tuple[int, BaseWebSocketHandler]:
        # A claimed call belongs to a doRequest that will wait for it: pruning never touches it.
        if conn is not None and self._server is not None and conn.server is not self._server:
            raise NotConnected(f"{conn!r} was not accepted by this RequestHandler's server")
        handler = conn if conn is not None else self.registry.newest(self.name, server=self._server)
        if handler is None or handler.connection.closed:
            raise NotConnected(f"{self.name} not connected. Please start the remote service.")
        self._maybe_prune()
        with self.callbackLock:
            call_id = next(self._call_ids)
            call = _PendingCall(call_id, msg.get("cmd"), handler, progress)
            call.waiting = claimed
            self._calls[call_id] = call
        return call_id, handler

    def get_response(self, callId: int, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the reply to ``callId``; see :meth:`doRequest` for what it returns and raises."""
        timeout = timeouts.check_timeout(timeout)
        with self.callbackLock:
            call = self._calls.get(callId)
        if call is None:
            raise KeyError(f"no pending call with callId {callId}")
        try:
            reply = call.wait(timeout)
        finally:
            self._forget(callId)
        status = reply.get("status")
        if status != 200:
            raise RequestError(status if isinstance(status, int) else 500, str(reply.get("error", "")), reply)
        return reply

    def _forget(self, call_id: int) -> None:
        with self.callbackLock:
            self._calls.pop(call_id, None)

    @property
    def pending(self) -> int:
        """How many calls are in the table now."""
        with self.callbackLock:
            return len(self._calls)

    # ------------------------------------------------------------------ connection side

    def callback(self, client: BaseWebSocketHandler, message: Message) -> None:
        """Take a reply or reply part from a peer (connection thread). Never raises.

        A reply is matched by its callId and by the connection it came on; one
        that is invalid, unknown or late is logged and dropped (junk at most
        once per ``log_interval`` per connection). A binary reply's header or
        part that cannot be taken, for whatever reason, fails its call at once
        with RequestError 502.
        """
        try:
            if isinstance(message, str):
                self._on_text(client, message)
            else:
                self._on_binary(client, message)
        except Exception:  # a bug here must not kill the connection thread
            logger.exception("%s: failed to handle a reply", self.name)

    def _find(self, client: BaseWebSocketHandler, call_id: Any) -> Optional[_PendingCall]:
        if not isinstance(call_id, int) or isinstance(call_id, bool):
            self._junk_log.log(client, logging.WARNING, "%s: reply with a missing or invalid callId %s dropped", self.name, _short_repr(call_id))
            return None
        with self.callbackLock:
            call = self._calls.get(call_id)
        if call is None or call.conn is not client:
            logger.debug("%s: reply to unknown or finished callId %d dropped", self.name, call_id)
            return None
        return call

    def _on_text(self, client: BaseWebSocketHandler, message: str) -> None:
        try:
            reply = json.loads(message)
        except (ValueError, RecursionError):
            self._junk_log.log(client, logging.WARNING, "%s: reply that is not JSON dropped (%d characters)", self.name, len(message))
            return
        if not isinstance(reply, dict):
            self._junk_log.log(client, logging.WARNING, "%s: reply that is not a JSON object dropped", self.name)
            return
        call_id = reply.get("callId")
        if call_id is None and reply.get("status") != 200 and "error" in reply:
            # The peer's answer to a message it could not take and whose callId it could not read.
            status, error = _short_repr(reply.get("status")), _short_repr(reply["error"])
            self._junk_log.log(client, logging.WARNING, "%s: the peer refused a message: status %s: %s", self.name, status, error)
            return
        call = self._find(client, call_id)
        if call is None:
            return
        if reply.get("dataType") in ("bytes", "ndarray") and reply.get("status") == 200:
            try:
                call.start_binary(reply, self.max_reply_size)
            except MemoryError:
                call.fail(RequestError(502, f"invalid binary reply: cannot allocate the {reply.get('size')} bytes it announces", reply))
            except Exception as exc:  # OverflowError from "shape": [Infinity], and whatever else: never a hang
                call.fail(RequestError(502, f"invalid binary reply: {_describe(exc)}", reply))
            return
        call.deliver(reply)

    def _on_binary(self, client: BaseWebSocketHandler, message: bytes) -> None:
        part = callformat.decode_part_header(message)
        if part is None:
            self._junk_log.log(client, logging.WARNING, "%s: binary message that is not a reply part dropped (%d bytes)", self.name, len(message))
            return
        call = self._find(client, part.call_id)
        if call is None:
            return
        try:
            call.add_part(part, message)
        except Exception as exc:  # whatever goes wrong with a part, its call ends with a 502 at once
            call.fail(RequestError(502, f"damaged binary reply: {_describe(exc)}", {"cmd": call.cmd, "callId": call.call_id, "status": 502}))

    def connection_closing(self, handler: BaseWebSocketHandler, code: int, reason: str) -> None:
        """A connection of this name started to close: fail its calls at once (the thread that decided the close).

        The registry calls it (see DataWebSocketHandler); the count of junk
        still suppressed for ``handler`` is logged then.
        """
        self._junk_log.forget(handler, what=self.name)
        self._fail_calls(handler, code, reason)

    def close_pending_requests(self, conn: Optional[BaseWebSocketHandler] = None) -> None:
        """Fail at once, with ConnectionClosed, the calls sent on ``conn`` (all calls when None). Safe from any thread."""
        if conn is not None:
            self._junk_log.forget(conn, what=self.name)
        self._fail_calls(conn, None, "")

    def _fail_calls(self, conn: Optional[BaseWebSocketHandler], code: Optional[int], reason: str) -> None:
        with self.callbackLock:
            calls = [c for c in self._calls.values() if conn is None or c.conn is conn]
        for call in calls:
            connection = call.conn.connection
            call.fail(
                ConnectionClosed(
                    code or connection.close_code or 1006,
                    reason or connection.close_reason,
                    f"connection closed while waiting for {call.cmd!r} (callId {call.call_id})",
                )
            )

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


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters: a peer's junk goes into the log only this long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

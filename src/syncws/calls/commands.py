"""The calls this side answers: registered commands, the call being answered, and its cancellation.

Both sides of a connection answer calls the same way (docs/protocol.md): a
server's :class:`~syncws.RequestHandler` runs its commands on a
:class:`~syncws.command_pool.CommandPool`, a peer's
:class:`~syncws.RemoteService` on its connection's worker threads. Both keep
a :class:`Commands` table (what is registered, and the calls being answered
now) and run each call through :meth:`Commands.answer`, which sends the
reply: JSON, bytes and numpy arrays in binary parts, a 404 for an unknown
command, a 500 ``"ExceptionType: message"`` when the function raised.

While a function runs, :func:`current_call` on its thread returns the
:class:`IncomingCall` it answers; ``cancelled`` turns True when the caller
gave up (a ``{"cancel": N}`` came: its timeout passed) or the connection
closed, and the reply of a cancelled call is dropped without a word.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional, Protocol

from ..engine.connection import Connection
from ..exceptions import ConnectionClosed, SendTimeout
from . import callformat

__all__ = ["CommandFunction", "CommandDecorator", "Commands", "IncomingCall", "Replier", "SendResult", "current_call", "duplicate_error", "send_reply"]

logger = logging.getLogger(__name__)

#: A command: ``fn(request)`` on a peer, ``fn(request, conn)`` on a server. It
#: returns JSON-able data, bytes-like data, a numpy array, or None.
CommandFunction = Callable[..., Any]

#: ``send_result(connection, cmd, call_id, result)``: send a successful reply.
SendResult = Callable[[Connection, Any, Any, Any], None]


class Replier(Protocol):
    """How a side writes its replies in another format than syncws's (a peer answering an rt-cloud server).

    Given to :meth:`Commands.answer` as ``replier``; without one, replies
    are syncws's (``send_result`` and its error replies). Both methods run
    on the thread that answers the call and may raise ConnectionClosed or
    SendTimeout; ``result`` raises another exception for a result it cannot
    send, which is then answered with ``error``.
    """

    def result(self, connection: Connection, call: IncomingCall, result: Any) -> None:
        """Send ``result`` as the successful reply to ``call``."""

    def error(self, connection: Connection, call: IncomingCall, status: int, text: str) -> None:
        """Send the error reply to ``call``: ``status`` as syncws would send it (404 unknown, 500 failed), and its text."""


class _CallOfThread(threading.local):
    """What each thread is answering now: ``call``, the innermost IncomingCall, or None.

    A class attribute as the default: reading a missing thread-local
    attribute with ``getattr(..., None)`` raises and catches AttributeError
    inside, about a microsecond on every doRequest.
    """

    call: Optional[IncomingCall] = None


_local = _CallOfThread()
# Synchronize access to every IncomingCall's _cancelled and _event (rarely taken: a cancel, a wait).
_event_lock = threading.Lock()


class IncomingCall:
    """One call this side is answering: the request, the connection it came on, and whether its caller gave up.

    Made by the thread that read the request; ``cancelled`` is safe to read
    from any thread (a command polls it to stop early).
    """

    __slots__ = ("_cancelled", "_event", "before_wait", "call_id", "cmd", "conn", "inline", "request")

    def __init__(self, request: dict[str, Any], conn: object, inline: bool = False) -> None:
        self.request = request
        self.cmd: Any = request.get("cmd")
        self.call_id: Any = request.get("callId")
        #: The connection it came on: the server's handler, or the peer's ClientConnection.
        self.conn = conn
        #: True when it runs on the thread that reads its connection (registered ``inline=True``).
        self.inline = inline
        #: Called on the command's thread before it waits for something that comes
        #: on its own connection (a reply, a cancel), where that thread may be the
        #: one that reads it: a RemoteService's leading worker then hands the reading on.
        self.before_wait: Optional[Callable[[], None]] = None
        # A flag, and an Event made only for a command that waits on it: most
        # calls are never cancelled, and an Event per call costs a Condition.
        self._cancelled = False
        self._event: Optional[threading.Event] = None

    @property
    def cancelled(self) -> bool:
        """True once the caller gave up on this call (its timeout passed) or the connection closed."""
        return self._cancelled

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """Block until the call is cancelled or ``timeout`` passes; True if cancelled (a sleep a cancel cuts short)."""
        with _event_lock:
            if self._cancelled:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if self.before_wait is not None:
            self.before_wait()  # the cancel is read by the connection's reader: not this thread
        return event.wait(timeout)

    def cancel(self) -> None:
        """Mark the call cancelled: its reply will not be sent. Any thread."""
        with _event_lock:
            self._cancelled = True
            event = self._event
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        state = " cancelled" if self.cancelled else ""
        return f"<IncomingCall callId={self.call_id!r} cmd={self.cmd!r}{state}>"


def current_call() -> Optional[IncomingCall]:
    """The call the calling thread is answering now (on either side), or None outside a command."""
    return _local.call


class CommandDecorator:
    """``@command(cmd)``, the decorator form of ``register(cmd, fn, inline=...)``, for either side that answers calls."""

    def register(self, cmd: str, fn: CommandFunction, *, inline: bool = False) -> None:
        raise NotImplementedError

    def command(self, cmd: str, *, inline: bool = False) -> Callable[[CommandFunction], CommandFunction]:
        """Decorator form of :meth:`register`."""

        def decorate(fn: CommandFunction) -> CommandFunction:
            self.register(cmd, fn, inline=inline)
            return fn

        return decorate


class Commands:
    """The commands one side answers, and the calls it is answering now. Safe from any thread."""

    def __init__(self) -> None:
        # Synchronize access to _functions, _inline and _active.
        self._lock = threading.Lock()
        self._functions: dict[str, CommandFunction] = {}
        self._inline: set[str] = set()  # commands run by the thread that read the request
        # The calls being answered (queued or running), by connection and callId: what a cancel finds.
        self._active: dict[tuple[object, int], IncomingCall] = {}

    def register(self, cmd: str, fn: CommandFunction, inline: bool = False) -> None:
        """Answer requests whose ``cmd`` is ``cmd`` with ``fn``; TypeError for a cmd that is not a str or an fn not callable."""
        if not isinstance(cmd, str):
            raise TypeError(f"a command's name must be a str, not {type(cmd).__name__}")
        if not callable(fn):
            raise TypeError(f"a command's function must be callable, not {type(fn).__name__}")
        with self._lock:
            self._functions[cmd] = fn
            if inline:
                self._inline.add(cmd)
            else:
                self._inline.discard(cmd)

    def lookup(self, cmd: str) -> tuple[Optional[CommandFunction], bool]:
        """The function for ``cmd`` (None: unknown) and whether it runs inline."""
        with self._lock:
            return self._functions.get(cmd), cmd in self._inline

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._functions)

    # ------------------------------------------------------------------ calls being answered

    def begin(self, call: IncomingCall) -> bool:
        """Note ``call`` as being answered, so that a cancel finds it (the thread that read it).

        False, and nothing noted, when a call with the same callId is being
        answered on the same connection already: the caller must refuse it
        (409), or the first could no longer be cancelled, nor the second.
        """
        if _is_call_id(call.call_id):
            key = (call.conn, call.call_id)
            with self._lock:
                if key in self._active:
                    return False
                self._active[key] = call
        return True

    def end(self, call: IncomingCall) -> None:
        """Forget ``call`` once answered (whichever thread answered it)."""
        if _is_call_id(call.call_id):
            with self._lock:
                if self._active.get((call.conn, call.call_id)) is call:
                    del self._active[(call.conn, call.call_id)]

    def cancel(self, conn: object, call_id: int) -> bool:
        """The caller on ``conn`` gave up on ``call_id``: mark it cancelled; False if it was not being answered."""
        with self._lock:
            call = self._active.get((conn, call_id))
        if call is None:
            logger.debug("cancel of callId %d, which is not being answered, ignored", call_id)
            return False
        call.cancel()
        return True

    def forget_all(self) -> None:
        """Forget every call being answered: they will not be answered any more (the server stops)."""
        with self._lock:
            self._active.clear()

    def cancel_all(self, conn: Optional[object] = None, forget: bool = False) -> int:
        """Mark cancelled every call being answered for ``conn`` (every call when None): it closed. Returns how many.

        With ``forget``, they are forgotten too: the connection is gone, so no
        cancel can come for them, and a queued one dropped is never ended.
        """
        with self._lock:
            calls = [c for (owner, _), c in self._active.items() if conn is None or owner is conn]
            if forget:
                for call in calls:
                    del self._active[(call.conn, call.call_id)]
        for call in calls:
            call.cancel()
        return len(calls)

    @property
    def active(self) -> int:
        """How many calls are being answered (queued or running) now."""
        with self._lock:
            return len(self._active)

    # ------------------------------------------------------------------ answering

    def answer(
        self,
        call: IncomingCall,
        fn: Optional[CommandFunction],
        args: tuple[Any, ...],
        connection: Connection,
        send_result: SendResult,
        replier: Optional[Replier] = None,
    ) -> None:
        """Run ``fn(*args)`` as ``call`` and send its reply on ``connection``, then forget the call (the thread that runs it).

        ``send_result(connection, cmd, call_id, result)`` sends a successful
        reply (:func:`send_reply` with the side's part size). A ``replier``,
        when given, writes the replies instead, the errors too.

        An unknown command (``fn`` None) gets 404, a function that raises 500
        with ``"ExceptionType: message"``, a result that cannot be sent 500
        too; a call cancelled before or while it ran gets no reply. Never
        raises: a reply that cannot be sent (the connection went away) is
        logged at debug level.
        """
        cmd, call_id = call.cmd, call.call_id
        try:
            if fn is None:
                _send_error(connection, call, 404, f"unknown command {cmd!r}", replier)
                return
            if call.cancelled:
                logger.debug("call %r (callId %r) cancelled before it ran", cmd, call_id)
                return
            result = _run(call, fn, args)
            if call.cancelled:
                logger.debug("reply to cancelled call %r (callId %r) dropped", cmd, call_id)
                return
            if isinstance(result, _Failure):
                logger.info("command %r failed: %s", cmd, result.text)
                _send_error(connection, call, 500, result.text, replier)
                return
            try:
                if replier is None:
                    send_result(connection, cmd, call_id, result)
                else:
                    replier.result(connection, call, result)
            except (ConnectionClosed, SendTimeout):
                raise
            except Exception as exc:
                # The result could not be encoded: the caller must still hear of it.
                logger.info("result of %r could not be sent: %s: %s", cmd, type(exc).__name__, exc)
                _send_error(connection, call, 500, f"{type(exc).__name__}: {exc}", replier)
        except (ConnectionClosed, SendTimeout) as exc:
            logger.debug("reply to %r (callId %r) not sent: %s", cmd, call_id, exc)
        finally:
            self.end(call)


class _Failure:
    """What a command raised, as its error reply says it."""

    __slots__ = ("text",)

    def __init__(self, exc: BaseException) -> None:
        self.text = f"{type(exc).__name__}: {exc}"


def _run(call: IncomingCall, fn: CommandFunction, args: tuple[Any, ...]) -> Any:
    """``fn(*args)`` with ``call`` as the thread's current call; a _Failure when it raised."""
    outer = _local.call  # an inline command answering inside another's wait
    _local.call = call
    try:
        return fn(*args)
    except BaseException as exc:  # SystemExit from sys.exit() too: the caller hears of it, the thread lives on
        return _Failure(exc)
    finally:
        _local.call = outer


def send_reply(connection: Connection, cmd: Any, call_id: Any, result: Any, part_size: int) -> None:
    """Send a successful reply: JSON, or a header and binary parts for bytes-like data and arrays. Any thread.

    Raises TypeError for a value that cannot be sent (an object array) and
    ValueError for a binary result to a callId that cannot label its parts,
    both before anything is sent; ConnectionClosed or SendTimeout when the
    connection fails.
    """
    binary = callformat.as_binary(result)
    if binary is None:
        connection.send(callformat.encode_result(cmd, call_id, result))
        return
    if not _is_call_id(call_id) or not 0 <= call_id < 1 << 64:
        raise ValueError(f"callId {call_id!r} cannot label a binary reply (its parts carry an unsigned 64-bit callId)")
    header, parts = callformat.encode_binary_reply(cmd, call_id, *binary, part_size)
    connection.send(header)
    for part_header, chunk in parts:
        connection.send_parts(part_header, chunk)


def _send_error(connection: Connection, call: IncomingCall, status: int, error: str, replier: Optional[Replier]) -> None:
    if replier is None:
        connection.send(callformat.error_reply(call.cmd, call.call_id, status, error))
    else:
        replier.error(connection, call, status, error)


def duplicate_error(call: IncomingCall) -> str:
    """The text of the 409 that refuses a request whose callId is being answered on its connection already."""
    return f"callId {call.call_id} is already being answered on this connection; a callId may be reused only once its reply came"


def _is_call_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

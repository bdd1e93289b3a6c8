"""A server's counters: per endpoint (connections, messages, bytes), handshakes refused, full send queues.

:class:`EndpointCounters` is one endpoint's, shared by its connections: the
connection's reader thread counts what it receives, whichever thread sends
counts what it sends (``Connection.meter``), and the server counts
connections as they open and close. :class:`ServerCounters` holds every
endpoint's and the refusals. Nothing here does I/O; reading is a copy made
under the same locks, safe from any thread.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Union

from ..exceptions import HandshakeError
from ..protocol.payload import PlacedPayload

__all__ = ["EndpointCounters", "ServerCounters", "REFUSALS", "message_size", "refusal_of"]

#: Why a handshake was refused: the auth check, the Origin check, a limit
#: (``max_connections``, ``max_handshakes``), the server stopping, no endpoint
#: at the path, a request that is no valid websocket upgrade, or a failure of
#: the server's own (a handler's ``initialize`` or subprotocol choice raised).
REFUSALS = ("auth", "origin", "limit", "stopping", "not_found", "bad_request", "error")


def refusal_of(error: HandshakeError) -> str:
    """Why ``error`` refused a handshake, one of :data:`REFUSALS`."""
    if error.refusal:
        return error.refusal
    return "error" if error.status >= 500 else "bad_request"


def message_size(message: Union[str, bytes, bytearray, memoryview]) -> int:
    """A message's payload in bytes: a text's UTF-8 length (free for ASCII, whose length CPython stores).

    A binary message read straight into its place (a :class:`PlacedPayload`,
    a large reply part) holds only its prefix: its ``length`` is the payload's.
    """
    if isinstance(message, str):
        return len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))
    if type(message) is PlacedPayload:
        return message.length
    return message.nbytes if isinstance(message, memoryview) else len(message)


#: How many messages a tally holds before the thread that adds one folds it into the totals.
FOLD_AT = 1024


class Tally:
    """Sizes counted from many threads without a lock on the way: each one appended to a deque
    (one atomic step in CPython, and thread-safe on a free-threaded build), and folded into
    ``count`` and ``total`` under the owner's lock by whoever reads, or by the adder that finds
    :data:`FOLD_AT` waiting. The per-message path of every connection pays an append, not a lock.
    """

    __slots__ = ("_waiting", "count", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self._waiting: collections.deque[int] = collections.deque()

    def add(self, size: int, lock: threading.Lock) -> None:
        """Count one message of ``size`` bytes (any thread)."""
        waiting = self._waiting
        waiting.append(size)
        if len(waiting) > FOLD_AT:
            with lock:
                self.fold()

    def fold(self) -> None:
        """Move what waits into ``count`` and ``total``. Requires the owner's lock (the only place items leave)."""
        waiting = self._waiting
        taken = len(waiting)  # items appended meanwhile stay for the next fold
        total = 0
        for _ in range(taken):
            total += waiting.popleft()
        self.count += taken
        self.total += total


class EndpointCounters:
    """One endpoint's figures since the server started. Every method is safe from any thread.

    Bytes are payload bytes, what the application sent or received (a text's
    UTF-8 length, before compression and framing), so that a message of n
    bytes moves them by exactly n.
    """

    def __init__(self, label: str) -> None:
        #: The endpoint's path as ``add_handler`` was given it ("*" for a fallback handler).
        self.label = label
        # Synchronize access to the counters below (a Python ``+=`` is a read and a write, and two
        # threads counting at once would lose one) and the folding of the two tallies.
        self._lock = threading.Lock()
        self.opened = 0
        self.closed: dict[int, int] = {}  # close code: connections closed with it
        self.queue_full = 0  # connections closed because their send queue was full
        self._in = Tally()  # messages and bytes received
        self._out = Tally()  # messages and bytes sent

    # What a connection counts (Connection.meter): its reader thread, or any sender.

    def received(self, message: Union[str, bytes, bytearray, memoryview]) -> None:
        """Count one message received (the connection's reader thread)."""
        self._in.add(message_size(message), self._lock)

    def sent(self, size: int) -> None:
        """Count one message of ``size`` payload bytes handed to the connection to send (any thread)."""
        self._out.add(size, self._lock)

    def send_queue_full(self) -> None:
        """Count a connection given up because too much waited to be sent to it (any thread)."""
        with self._lock:
            self.queue_full += 1

    # What the server counts.

    def connection_opened(self) -> None:
        """Count a connection admitted (its thread, once the handshake is accepted)."""
        with self._lock:
            self.opened += 1

    def connection_closed(self, code: int) -> None:
        """Count a connection ended with close ``code`` (1006 when it was lost without a close frame)."""
        code = int(code)  # a CloseCode is an IntEnum, whose str() is its name before Python 3.11
        with self._lock:
            self.closed[code] = self.closed.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """This endpoint's figures as a plain dict, copied at one moment (any thread)."""
        with self._lock:
            self._in.fold()
            self._out.fold()
            closed = dict(self.closed)
            return {
                "connections": self.opened - sum(closed.values()),
                "opened": self.opened,
                "closed": {str(code): count for code, count in sorted(closed.items())},
                "messages_in": self._in.count,
                "messages_out": self._out.count,
                "bytes_in": self._in.total,
                "bytes_out": self._out.total,
                "closed_send_queue_full": self.queue_full,
            }


class ServerCounters:
    """Every endpoint's counters and the refused handshakes of one server. Safe from any thread."""

    def __init__(self) -> None:
        # Synchronize access to _endpoints (the dict, not the counters in it) and _refused.
        self._lock = threading.Lock()
        self._endpoints: dict[str, EndpointCounters] = {}
        self._refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)

    def endpoint(self, label: str) -> EndpointCounters:
        """The counters of the endpoint at ``label``, made on first use (any thread)."""
        with self._lock:
            counters = self._endpoints.get(label)
            if counters is None:
                counters = self._endpoints[label] = EndpointCounters(label)
            return counters

    def refused(self, reason: str) -> None:
        """Count a handshake refused for ``reason``, one of :data:`REFUSALS` (any thread)."""
        with self._lock:
            self._refused[reason] = self._refused.get(reason, 0) + 1

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
        """Every endpoint's figures, by label, and the refusals by reason (any thread)."""
        with self._lock:
            endpoints = list(self._endpoints.values())
            refused = dict(self._refused)
        return {counters.label: counters.snapshot() for counters in sorted(endpoints, key=lambda c: c.label)}, refused

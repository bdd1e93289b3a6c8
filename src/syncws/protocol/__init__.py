"""The websocket protocol without I/O: frames, masking, the reader, permessage-deflate,
the ``Protocol`` state machine and the HTTP upgrade decided on bytes.

Layer 1, above the base modules (``exceptions``, ``timeouts``, ``lograte``) and
importing nothing else of syncws: no socket, no thread, tested on bytes.
"""

from __future__ import annotations

from .protocol import Close, CloseCode, Event, Message, Ping, Pong, Protocol, State

__all__ = ["Close", "CloseCode", "Event", "Message", "Ping", "Pong", "Protocol", "State"]

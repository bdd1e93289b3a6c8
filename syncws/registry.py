"""The registry of open connections per endpoint name, and the callbacks of each name.

It keeps the attribute names of ``rtCommon.webSocketHandlers.websocketState`` so
that code written against it goes on working: ``wsConnLock``,
``wsConnectionLists`` and ``wsCallbacks``. The methods are the way to use it:
each takes the lock, copies what it needs and lets go, so that no socket I/O and
no user code ever runs while the lock is held.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .handlers import BaseWebSocketHandler

__all__ = ["ConnectionRegistry", "websocketState", "Callback"]

Callback = Callable[["BaseWebSocketHandler", Any], Any]


class ConnectionRegistry:
    """Open connections by endpoint name, oldest first. Every method is safe from any thread.

    Several servers in one process may share a registry (the default
    ``websocketState``, as in rtCommon): the module-level functions then reach
    the connections of all of them, while a server, and a RequestHandler bound
    to one, asks with ``server=`` for the connections it accepted itself.
    """

    def __init__(self) -> None:
        # Synchronize access to wsConnectionLists and wsCallbacks.
        self.wsConnLock = threading.Lock()
        self.wsConnectionLists: dict[str, list[BaseWebSocketHandler]] = {}
        self.wsCallbacks: dict[str, Callback] = {}

    def ensure(self, name: str, callback: Optional[Callback] = None) -> None:
        """Create the list of ``name`` if missing; set its callback when one is given."""
        with self.wsConnLock:
            self.wsConnectionLists.setdefault(name, [])
            if callback is not None:
                self.wsCallbacks[name] = callback

    def add(self, name: str, handler: BaseWebSocketHandler) -> None:
        """Append ``handler`` to the list of ``name``."""
        with self.wsConnLock:
            self.wsConnectionLists.setdefault(name, []).append(handler)

    def remove(self, name: str, handler: BaseWebSocketHandler) -> bool:
        """Remove ``handler`` from the list of ``name``; False if it was not there."""
        with self.wsConnLock:
            handlers = self.wsConnectionLists.get(name, [])
            if handler in handlers:
                handlers.remove(handler)
                return True
            return False

    def contains(self, name: str, handler: BaseWebSocketHandler) -> bool:
        """True if ``handler`` is registered under ``name``."""
        with self.wsConnLock:
            return handler in self.wsConnectionLists.get(name, ())

    def connections(self, name: str, server: Optional[object] = None) -> list[BaseWebSocketHandler]:
        """A copy of the list of ``name``, oldest first; with ``server``, only the connections that server accepted."""
        with self.wsConnLock:
            handlers = self.wsConnectionLists.get(name, ())
            return [h for h in handlers if server is None or h.server is server]

    def newest(self, name: str, server: Optional[object] = None) -> Optional[BaseWebSocketHandler]:
        """The most recently opened connection of ``name`` (accepted by ``server``, when given), or None."""
        with self.wsConnLock:
            for handler in reversed(self.wsConnectionLists.get(name, ())):
                if server is None or handler.server is server:
                    return handler
            return None

    def callback(self, name: str) -> Optional[Callback]:
        """The callback registered for ``name``, or None."""
        with self.wsConnLock:
            return self.wsCallbacks.get(name)

    def take_all(self) -> list[BaseWebSocketHandler]:
        """Empty every list and return what they held."""
        with self.wsConnLock:
            everything = [h for handlers in self.wsConnectionLists.values() for h in handlers]
            for handlers in self.wsConnectionLists.values():
                handlers.clear()
            return everything


#: The default registry, shared by every server that is not given its own.
websocketState = ConnectionRegistry()

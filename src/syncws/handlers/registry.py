"""The registry of open connections per endpoint name, and the callbacks of each name.

It keeps the attribute names of ``rtCommon.webSocketHandlers.websocketState`` so
that code written against it goes on working: ``wsConnLock``,
``wsConnectionLists`` and ``wsCallbacks``. The methods are the way to use it:
each takes the lock, copies what it needs and lets go, so that no socket I/O and
no user code ever runs while the lock is held.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar

__all__ = ["ConnectionRegistry", "Callback", "ClosingListener", "MembershipListener", "Broadcaster", "Registered"]


class Registered(Protocol):
    """What the registry needs of a connection's handler: the server that accepted it."""

    @property
    def server(self) -> object: ...


H = TypeVar("H", bound=Registered)
H_contra = TypeVar("H_contra", bound=Registered, contravariant=True)
#: ``callback(handler, message)``: what a name's connections call with each message.
Callback = Callable[[Any, Any], Any]


class ClosingListener(Protocol[H_contra]):
    """Told when a connection of a name starts to close (see :meth:`ConnectionRegistry.add_closing_listener`)."""

    def connection_closing(self, handler: H_contra, code: int, reason: str) -> None:
        """Called on the thread that decided the close; must return at once and must not send."""


class MembershipListener(Protocol[H_contra]):
    """Told when a handler joins or leaves a name's list (see :meth:`ConnectionRegistry.add_membership_listener`)."""

    def connection_added(self, name: str, handler: H_contra) -> None:
        """Called after ``handler`` joined ``name``'s list, outside the lock."""

    def connection_removed(self, name: str, handler: H_contra) -> None:
        """Called after ``handler`` left ``name``'s list, outside the lock."""


class Broadcaster(Protocol):
    """Sends to every connection of a name beyond this process: a cluster (see :attr:`ConnectionRegistry.broadcaster`)."""

    def send(self, name: str, message: Any) -> None:
        """Send ``message`` to every connection of ``name`` everywhere."""

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection everywhere."""


class ConnectionRegistry(Generic[H]):
    """Open connections by endpoint name, oldest first. Every method is safe from any thread.

    Several servers in one process may share a registry (the default
    ``websocketState``, as in rtCommon): the module-level functions then reach
    the connections of all of them, while a server, and a RequestHandler bound
    to one, asks with ``server=`` for the connections it accepted itself.
    """

    def __init__(self) -> None:
        # Synchronize access to wsConnectionLists, wsCallbacks, _closing_listeners and _members_listeners.
        self.wsConnLock = threading.Lock()
        self.wsConnectionLists: dict[str, list[H]] = {}
        self.wsCallbacks: dict[str, Callback] = {}
        # Held weakly: a listener that its program dropped is not kept alive, nor told, by the registry.
        self._closing_listeners: dict[str, weakref.WeakSet[ClosingListener[H]]] = {}
        self._members_listeners: list[MembershipListener[H]] = []
        #: When set (by a clustered server), the module functions ``sendWebSocketMessage``
        #: and ``closeAllConnections`` act through it on every node instead of on this list alone.
        self.broadcaster: Optional[Broadcaster] = None

    def ensure(self, name: str, callback: Optional[Callback] = None) -> None:
        """Create the list of ``name`` if missing; set its callback when one is given."""
        with self.wsConnLock:
            self.wsConnectionLists.setdefault(name, [])
            if callback is not None:
                self.wsCallbacks[name] = callback

    def add(self, name: str, handler: H) -> None:
        """Append ``handler`` to the list of ``name``."""
        with self.wsConnLock:
            self.wsConnectionLists.setdefault(name, []).append(handler)
            listeners = list(self._members_listeners)
        for listener in listeners:
            listener.connection_added(name, handler)

    def remove(self, name: str, handler: H) -> bool:
        """Remove ``handler`` from the list of ``name``; False if it was not there."""
        with self.wsConnLock:
            handlers = self.wsConnectionLists.get(name, [])
            if handler not in handlers:
                return False
            handlers.remove(handler)
            listeners = list(self._members_listeners)
        for listener in listeners:
            listener.connection_removed(name, handler)
        return True

    def contains(self, name: str, handler: H) -> bool:
        """True if ``handler`` is registered under ``name``."""
        with self.wsConnLock:
            return handler in self.wsConnectionLists.get(name, ())

    def connections(self, name: str, server: Optional[object] = None) -> list[H]:
        """A copy of the list of ``name``, oldest first; with ``server``, only the connections that server accepted."""
        with self.wsConnLock:
            handlers = self.wsConnectionLists.get(name, ())
            return [h for h in handlers if server is None or h.server is server]

    def newest(self, name: str, server: Optional[object] = None) -> Optional[H]:
        """The most recently opened connection of ``name`` (accepted by ``server``, when given), or None."""
        with self.wsConnLock:
            for handler in reversed(self.wsConnectionLists.get(name, ())):
                if server is None or handler.server is server:
                    return handler
            return None

    def connected_names(self, server: Optional[object] = None) -> dict[str, int]:
        """Each name that has open connections now (accepted by ``server``, when given), with how many."""
        with self.wsConnLock:
            counts = {name: sum(1 for h in handlers if server is None or h.server is server) for name, handlers in self.wsConnectionLists.items()}
        return {name: count for name, count in counts.items() if count}

    def callback(self, name: str) -> Optional[Callback]:
        """The callback registered for ``name``, or None."""
        with self.wsConnLock:
            return self.wsCallbacks.get(name)

    def take_all(self) -> list[H]:
        """Empty every list and return what they held."""
        with self.wsConnLock:
            everything = [(name, h) for name, handlers in self.wsConnectionLists.items() for h in handlers]
            for handlers in self.wsConnectionLists.values():
                handlers.clear()
            listeners = list(self._members_listeners)
        for listener in listeners:
            for name, handler in everything:
                listener.connection_removed(name, handler)
        return [handler for _, handler in everything]

    def add_membership_listener(self, listener: MembershipListener[H]) -> None:
        """Have ``listener`` told of every handler that joins or leaves a list (a clustered server's presence)."""
        with self.wsConnLock:
            self._members_listeners.append(listener)

    def remove_membership_listener(self, listener: MembershipListener[H]) -> None:
        """Stop telling ``listener``."""
        with self.wsConnLock:
            if listener in self._members_listeners:
                self._members_listeners.remove(listener)

    def add_closing_listener(self, name: str, listener: ClosingListener[H]) -> None:
        """Have ``listener.connection_closing(handler, code, reason)`` called when a connection of ``name`` starts to close.

        The registry holds ``listener`` weakly: it is told for as long as the program keeps it.

        This is how a RequestHandler hears that a connection it sent requests
        on is going: the handler of the connection calls :meth:`connection_closing`.
        """
        with self.wsConnLock:
            self._closing_listeners.setdefault(name, weakref.WeakSet()).add(listener)

    def remove_closing_listener(self, name: str, listener: ClosingListener[H]) -> None:
        """Stop telling ``listener`` about ``name``'s connections."""
        with self.wsConnLock:
            self._closing_listeners.get(name, weakref.WeakSet()).discard(listener)

    def connection_closing(self, name: str, handler: H, code: int, reason: str) -> None:
        """Tell the closing listeners of ``name`` that ``handler``'s connection is closing (outside the lock)."""
        with self.wsConnLock:
            listeners = list(self._closing_listeners.get(name, ()))
        for listener in listeners:
            listener.connection_closing(handler, code, reason)

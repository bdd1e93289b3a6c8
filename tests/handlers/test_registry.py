"""The connection registry without sockets: lists per name, per-server views, closing listeners."""

from __future__ import annotations

import gc
import threading

import pytest

from syncws.handlers.registry import ConnectionRegistry

pytestmark = pytest.mark.timeout(10)


class Handler:
    """A stand-in for a connection's handler: the registry needs only its server."""

    def __init__(self, server: object) -> None:
        self.server = server


class Listener:
    """Records what it is told."""

    def __init__(self) -> None:
        self.told: list[tuple[Handler, int, str]] = []

    def connection_closing(self, handler: Handler, code: int, reason: str) -> None:
        self.told.append((handler, code, reason))


def test_connections_oldest_first_and_newest() -> None:
    """connections() lists a name's handlers oldest first; newest() is the last added; remove() takes one out."""
    registry: ConnectionRegistry[Handler] = ConnectionRegistry()
    a, b = Handler("s"), Handler("s")
    registry.add("wsData", a)
    registry.add("wsData", b)
    assert registry.connections("wsData") == [a, b] and registry.newest("wsData") is b
    assert registry.remove("wsData", b) and not registry.remove("wsData", b)
    assert registry.newest("wsData") is a and registry.newest("other") is None


def test_per_server_view() -> None:
    """With server=, connections() and newest() see only the handlers that server accepted."""
    registry: ConnectionRegistry[Handler] = ConnectionRegistry()
    first, second = object(), object()
    a, b = Handler(first), Handler(second)
    registry.add("wsData", a)
    registry.add("wsData", b)
    assert registry.connections("wsData", server=first) == [a]
    assert registry.newest("wsData", server=first) is a and registry.newest("wsData", server=second) is b
    assert registry.newest("wsData", server=object()) is None


def test_take_all_empties_every_list() -> None:
    """take_all() returns every handler of every name and leaves the lists empty."""
    registry: ConnectionRegistry[Handler] = ConnectionRegistry()
    handlers = [Handler(None) for _ in range(3)]
    registry.add("a", handlers[0])
    registry.add("b", handlers[1])
    registry.add("b", handlers[2])
    assert sorted(map(id, registry.take_all())) == sorted(map(id, handlers))
    assert registry.connections("a") == [] and registry.connections("b") == []


def test_closing_listeners_are_told_per_name() -> None:
    """connection_closing tells the listeners of that name, with the code and reason, and no others."""
    registry: ConnectionRegistry[Handler] = ConnectionRegistry()
    mine, other = Listener(), Listener()
    registry.add_closing_listener("wsData", mine)
    registry.add_closing_listener("echo", other)
    handler = Handler(None)
    registry.connection_closing("wsData", handler, 1001, "going away")
    assert mine.told == [(handler, 1001, "going away")] and other.told == []
    registry.remove_closing_listener("wsData", mine)
    registry.connection_closing("wsData", handler, 1000, "")
    assert len(mine.told) == 1


def test_closing_listeners_are_held_weakly() -> None:
    """A closing listener that its program dropped is not kept alive by the registry."""
    registry: ConnectionRegistry[Handler] = ConnectionRegistry()
    registry.add_closing_listener("wsData", Listener())
    gc.collect()
    assert list(registry._closing_listeners["wsData"]) == []


def test_concurrent_adds_and_removes_lose_nothing() -> None:
    """8 threads adding and removing 500 handlers each leave exactly the ones not removed."""
    registry: ConnectionRegistry[Handler] = ConnectionRegistry()
    kept: list[Handler] = []
    lock = threading.Lock()

    def work() -> None:
        for i in range(500):
            handler = Handler(None)
            registry.add("n", handler)
            if i % 2:
                assert registry.remove("n", handler)
            else:
                with lock:
                    kept.append(handler)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(map(id, registry.connections("n"))) == sorted(map(id, kept))

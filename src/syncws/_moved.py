"""The module paths of syncws before its modules moved into subpackages, kept working.

``import syncws.deflate`` or ``from syncws.remote_worker import HAND_OVER_AFTER``, as
programs and docs written for the flat package have them, gets the module at its new
place (``syncws.protocol.deflate``, ``syncws.peer.remote_worker``): the same module
object, imported only when an old path is asked for. The paths whose name became a
subpackage (``syncws.protocol``, ``syncws.handlers``, ``syncws.compat``, ...) need no
alias: each such subpackage re-exports what the module of that name exported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Optional

__all__ = ["MOVED", "install"]

#: old path -> new path, for every module that moved to a name of its own.
MOVED: dict[str, str] = {
    f"syncws.{old}": f"syncws.{new}"
    for old, new in {
        "frames": "protocol.frames",
        "outgoing": "protocol.outgoing",
        "deflate": "protocol.deflate",
        "payload": "protocol.payload",
        "reader": "protocol.reader",
        "handshake": "protocol.handshake",
        "auth": "protocol.auth",
        "transport": "engine.transport",
        "closing": "engine.closing",
        "keepalive": "engine.keepalive",
        "outbox": "engine.outbox",
        "connection": "engine.connection",
        "callformat": "calls.callformat",
        "gateway": "calls.gateway",
        "future": "calls.future",
        "reassembly": "calls.reassembly",
        "commands": "calls.commands",
        "command_pool": "calls.command_pool",
        "proxy": "client.proxy",
        "registry": "handlers.registry",
        "remote": "peer.remote",
        "remote_worker": "peer.remote_worker",
        "presence": "cluster.presence",
        "node": "cluster.node",
        "node_link": "cluster.node_link",
        "routing": "cluster.routing",
        "listening": "server.listening",
        "drain": "server.drain",
        "admission": "server.admission",
        "conn_threads": "server.conn_threads",
        "request_handler": "server.request_handler",
        "endpoints": "server.endpoints",
        "cli_call": "cli.call",
        "demo": "cli.demo",
        "signals": "cli.signals",
        "progress": "cli.progress",
        "autobahn": "cli.autobahn",
    }.items()
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module already at its new one (no second copy)."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        # The import system keeps the attributes the module already has (its
        # __name__ and __spec__ stay the new ones) and files it under the old name too.
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module ran when it was imported at its new path."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths in :data:`MOVED`; asked only after the usual finders found nothing."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new_name))


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` once (run by ``syncws/__init__``)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

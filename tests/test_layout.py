"""The package's folders are its layers: imports point down only, rooms stay small, and the old module paths still import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "syncws"

#: Each room's layer, from the wire up (docs/architecture.md draws the same).
#: A module may import its own subpackage and any room of a lower layer, never
#: a room of its own layer or above.
LAYERS: dict[str, int] = {
    "exceptions": 0,
    "timeouts": 0,
    "lograte": 0,
    "_moved": 0,
    "static": 0,
    "protocol": 1,
    "engine": 2,
    "reactor": 2,
    "calls": 3,
    "client": 3,
    "handlers": 3,
    "peer": 4,
    "cluster": 4,
    "observe": 4,
    "server": 5,
    "compat": 6,
    "rtcloud": 6,
    "cli": 7,
    "__init__": 8,
    "__main__": 8,
}

#: Module paths named in README.md and docs/, or public before the package had
#: subpackages: each must keep importing, with the names the docs use.
DOCUMENTED = [
    ("syncws.compat", "WebsocketServer"),
    ("syncws.handlers", "BaseWebSocketHandler"),
    ("syncws.handlers", "websocketState"),
    ("syncws.exceptions", "RequestTimeout"),
    ("syncws.deflate", "DeflateOptions"),
    ("syncws.static", "javascript_client"),
    ("syncws.demo", "demo_payload"),
    ("syncws.remote_worker", "HAND_OVER_AFTER"),
    ("syncws.protocol", "CloseCode"),
    ("syncws.protocol", "Protocol"),
    ("syncws.frames", "HAVE_NUMPY"),
    ("syncws.callformat", "encode_request"),
    ("syncws.server", "WebSocketServer"),
    ("syncws.request_handler", "RequestHandler"),
    ("syncws.remote", "RemoteService"),
    ("syncws.client", "connect"),
    ("syncws.cluster", "RedisCluster"),
    ("syncws.connection", "Connection"),
    ("syncws.transport", "Transport"),
    ("syncws.reader", "FrameReader"),
    ("syncws.keepalive", "Keepalive"),
    ("syncws.closing", "ClosingHandshake"),
    ("syncws.admission", "select_subprotocol"),
    ("syncws.gateway", "encode_gateway_request"),
    ("syncws.future", "CallFuture"),
    ("syncws.reassembly", "Transfer"),
    ("syncws.registry", "ConnectionRegistry"),
    ("syncws.cli", "main"),
]


def _room(path: Path) -> str:
    """The room a file belongs to: its subpackage, or its own name at the top."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imported_rooms(path: Path) -> set[str]:
    """The rooms of syncws that a file imports, TYPE_CHECKING imports included."""
    relative = path.relative_to(PACKAGE)
    here = ["syncws", *relative.parts[:-1]]
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [] if node.module else [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "syncws":
                target, names = node.module.split("."), []
            else:
                continue
            if len(target) > 1:
                rooms.add(target[1])
            else:  # from syncws import x / from .. import x at the top: each name is a room
                rooms.update(names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "syncws" and len(parts) > 1:
                    rooms.add(parts[1])
    return rooms


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_room_has_a_layer():
    """Every top-level module and subpackage of syncws is placed in a layer."""
    assert {_room(path) for path in _modules()} <= set(LAYERS)


def test_imports_point_down_the_layers():
    """No module imports a room of its own layer or above, other than its own subpackage."""
    upward = []
    for path in _modules():
        room = _room(path)
        for imported in _imported_rooms(path) - {room}:
            if LAYERS[imported] >= LAYERS[room]:
                upward.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert upward == []


def test_rooms_stay_small():
    """At most 8 modules at the top, 12 in a subpackage; no module over 500 lines, no class over 300."""
    top = [p for p in PACKAGE.glob("*.py")]
    assert len(top) <= 8, top
    for sub in (p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        assert len(list(sub.glob("*.py"))) <= 12, sub
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        assert text.count("\n") <= 500, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None and node.end_lineno - node.lineno + 1 <= 300, f"{path}: {node.name}"


@pytest.mark.parametrize(("module", "name"), DOCUMENTED)
def test_documented_import_paths_still_work(module, name):
    """An import path the docs name, or the flat package had, still gives the same object."""
    imported = importlib.import_module(module)
    assert hasattr(imported, name)


def test_an_old_path_is_the_module_at_its_new_place():
    """The flat package's ``syncws.deflate`` is ``syncws.protocol.deflate`` itself, not a copy."""
    import syncws.deflate

    import syncws.protocol.deflate

    assert syncws.deflate is syncws.protocol.deflate
    assert syncws.protocol.deflate.DeflateOptions is syncws.protocol.deflate.DeflateOptions

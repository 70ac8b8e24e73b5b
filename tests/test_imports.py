"""No import circles, between modules or between rooms (packages): a circle means two rooms
that cannot be understood, tested or moved apart. Imports under TYPE_CHECKING count too: they
are the same dependency, only hidden from the interpreter."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "services" / "tlsstorm"


def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The tlsstorm modules a file imports (a `from package import name` names the module
    `package.name` when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def _module_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {_module_name(path, package): path for path in package.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, modules) - {name} for name, path in paths.items()}


def _room(module: str) -> str:
    """tlsstorm.receiver.smtp is in the room `receiver`; tlsstorm.cli is its own room."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_no_module_imports_itself_through_others():
    assert _circle(_module_graph()) is None


def test_no_room_imports_itself_through_others():
    rooms: dict[str, set[str]] = {}
    for module, imported in _module_graph().items():
        room = _room(module)
        rooms.setdefault(room, set()).update(_room(other) for other in imported)
        rooms[room].discard(room)
    assert _circle(rooms) is None


@pytest.mark.parametrize("source, circle", [
    ({"a": "from tlsstorm.b import x", "b": "import tlsstorm.a"}, True),
    ({"a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tlsstorm.b import X",
      "b": "from tlsstorm.a import y"}, True),
    ({"a": "from tlsstorm.b import x", "b": "import os"}, False),
])
def test_the_check_sees_a_circle_even_behind_type_checking(tmp_path, source, circle):
    package = tmp_path / "tlsstorm"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in source.items():
        (package / f"{name}.py").write_text(text + "\n")
    assert (_circle(_module_graph(package)) is not None) is circle

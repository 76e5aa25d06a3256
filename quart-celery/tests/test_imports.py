"""The package's imports: they flow one way between its rooms, no module of it reaches into the
app that uses it, and importing any module, alone, connects nowhere.

The rooms, from the bottom up: the base modules (`settings`, `errors`, `states`, `schemas`,
`heap`); `_broker`, the broker and result protocol; beside each other `_worker`, the worker
side, and `_observability`; `_client`, the async client API; `_protection`; `_web`, the
endpoints; and at the top `extension`, `testing` and the package itself, which re-exports the
public names. A module may import its own room, and the rooms below it, never one above or
beside it: a module that needs one from above is in the wrong room.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path

import pytest

import quart_celery
from quart_celery.testing import imported_alone

PACKAGE = Path(quart_celery.__file__).resolve().parent
BASE = "base"
TOP = "top"
#: Each room, and the rooms its modules may import (besides their own).
ALLOWED: dict[str, frozenset[str]] = {
    BASE: frozenset(),
    "_broker": frozenset({BASE}),
    "_worker": frozenset({BASE, "_broker"}),
    "_observability": frozenset({BASE}),
    "_client": frozenset({BASE, "_broker", "_observability"}),
    "_protection": frozenset({BASE, "_broker", "_observability", "_client"}),
    "_web": frozenset({BASE, "_broker", "_observability", "_client", "_protection"}),
    TOP: frozenset(
        {BASE, "_broker", "_worker", "_observability", "_client", "_protection", "_web"}
    ),
}
TOP_MODULES = frozenset({"quart_celery", "quart_celery.extension", "quart_celery.testing"})


def modules() -> list[str]:
    """Every module of the package, the package itself first."""
    return ["quart_celery"] + [
        module.name for module in pkgutil.walk_packages(quart_celery.__path__, "quart_celery.")
    ]


def room_of(module: str) -> str:
    """The room a module of the package is in."""
    if module in TOP_MODULES:
        return TOP
    parts = module.split(".")
    return parts[1] if parts[1].startswith("_") else BASE


def imported_by(module: str) -> set[str]:
    """The modules of the package that `module` imports, wherever in it (in a function too)."""
    parts = module.split(".")
    path = PACKAGE.joinpath(*parts[1:])
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{module}: a relative import; the package imports absolutely")
    names = set(modules())
    return {name for name in found if name in names and name != module}


def test_every_module_is_in_a_room() -> None:
    rooms = {room_of(module) for module in modules()}
    assert rooms == set(ALLOWED)


@pytest.mark.parametrize("module", modules())
def test_imports_flow_one_way_between_the_rooms(module: str) -> None:
    room = room_of(module)
    against = {
        imported: room_of(imported)
        for imported in imported_by(module)
        if room_of(imported) != room and room_of(imported) not in ALLOWED[room]
    }
    assert not against, f"{module} ({room}) imports against the rooms' order: {against}"


def test_the_import_check_finds_a_cycle_and_a_connection(tmp_path: Path) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("from cyclic.two import TWO\nONE = 1\n")
    (package / "two.py").write_text("from cyclic.one import ONE\nTWO = 2\n")
    (tmp_path / "connects.py").write_text("import socket\nsocket.getaddrinfo('localhost', 1)\n")
    failures = imported_alone(["cyclic.one", "cyclic.two", "connects"], root=tmp_path)
    assert "ImportError" in failures["cyclic.one"]
    assert "ImportError" in failures["cyclic.two"]
    assert "socket.getaddrinfo while importing" in failures["connects"]
    # A package whose own import connects: each module of it says so, imported first.
    loud = tmp_path / "loud"
    loud.mkdir()
    (loud / "__init__.py").write_text("from loud import calls\n")
    (loud / "calls.py").write_text("import socket\nsocket.getaddrinfo('localhost', 1)\n")
    (loud / "quiet.py").write_text("")
    failures = imported_alone(["loud", "loud.calls", "loud.quiet"], root=tmp_path)
    assert all("socket.getaddrinfo while importing" in failure for failure in failures.values())


def test_the_check_finds_an_import_against_the_order() -> None:
    # A module of the broker room that imported the endpoints would be refused.
    assert "_web" not in ALLOWED["_broker"]
    assert room_of("quart_celery._web.api") == "_web"
    assert "quart_celery._broker.keys" in imported_by("quart_celery._broker.records")


@pytest.mark.parametrize("module", modules())
def test_no_module_imports_the_app_that_uses_it(module: str) -> None:
    parts = module.split(".")
    path = PACKAGE.joinpath(*parts[1:])
    source = (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")).read_text()
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        assert not any(name.split(".")[0] in ("quart_app", "factories") for name in names)


def third_party_imports() -> list[str]:
    """What the package's modules import from outside it, at their top level."""
    found: set[str] = set()
    for module in modules():
        parts = module.split(".")
        path = PACKAGE.joinpath(*parts[1:])
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for node in ast.parse(source.read_text()).body:
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return sorted(name for name in found if name.split(".")[0] != "quart_celery")


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    """What importing each module of the package alone raised ("" for nothing)."""
    return imported_alone(modules(), third_party_imports(), root=PACKAGE.parent)


@pytest.mark.parametrize("module", modules())
def test_importing_alone_connects_nowhere_and_has_no_cycle(
    module: str, import_failures: dict[str, str]
) -> None:
    assert import_failures[module] == ""

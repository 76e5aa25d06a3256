"""No code runs at import: importing any module, alone, in a fresh interpreter connects nowhere.

Each module is imported first in an interpreter of its own (`quart_celery.testing`'s
`imported_alone`), so an import cycle shows up as an ImportError whichever module is imported
first. An audit hook fails the import on any attempt to resolve or connect to an address, and
no `quart_app` module may import the factories.
"""

from __future__ import annotations

import ast
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from quart_celery.testing import imported_alone

import factories
import quart_app

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> list[str]:
    """The entry points and every module of the two packages."""
    names = ["asgi", "worker"]
    for package in (quart_app, factories):
        names.append(package.__name__)
        names += [
            module.name
            for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        ]
    return names


def test_every_module_is_covered() -> None:
    modules = set(_modules())
    assert {"quart_app.extensions", "quart_app.tasks", "factories.celery", "asgi"} <= modules


@pytest.fixture(scope="module")
def import_failures() -> dict[str, str]:
    """What importing each module alone raised ("" for nothing); the bridge is imported once
    before, as the third-party packages are (its own tests check its modules)."""
    return imported_alone(_modules(), ["quart_celery", "celery", "quart", "wtforms"], root=ROOT)


@pytest.mark.parametrize("module", _modules())
def test_importing_alone_connects_nowhere_and_has_no_cycle(
    module: str, import_failures: dict[str, str]
) -> None:
    assert import_failures[module] == ""


@pytest.mark.parametrize("module", [m for m in _modules() if m.startswith("quart_app")])
def test_no_module_of_the_app_package_imports_the_factories(module: str) -> None:
    path = ROOT.joinpath(*module.split("."))
    source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    for names in _imports(source):
        assert not any(name.split(".")[0] == "factories" for name in names), module


def _imports(source: Path) -> Iterator[list[str]]:
    """The modules each import statement of `source` names (`from x import y`: `x`)."""
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            yield [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield [node.module]


#: What an app may import of the bridge: the package, and its pytest plugin in tests.
PUBLIC = frozenset({"quart_celery", "quart_celery.testing"})


@pytest.mark.parametrize(
    "path",
    sorted(
        [
            ROOT / "asgi.py",
            ROOT / "worker.py",
            *(ROOT / "quart_app").rglob("*.py"),
            *(ROOT / "factories").rglob("*.py"),
            *(ROOT / "tests").rglob("*.py"),
            *(ROOT / "bench").glob("*.py"),
        ]
    ),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_the_app_imports_the_bridge_only_by_its_public_names(path: Path) -> None:
    # The bridge's internals (`quart_celery._client`, ...) may change in any release: the app,
    # its tests and the benchmarks import what `quart_celery` exports, as a user's code does.
    for names in _imports(path):
        private = [name for name in names if name.startswith("quart_celery.")]
        assert set(private) <= PUBLIC, f"{path.name} imports {private}"

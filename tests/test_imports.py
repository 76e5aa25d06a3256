"""No code runs at import: importing any module, alone, in a fresh interpreter connects nowhere.

Each module is imported first in its own interpreter, so an import cycle shows up as an
ImportError whichever module is imported first. An audit hook fails the import on any attempt
to resolve or connect to an address, and no `quart_app` module may pull in the factories.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import factories
import quart_app

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys

def refuse_the_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise RuntimeError(f"{event} while importing: {args!r}")

sys.addaudithook(refuse_the_network)
module = sys.argv[1]
__import__(module)
factory_modules = [name for name in sys.modules if name.split(".")[0] == "factories"]
if module.split(".")[0] == "quart_app" and factory_modules:
    raise SystemExit(f"importing {module} imported {factory_modules}")
"""


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


@pytest.mark.parametrize("module", _modules())
def test_importing_alone_connects_nowhere_and_has_no_cycle(module: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", PROBE, module],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr

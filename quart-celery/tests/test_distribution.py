"""The folder is a distribution of its own: installed into a fresh virtual environment, with no
`quart_app` or `factories` anywhere, it imports, builds an app of its own and connects nowhere
in doing so."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import quart_celery
from tests.probe_app import ROOT

pytestmark = pytest.mark.e2e

#: A program of a user's own, run in the fresh environment: the seed's pattern, in one file.
PROGRAM = """
import sys

def refuse_the_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise RuntimeError(f"{event} while building the app: {args!r}")

sys.addaudithook(refuse_the_network)

from celery import Celery
from quart import Quart
import quart_celery
from quart_celery import QuartCelery, expose

celery = Celery("someones_app")
bridge = QuartCelery(celery)

@expose
@celery.task(name="shout")
def shout(text: str) -> str:
    return text.upper()

app = Quart("someones_app")
app.config["SECRET_KEY"] = "k"
celery.config_from_object(bridge.celery_settings(app), force=True)
bridge.init_celery(app)
bridge.init_app(app)
routes = sorted(rule.rule for rule in app.url_map.iter_rules())
assert "/api/tasks" in routes and "/ws/tasks/<task_id>" in routes, routes
for name in ("quart_app", "factories"):
    assert not any(module.split(".")[0] == name for module in sys.modules), name
    try:
        __import__(name)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError(f"{name} is importable here")
print(quart_celery.__file__)
"""


def test_the_folder_installs_into_a_fresh_environment_and_works_alone(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # Built as pip builds it for any user: in isolation, with the build system it asks for;
    # from a copy, as a build writes into the folder it builds.
    folder = tmp_path / "quart-celery"
    junk = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*")
    shutil.copytree(ROOT, folder, ignore=junk)
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels)]
    subprocess.run([*build, str(folder)], check=True, timeout=180)
    (wheel,) = wheels.glob("quart_celery-*.whl")

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    subprocess.run([*install, "--no-deps", str(wheel)], check=True, timeout=120)
    # Its dependencies from this environment, by path alone: the `.pth` files here (which
    # make the app and this folder importable, editable) are not read there.
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(fresh_site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ran = subprocess.run(
        [str(python), "-I", "-c", PROGRAM],
        cwd=elsewhere,
        env={"PATH": "", "REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    installed = Path(ran.stdout.strip())
    assert installed.is_relative_to(fresh), installed  # the wheel's copy, not this folder's
    assert not installed.is_relative_to(Path(quart_celery.__file__).parent)

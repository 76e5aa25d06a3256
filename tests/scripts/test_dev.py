"""The README's run command: `python3 scripts/dev.py run` brings the whole system up.

Given a `REDIS_URL` where no Redis answers, it starts one there, then a worker and hypercorn;
told to stop, it stops all three.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import redis
from quart_celery.testing import answers_http, free_port, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0

ROUND_TRIP = """
from factories.application import create_application
from quart_app.tasks import async_task
create_application()
print(async_task.delay("round trip").get(timeout=30)["message"])
"""


@dataclass
class System:
    """What the run command brought up."""

    process: subprocess.Popen[bytes]
    url: str
    redis_url: str
    log: Path


def children_of(pid: int) -> set[int]:
    """The PIDs of the processes `pid` started (read from /proc, to stop only ours)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, waiting to be reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def system(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[System]:
    """`scripts/dev.py run` on free ports, with no Redis at its `REDIS_URL`; stopped after.

    Parametrized indirectly: more arguments for the run command, more environment, and
    whether it starts as a shell's background job does, with SIGINT ignored."""
    arguments, environment, *background = getattr(request, "param", ([], {}))
    port, redis_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "scripts/dev.py", "run", "--port", str(port), *arguments],
            cwd=ROOT,
            env={
                **os.environ,
                "REDIS_URL": redis_url,
                # Its own beat state: beat's default file is one per checkout, which another
                # beat of the suite's may have open at the same time.
                "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "beat-state"),
                **environment,
            },
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=ignore_sigint if background == [True] else None,
        )
        started: set[int] = set()
        try:
            url = f"http://127.0.0.1:{port}"

            def answers() -> bool:
                assert process.poll() is None, log.read_text()
                started.update(children_of(process.pid))
                return answers_http(url)

            wait_for(answers, START_TIMEOUT, "the run command to serve")
            yield System(process, url, redis_url, log)
        finally:
            started.update(children_of(process.pid))
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            finally:
                for pid in started:  # only if the run command failed to stop what it started
                    with suppress(ProcessLookupError):
                        os.killpg(pid, signal.SIGKILL)


def ignore_sigint() -> None:
    """In the child, before it starts: SIGINT ignored, as `sh -c 'dev.py run &'` leaves it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("system", [([], {}, True)], indirect=True, ids=["background"])
def test_the_run_command_started_in_the_background_stops_on_sigint(system: System) -> None:
    started = children_of(system.process.pid)
    system.process.send_signal(signal.SIGINT)  # `kill -INT`: what Ctrl-C sends
    assert system.process.wait(STOP_TIMEOUT) == 0, system.log.read_text()
    assert not [pid for pid in started if alive(pid)]


def test_the_run_command_brings_everything_up_and_down(system: System) -> None:
    started = children_of(system.process.pid)
    workers = os.cpu_count() or 1  # a worker process per core
    assert len(started) == 2 + workers, system.log.read_text()  # and redis-server, hypercorn
    assert f"{workers} Celery worker process(es), one per core" in system.log.read_text()

    with urllib.request.urlopen(f"{system.url}/", timeout=5) as response:
        assert response.status == 200
    round_trip = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": system.redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert round_trip.stdout.strip() == "round trip", round_trip.stderr

    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(STOP_TIMEOUT) == 0
    assert not [pid for pid in started if alive(pid)]


BEAT = {"tick": {"task": "simple_task", "schedule": 0.5, "args": ["from beat"]}}


@pytest.mark.parametrize(
    "system", [(["--beat"], {"BEAT_SCHEDULE": json.dumps(BEAT)})], indirect=True, ids=["beat"]
)
def test_the_run_command_runs_beat_when_asked(system: System) -> None:
    started = children_of(system.process.pid)
    # redis-server, a worker per core, hypercorn, beat
    assert len(started) == 3 + (os.cpu_count() or 1), system.log.read_text()
    store = redis.Redis.from_url(system.redis_url)
    try:

        def ran_one() -> bool:
            metas = [store.get(key) for key in store.scan_iter("celery-task-meta-*")]
            return any(json.loads(meta or b"{}").get("result") == "from beat" for meta in metas)

        wait_for(ran_one, 60, "a task beat sent to run")
    finally:
        store.close()
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(STOP_TIMEOUT) == 0
    assert not [pid for pid in started if alive(pid)]


def load_dev_script() -> ModuleType:
    """`scripts/dev.py` as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("dev_script", ROOT / "scripts" / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("found", "apt_get", "euid", "installs", "chromium"),
    [
        ("/usr/bin/chromium", "/usr/bin/apt-get", 0, False, "/usr/bin/chromium"),
        (None, "/usr/bin/apt-get", 0, True, "/usr/bin/chromium"),
        (None, "/usr/bin/apt-get", 1000, False, None),
        (None, None, 0, False, None),
    ],
    ids=["found", "installed", "not-root", "no-apt"],
)
def test_the_test_command_installs_chromium_only_where_it_can(
    monkeypatch: pytest.MonkeyPatch,
    found: str | None,
    apt_get: str | None,
    euid: int,
    installs: bool,
    chromium: str | None,
) -> None:
    dev = load_dev_script()
    commands: list[list[str]] = []
    installed = {"chromium": found, "apt-get": apt_get}

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        commands.append(command)
        installed["chromium"] = "/usr/bin/chromium"
        return subprocess.CompletedProcess(command, 0)

    # Set, then removed: the variable `ensure_chromium` sets is then undone after the test too
    # (`delenv` of an unset variable notes nothing to undo).
    monkeypatch.setenv("CHROMIUM", "")
    monkeypatch.delenv("CHROMIUM")
    monkeypatch.setattr(dev.shutil, "which", installed.get)
    monkeypatch.setattr(dev.os, "geteuid", lambda: euid)
    monkeypatch.setattr(dev.subprocess, "run", run)
    dev.ensure_chromium()
    assert bool(commands) == installs
    assert os.environ.get("CHROMIUM") == chromium


def test_the_test_command_skips_a_python_that_is_not_installed_and_says_so() -> None:
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dev.py"), "test", "--python", "3.99"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0
    assert "Python 3.99 is not installed here: its tests are skipped" in shown.stderr


@pytest.mark.parametrize(
    ("version", "error"),
    [("3.9", "needs Python 3.11 or newer"), ("three", "takes a version such as 3.13")],
)
def test_the_test_command_refuses_a_python_it_cannot_take(version: str, error: str) -> None:
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dev.py"), "test", "--python", version],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 2
    assert error in shown.stderr


def test_another_python_is_found_on_the_path_or_under_pyenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dev = load_dev_script()
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path))
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    assert dev.find_python("3.11") is None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for release in ("9", "10"):
        binary = tmp_path / "versions" / f"{version}.{release}" / "bin" / f"python{version}"
        binary.parent.mkdir(parents=True)
        binary.symlink_to(sys.executable)
    # The newest release of the version (3.x.10 after 3.x.9), which answers to that version.
    assert dev.find_python(version) == str(
        tmp_path / "versions" / f"{version}.10" / "bin" / f"python{version}"
    )


@pytest.mark.parametrize(
    ("given", "run_with"),
    [
        ([], ["-n", "4", "--dist", "loadfile"]),
        (["-k", "flask"], ["-n", "4", "--dist", "loadfile", "-k", "flask"]),
        (["-n", "0"], ["-n", "0"]),
        (["-n2"], ["-n2"]),
        (["-p", "no:xdist"], ["-p", "no:xdist"]),
        (["tests/faults/test_load.py", "-s"], ["tests/faults/test_load.py", "-s"]),
    ],
)
def test_the_suite_runs_in_four_processes_unless_asked_otherwise(
    given: list[str], run_with: list[str]
) -> None:
    assert load_dev_script().in_processes(given) == run_with


@pytest.mark.parametrize(
    ("given", "suites"),
    [
        ([], [("quart-celery", []), (".", [])]),
        (
            ["-k", "flask", "-x"],
            [("quart-celery", ["-k", "flask", "-x"]), (".", ["-k", "flask", "-x"])],
        ),
        (["tests/quart_app", "-x"], [(".", ["-x", "tests/quart_app"])]),
        (["quart-celery/tests/web"], [("quart-celery", ["tests/web"])]),
        (
            ["-m", "not e2e", "quart-celery/tests/web/test_api.py::test_a", "tests/factories"],
            [
                ("quart-celery", ["-m", "not e2e", "tests/web/test_api.py::test_a"]),
                (".", ["-m", "not e2e", "tests/factories"]),
            ],
        ),
    ],
    ids=["both", "options-to-both", "the-apps", "the-bridges", "each-its-own"],
)
def test_paths_choose_the_suites_and_options_go_to_each(
    given: list[str], suites: list[tuple[str, list[str]]]
) -> None:
    dev = load_dev_script()
    chosen = [(str(folder.relative_to(ROOT)), arguments) for folder, arguments in dev.suites(given)]
    assert chosen == suites

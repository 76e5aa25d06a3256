"""Helpers for tests that start processes: free ports, readiness, and stopping what they start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import IO

STOP_TIMEOUT = 20.0
ROOT = Path(__file__).resolve().parent.parent


def start_process(
    command: list[str], redis_url: str, log: IO[bytes], env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start one of the app's entry points against `redis_url` (with more settings in `env`),
    in a session of its own."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def free_port() -> int:
    """A port nothing listens on now, for a server the test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def answers_http(url: str) -> bool:
    """Whether a server answers a GET of `url` now (with any status)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError):
        return False


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process the tests started, and what it started: warm shutdown, then kill.

    The process leads a session of its own (`start_new_session`), so its group holds only it
    and its children, such as the pool processes of a prefork worker.
    """
    process.terminate()
    with suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()

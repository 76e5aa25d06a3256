"""Fixtures for breaking things for real: a Redis server of the test's own, which it can stop
and start again, and workers started against it as `celery -A worker worker` processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.processes import free_port, start_process, stop_process_group
from tests.waiting import wait_for

START_TIMEOUT = 60.0


class RedisServer:
    """A `redis-server` on a free port that keeps its data on disk (an append-only file, which
    a graceful shutdown writes out), so that stopping and starting it loses nothing."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *[self.binary, "--port", str(self.port), "--bind", "127.0.0.1"],
                *["--dir", str(self.directory), "--save", ""],
                *["--appendonly", "yes", "--appendfsync", "everysec", "--loglevel", "warning"],
            ],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(self.answers, START_TIMEOUT, f"redis-server to answer on port {self.port}")

    def stop(self) -> None:
        """Shut it down (gracefully: what it was told is on disk)."""
        if self.process is not None:
            stop_process_group(self.process)
            self.process = None

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own, running; stopped after the test."""
    binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
    if not Path(binary).exists():
        pytest.skip("no redis-server to start (install Redis, or the embedded-redis extra)")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(binary, directory)
    server.start()
    yield server
    server.stop()


@dataclass
class WorkerProcess:
    """A worker process, and its log."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """What it has logged so far."""
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None


Worker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Worker]:
    """`start_worker(redis_url, *options, **settings)`: a `celery -A worker worker` process,
    as users start it (gossip and mingle on), once it says it is ready. Stopped after."""
    with ExitStack() as cleanup:

        def start(redis_url: str, *options: str, **settings: str) -> WorkerProcess:
            name = f"fault-{uuid.uuid4().hex[:8]}"
            log_path = tmp_path / f"{name}.log"
            log = cleanup.enter_context(log_path.open("wb"))
            process = start_process(
                [
                    *[sys.executable, "-m", "celery", "-A", "worker", "worker"],
                    *["--hostname", f"{name}@%h", "--loglevel", "INFO"],
                    *options,
                ],
                redis_url,
                log,
                settings,
            )
            cleanup.callback(stop_process_group, process)
            worker = WorkerProcess(process, log_path)

            def ready() -> bool:
                assert worker.running(), worker.log()
                return " ready." in worker.log()

            wait_for(ready, START_TIMEOUT, f"worker {name} to be ready")
            return worker

        yield start

"""Fixtures for breaking things for real: a Redis server of the test's own, which it can stop
and start again; a Redis Sentinel set-up of its own, whose master it can kill; and workers
started against them as `celery -A worker worker` processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from quart_celery.testing import free_port, start_process, stop_process_group, wait_for
from tests.probe_app import ROOT, WORKER_APP

START_TIMEOUT = 60.0


class RedisServer:
    """A `redis-server` on a free port that keeps its data on disk (an append-only file, which
    a graceful shutdown writes out), so that stopping and starting it loses nothing."""

    def __init__(
        self, binary: str, directory: Path, *options: str, password: str | None = None
    ) -> None:
        self.binary = binary
        self.directory = directory
        #: More of redis-server's options (`--replicaof HOST PORT`).
        self.options = options
        #: Its `requirepass`, if it has one.
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, database: int = 0) -> str:
        credentials = f":{self.password}@" if self.password else ""
        return f"redis://{credentials}127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *[self.binary, "--port", str(self.port), "--bind", "127.0.0.1"],
                *["--dir", str(self.directory), "--save", ""],
                *["--appendonly", "yes", "--appendfsync", "everysec", "--loglevel", "warning"],
                *(["--requirepass", self.password] if self.password else []),
                *self.options,
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

    def kill(self) -> None:
        """Kill it at once (SIGKILL): what it had not written out or passed on is gone."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def answers(self) -> bool:
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()


def redis_binary() -> str:
    """The `redis-server` to start (the system's, or the embedded-redis extra's); else skip."""
    binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
    if not Path(binary).exists():
        pytest.skip("no redis-server to start (install Redis, or the embedded-redis extra)")
    return binary


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own, running; stopped after the test."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(redis_binary(), directory)
    server.start()
    yield server
    server.stop()


class SentinelSetUp:
    """A master, its replica and three sentinels monitoring it (a quorum of two), each a
    `redis-server` on a free port: Redis's own high availability, on one machine. As in
    production, each needs a password: the servers one, the sentinels another."""

    MASTER_NAME = "quart_app-test"
    PASSWORD = "server-secret"
    SENTINEL_PASSWORD = "sentinel-secret"

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        directory.mkdir()
        self.master = RedisServer(
            binary, self._made("master"), "--masterauth", self.PASSWORD, password=self.PASSWORD
        )
        self.replica = RedisServer(
            binary,
            self._made("replica"),
            *["--replicaof", "127.0.0.1", str(self.master.port), "--masterauth", self.PASSWORD],
            password=self.PASSWORD,
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    def _made(self, name: str) -> Path:
        directory = self.directory / name
        directory.mkdir()
        return directory

    def settings(self) -> dict[str, str]:
        """The app's settings to find the master through the sentinels."""
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return {
            "REDIS_SENTINELS": sentinels,
            "REDIS_SENTINEL_MASTER": self.MASTER_NAME,
            "REDIS_SENTINEL_PASSWORD": self.SENTINEL_PASSWORD,
        }

    def start(self) -> None:
        """Start them all; return once the sentinels know the replica and one another."""
        self.master.start()
        self.replica.start()
        for n, port in enumerate(self.sentinel_ports):
            config = self._made(f"sentinel-{n}") / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {config.parent}\n"
                f"sentinel monitor {self.MASTER_NAME} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {self.MASTER_NAME} 5000\n"
                f"sentinel auth-pass {self.MASTER_NAME} {self.PASSWORD}\n"
                f"requirepass {self.SENTINEL_PASSWORD}\n"
                f"sentinel sentinel-pass {self.SENTINEL_PASSWORD}\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [self.binary, str(config), "--sentinel", "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        wait_for(self.watching, START_TIMEOUT, "the sentinels to see the replica and each other")

    def watching(self) -> bool:
        """Whether every sentinel sees the master, its replica and the two other sentinels."""
        for port in self.sentinel_ports:
            client = self._sentinel(port, decode_responses=True)
            try:
                master: Any = client.sentinel_master(self.MASTER_NAME)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if master["num-slaves"] < 1 or master["num-other-sentinels"] < 2:
                return False
        return True

    def current_master_port(self) -> int | None:
        """The port of the master the sentinels name now, as the first that answers says."""
        for port in self.sentinel_ports:
            client = self._sentinel(port)
            try:
                address: Any = client.sentinel_get_master_addr_by_name(self.MASTER_NAME)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        return None

    def _sentinel(self, port: int, **options: Any) -> redis.Redis:
        return redis.Redis(
            port=port, password=self.SENTINEL_PASSWORD, socket_connect_timeout=0.5, **options
        )

    def stop(self) -> None:
        for sentinel in self.sentinels:
            stop_process_group(sentinel)
        self.replica.stop()
        self.master.stop()


@pytest.fixture
def sentinel_set_up(tmp_path: Path) -> Iterator[SentinelSetUp]:
    """A master, a replica and three sentinels of this test's own, running; stopped after."""
    set_up = SentinelSetUp(redis_binary(), tmp_path / "sentinel")
    try:
        set_up.start()
        yield set_up
    finally:
        set_up.stop()


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
    """`start_worker(redis_url, *options, **settings)`: a `celery -A <probe> worker` process,
    as users start it (gossip and mingle on), once it says it is ready. Stopped after."""
    with ExitStack() as cleanup:

        def start(redis_url: str, *options: str, **settings: str) -> WorkerProcess:
            name = f"fault-{uuid.uuid4().hex[:8]}"
            log_path = tmp_path / f"{name}.log"
            log = cleanup.enter_context(log_path.open("wb"))
            process = start_process(
                [
                    *[sys.executable, "-m", "celery", "-A", WORKER_APP, "worker"],
                    *["--hostname", f"{name}@%h", "--loglevel", "INFO"],
                    *options,
                ],
                redis_url,
                log,
                settings,
                root=ROOT,
            )
            cleanup.callback(stop_process_group, process)
            worker = WorkerProcess(process, log_path)

            def ready() -> bool:
                assert worker.running(), worker.log()
                return " ready." in worker.log()

            wait_for(ready, START_TIMEOUT, f"worker {name} to be ready")
            return worker

        yield start

"""Fixtures for real workers against the real Redis: in a thread of the test process, or as
processes. Every worker a test starts is stopped when the test ends, whether it passed or not.

Loaded as a plugin by `tests/conftest.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import WorkController
from quart import Quart

from factories.celery import configure_celery
from tests.processes import STOP_TIMEOUT, start_process, stop_process_group
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
WORKER_START_TIMEOUT = 60.0

ThreadWorker = Callable[..., AbstractContextManager[WorkController]]
ProcessWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def celery(app: Quart, redis_client: redis.Redis) -> Celery:
    """The placeholder Celery, configured from the test app, its Redis database flushed."""
    return configure_celery(app)


@pytest.fixture
def thread_worker() -> ThreadWorker:
    """Start a real worker in a thread of this process: `with thread_worker(celery, pool=...)`;
    more options (`queues=[...]`) go to the worker."""

    @contextmanager
    def start(
        celery: Celery, pool: str = "solo", concurrency: int = 1, **options: Any
    ) -> Iterator[WorkController]:
        with start_worker(
            celery,
            pool=pool,
            concurrency=concurrency,
            perform_ping_check=False,
            shutdown_timeout=STOP_TIMEOUT,
            **options,
        ) as worker:
            yield worker

    return start


@pytest.fixture
def process_worker(celery: Celery, redis_url: str, tmp_path: Path) -> Iterator[ProcessWorker]:
    """Start `celery -A worker worker` as a process, ready to take tasks when returned."""
    with ExitStack() as cleanup:

        def start(pool: str = "solo", concurrency: int = 1) -> subprocess.Popen[bytes]:
            name = f"test-{pool}-{uuid.uuid4().hex[:8]}@%h"
            log = (tmp_path / f"worker-{pool}.log").open("wb")
            cleanup.callback(log.close)
            process = start_process(
                [
                    *[sys.executable, "-m", "celery", "-A", "worker", "worker"],
                    *["--pool", pool, "--concurrency", str(concurrency), "--hostname", name],
                    *["--loglevel", "INFO"],
                    *["--without-gossip", "--without-mingle"],
                ],
                redis_url,
                log,
            )
            cleanup.callback(stop_process_group, process)
            hostname = name.replace("%h", os.uname().nodename)

            def ready() -> bool:
                if process.poll() is not None:
                    log.flush()
                    output = Path(log.name).read_text(errors="replace")
                    raise RuntimeError(f"the worker exited with {process.returncode}:\n{output}")
                return bool(celery.control.ping(destination=[hostname], timeout=0.5))

            wait_for(ready, WORKER_START_TIMEOUT, f"worker {hostname} to answer a ping")
            return process

        yield start

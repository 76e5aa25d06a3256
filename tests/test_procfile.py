"""The Procfile's processes, started as a platform (or honcho, or foreman) starts them: each
line through a shell, with `PORT` set, from the checkout."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from quart_celery.testing import (
    START_TIMEOUT,
    answers_http,
    free_port,
    http,
    start_process,
    stop_process_group,
    wait_for,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
BEAT = {"tick": {"task": "simple_task", "schedule": 0.5, "args": ["from the Procfile's beat"]}}


def procfile() -> dict[str, str]:
    """The Procfile's process types and their commands (its comments left out, as platforms
    leave them)."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture
def platform(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[str]:
    """Every process of the Procfile, running, on a flushed database; the web process's URL.
    Stopped after."""
    port = free_port()
    environment = {
        "PORT": str(port),
        # The commands name the entry points, as an installed environment has them on its PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "BEAT_SCHEDULE": json.dumps(BEAT),
        "CELERY_BEAT_SCHEDULE_FILENAME": str(tmp_path / "beat-state"),
    }
    with ExitStack() as cleanup:
        for name, command in procfile().items():
            log = cleanup.enter_context((tmp_path / f"{name}.log").open("wb"))
            process = start_process(["sh", "-c", command], redis_url, log, environment)
            cleanup.callback(stop_process_group, process)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: answers_http(f"{url}/healthz"), START_TIMEOUT, "the web process")
        yield url


def test_the_procfile_names_the_three_processes() -> None:
    assert set(procfile()) == {"web", "worker", "beat"}


def test_the_procfiles_processes_serve_run_and_schedule(platform: str, redis_url: str) -> None:
    status, accepted = http(
        "POST", f"{platform}/api/tasks", {"name": "simple_task", "kwargs": {"message": "posted"}}
    )
    assert status == 202

    def finished() -> bool:
        state: str = http("GET", f"{platform}/api/tasks/{accepted['id']}")[1]["state"]
        return state == "SUCCESS"

    wait_for(finished, 60, "the worker to run the posted task")
    store = redis.Redis.from_url(redis_url)
    try:

        def scheduled_one_ran() -> bool:
            # A task's state, not the keys beside it (`.chunks`, its stream; `.workflow`).
            keys = [key for key in store.scan_iter("celery-task-meta-*") if b"." not in key]
            metas = [store.get(key) for key in keys]
            results = [json.loads(meta or b"{}").get("result") for meta in metas]
            return "from the Procfile's beat" in results

        wait_for(scheduled_one_ran, 60, "a task beat sent to run")
    finally:
        store.close()

"""Workers that stop in the middle of tasks: killed (SIGKILL) or told to stop (SIGTERM)."""

from __future__ import annotations

import os
import signal
import time
from functools import partial

import pytest

from quart_celery.testing import Server, accepted_task, task_in, wait_for
from tests.faults.conftest import RedisServer, Worker

pytestmark = pytest.mark.e2e

VISIBILITY_TIMEOUT = 5


def submit(server: str, message: str, delay: float) -> str:
    task_id: str = accepted_task(server, "tests.async_echo", message=message, delay=delay)["id"]
    return task_id


def test_a_task_whose_worker_is_killed_runs_again_on_another(
    redis_server: RedisServer, start_server: Server, start_worker: Worker
) -> None:
    url = redis_server.url()
    settings = {"CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
    server = start_server(url)
    doomed = start_worker(url, "--pool", "prefork", "--concurrency", "1", **settings)
    task_id = submit(server, "survives", 3.0)
    wait_for(partial(task_in, server, task_id, ("STARTED",)), 30, "the task to start")

    os.killpg(doomed.process.pid, signal.SIGKILL)  # the worker and its pool, mid-task
    doomed.process.wait()
    killed_at = time.monotonic()
    start_worker(url, "--pool", "prefork", "--concurrency", "1", **settings)

    task = wait_for(
        partial(task_in, server, task_id, ("SUCCESS", "FAILURE")), 90, "the task to run again"
    )
    assert (task["state"], task["result"]["message"]) == ("SUCCESS", "survives")
    # Handed out again once unacknowledged for the visibility timeout, then swept for.
    elapsed = time.monotonic() - killed_at
    print(f"killed mid-task; SUCCESS {elapsed:.1f} s later")  # for docs/reliability.md
    assert elapsed < VISIBILITY_TIMEOUT + 30


def test_a_worker_told_to_stop_finishes_its_tasks_and_leaves_the_queue_to_others(
    redis_server: RedisServer, start_server: Server, start_worker: Worker
) -> None:
    url = redis_server.url()
    server = start_server(url)
    stopping = start_worker(url, "--pool", "prefork", "--concurrency", "2")
    running = [submit(server, f"running {n}", 2.0) for n in range(2)]
    queued = [submit(server, f"queued {n}", 0.0) for n in range(5)]
    for task_id in running:
        wait_for(partial(task_in, server, task_id, ("STARTED",)), 30, "the tasks to start")

    stopping.process.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    assert stopping.process.wait(60) == 0
    for task_id in running:
        assert task_in(server, task_id, ("SUCCESS",)), "a running task did not finish"
    # What it had not started is still queued for the next worker, which runs it at once.
    start_worker(url, "--pool", "prefork", "--concurrency", "2")
    for task_id in queued:
        wait_for(partial(task_in, server, task_id, ("SUCCESS",)), 30, "a queued task to run")

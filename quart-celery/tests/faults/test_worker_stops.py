"""Workers that stop in the middle of tasks: killed (SIGKILL) or told to stop (SIGTERM)."""

from __future__ import annotations

import json
import os
import signal
import time
from functools import partial

import pytest
import redis
from celery import Celery

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


# The async pool, the workers' default (no --pool): the same promises with hundreds in flight.


def states(url: str, task_ids: list[str]) -> list[str]:
    """The tasks' states, as the result backend at `url` has them (PENDING where it has none)."""
    client = redis.Redis.from_url(url)
    try:
        metas = client.mget([f"celery-task-meta-{task_id}" for task_id in task_ids])
    finally:
        client.close()
    return [json.loads(meta)["status"] if meta else "PENDING" for meta in metas]


def test_the_async_pool_loses_none_of_300_tasks_in_flight_when_killed(
    redis_server: RedisServer, start_server: Server, start_worker: Worker
) -> None:
    url = redis_server.url()
    settings = {"CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
    server = start_server(url)
    # All submitted before the worker starts, which then takes them at once: submitted while it
    # ran, the first could end (after 5 s) before the last began, on a slow machine (CI).
    task_ids = [submit(server, f"survives {n}", 5.0) for n in range(300)]
    doomed = start_worker(url, "--concurrency", "300", **settings)
    wait_for(lambda: states(url, task_ids) == ["STARTED"] * 300, 60, "all 300 to be in flight")

    os.killpg(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait()
    start_worker(url, **settings)
    wait_for(lambda: set(states(url, task_ids)) == {"SUCCESS"}, 90, "all 300 to run again")


def test_the_async_pool_finishes_what_runs_on_sigterm_and_leaves_the_rest_queued(
    redis_server: RedisServer, start_server: Server, start_worker: Worker
) -> None:
    url = redis_server.url()
    server = start_server(url)
    stopping = start_worker(url, "--concurrency", "20")
    running = [submit(server, f"running {n}", 2.0) for n in range(20)]
    wait_for(lambda: states(url, running) == ["STARTED"] * 20, 30, "the tasks to start")
    queued = [submit(server, f"queued {n}", 0.0) for n in range(10)]  # beyond its concurrency

    stopping.process.send_signal(signal.SIGTERM)  # Celery's warm shutdown
    assert stopping.process.wait(60) == 0
    assert states(url, running) == ["SUCCESS"] * 20
    assert states(url, queued) == ["PENDING"] * 10
    start_worker(url)
    wait_for(lambda: states(url, queued) == ["SUCCESS"] * 10, 30, "the queued tasks to run")


def test_a_second_signal_cancels_what_the_async_pool_runs_and_it_is_delivered_again(
    redis_server: RedisServer, start_worker: Worker
) -> None:
    url = redis_server.url()
    settings = {"CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT)}
    stopping = start_worker(url, **settings)
    sender = Celery("sender", broker=url, backend=url)
    keys = [f"ends-{n}" for n in range(5)]
    # Ids only: results held past the test would reach for its Redis once it is gone.
    task_ids = [sender.send_task("tests.long_the_first_time", (key, 60.0)).id for key in keys]
    sender.close()
    client = redis.Redis.from_url(url)
    wait_for(lambda: all(client.llen(key) == 1 for key in keys), 30, "the tasks to start")

    stopping.process.send_signal(signal.SIGINT)  # a warm shutdown, waiting for them...
    wait_for(lambda: "Warm shutdown" in stopping.log(), 30, "the warm shutdown")
    stopping.process.send_signal(signal.SIGINT)  # ...and a second signal: a cold one
    stopping.process.wait(30)
    for key in keys:  # cancelled where they awaited; their `finally` blocks ran
        assert client.lrange(key, 0, -1) == [b"started", b"cancelled", b"finally"]
    assert states(url, task_ids) == ["STARTED"] * 5  # neither failed nor done

    start_worker(url, **settings)
    wait_for(lambda: states(url, task_ids) == ["SUCCESS"] * 5, 60, "the tasks to run again")
    assert all(client.lrange(key, 0, -1)[-2:] == [b"started", b"finally"] for key in keys)
    client.close()

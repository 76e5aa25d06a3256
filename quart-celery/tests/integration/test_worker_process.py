"""`celery -A worker worker` as a real process, under each pool, running the app's tasks."""

from __future__ import annotations

import uuid
from collections import defaultdict
from functools import partial

import pytest
import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from quart_celery.testing import ProcessWorker
from tests.channels import published_states
from tests.worker_tasks import async_echo, cached_client, count, echo, fail, increment_later

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
POOLS = [("asyncio", 4), ("solo", 1), ("prefork", 2), ("threads", 2)]
IMPLEMENTATIONS = {
    "asyncio": "quart_celery._worker.asyncio_pool:AsyncPool",
    "solo": "celery.concurrency.solo:TaskPool",
    "prefork": "celery.concurrency.prefork:TaskPool",
    "threads": "celery.concurrency.thread:TaskPool",
}


@pytest.mark.parametrize(("pool", "concurrency"), POOLS)
def test_the_worker_runs_sync_async_and_failing_tasks(
    celery: Celery, process_worker: ProcessWorker, pool: str, concurrency: int
) -> None:
    process_worker(pool, concurrency)
    # The pool asked for, by name: "asyncio" (no --pool) is the bridge's, an explicit one
    # Celery's, as `celery inspect stats` says.
    (stats,) = (celery.control.inspect(timeout=5, limit=1).stats() or {}).values()
    assert stats["pool"]["implementation"] == IMPLEMENTATIONS[pool]
    assert stats["pool"]["max-concurrency"] == concurrency
    # It takes no more messages ahead than it can start.
    assert stats["prefetch_count"] == concurrency
    assert echo.delay("hello").get(timeout=TIMEOUT) == "hello"
    assert count.delay(3, 0.01).get(timeout=TIMEOUT) == {"steps": 3}
    greeting = async_echo.delay("hi", 0.01).get(timeout=TIMEOUT)
    assert greeting == {"message": "hi", "app": "probe_app"}
    failed = fail.delay("boom")
    with pytest.raises(ValueError, match=r"^boom$"):
        failed.get(timeout=TIMEOUT)
    assert failed.state == "FAILURE"


@pytest.mark.parametrize(("pool", "concurrency"), POOLS)
def test_an_async_client_cached_across_tasks_keeps_working(
    celery: Celery,
    process_worker: ProcessWorker,
    redis_client: redis.Redis,
    pool: str,
    concurrency: int,
) -> None:
    process_worker(pool, concurrency)
    key = f"count-{uuid.uuid4().hex}"
    runs = [cached_client.delay(key) for _ in range(4 * concurrency)]
    reports = [run.get(timeout=TIMEOUT) for run in runs]

    assert sorted(report["count"] for report in reports) == list(range(1, len(runs) + 1))
    by_thread: defaultdict[tuple[int, int], list[dict[str, int]]] = defaultdict(list)
    for report in reports:
        by_thread[report["pid"], report["thread"]].append(report)
    # More tasks than the pool has threads: some thread ran several, on one loop and one client.
    assert len(by_thread) <= concurrency < len(runs)
    for same_thread in by_thread.values():
        assert len({report["loop"] for report in same_thread}) == 1
        assert len({report["client"] for report in same_thread}) == 1


def test_a_counting_task_records_started_each_step_and_success(
    celery: Celery, process_worker: ProcessWorker, redis_client: redis.Redis
) -> None:
    process_worker()
    task_id = str(uuid.uuid4())
    send = partial(count.apply_async, (3, 0.01), task_id=task_id)
    states = published_states(redis_client, task_id, send, TIMEOUT)
    assert [state for state, _ in states] == ["STARTED", *["PROGRESS"] * 3, "SUCCESS"]
    assert [result for _, result in states[1:]] == [
        {"current": 1, "total": 3},
        {"current": 2, "total": 3},
        {"current": 3, "total": 3},
        {"steps": 3},
    ]


def test_an_async_task_stopped_by_its_soft_time_limit_stops(
    celery: Celery, process_worker: ProcessWorker, redis_client: redis.Redis
) -> None:
    process_worker("prefork", 1)
    key = f"late-{uuid.uuid4().hex}"
    stopped = increment_later.apply_async((key, 2.0), soft_time_limit=1)
    with pytest.raises(SoftTimeLimitExceeded):
        stopped.get(timeout=TIMEOUT)
    # The next task on the same loop outlives the first one's sleep: had the first gone on
    # running, it would have counted by now.
    assert async_echo.delay("after", 2.0).get(timeout=TIMEOUT)["message"] == "after"
    assert redis_client.get(key) is None


def test_only_workers_keep_retrying_to_store_a_result_while_redis_is_away(
    celery: Celery, process_worker: ProcessWorker
) -> None:
    # A worker holds a result until Redis is back; a web request must answer 503 instead.
    process_worker()
    assert celery.conf.result_backend_always_retry is False  # this process: the web app's
    answers = celery.control.inspect(timeout=5).conf() or {}
    (worker_conf,) = answers.values()
    assert worker_conf["result_backend_always_retry"] is True

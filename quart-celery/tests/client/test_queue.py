"""The async API a user's own routes call: submit, look up, follow, wait for a result.

Against the real Redis and, where a task must run, a real worker in a thread of this process.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import pytest
import redis
from celery import Celery
from quart import Quart

from quart_celery import TaskFailed, TaskRevoked, queue
from quart_celery.errors import TaskNotFound
from quart_celery.testing import ThreadWorker
from tests.probe_app import KEYS
from tests.worker_tasks import async_echo, count, echo, fail

TIMEOUT = 20.0


@pytest.fixture
async def serving(app: Quart, celery: Celery) -> AsyncIterator[Quart]:
    """The app serving (its pool, submitter and listener open), with its context pushed."""
    async with app.test_app(), app.app_context():
        yield app


async def test_submit_records_and_sends_and_look_up_reads_it(
    serving: Quart, redis_client: redis.Redis
) -> None:
    task_id = await queue.submit(echo, "hi")
    assert redis_client.get(KEYS.task(task_id)) == b"tests.echo"
    (message,) = [json.loads(raw) for raw in redis_client.lrange("celery", 0, -1)]
    assert (message["headers"]["id"], message["headers"]["task"]) == (task_id, "tests.echo")
    snapshot = await queue.look_up(task_id)
    assert (snapshot.id, snapshot.name, snapshot.state) == (task_id, "tests.echo", "PENDING")


async def test_a_signature_carries_celerys_options(
    serving: Quart, redis_client: redis.Redis
) -> None:
    task_id = await queue.submit(echo.s("later").set(countdown=30, priority=3))
    # kombu keeps a list per priority step: the queue's name, then "\x06\x16" and the step.
    (message,) = [json.loads(raw) for raw in redis_client.lrange("celery\x06\x163", 0, -1)]
    assert message["headers"]["id"] == task_id
    assert message["headers"]["eta"] is not None
    assert message["properties"]["priority"] == 3
    with pytest.raises(TypeError, match="takes no more arguments"):
        await queue.submit(echo.s("x"), "y")


async def test_result_waits_for_the_result(
    serving: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    with thread_worker(celery):
        task_id = await queue.submit(async_echo, message="awaited", delay=0.05)
        assert await queue.result(task_id, timeout=TIMEOUT) == {
            "message": "awaited",
            "app": "probe_app",
        }
        # Already ended: the stored result, at once.
        assert (await queue.result(task_id, timeout=TIMEOUT))["message"] == "awaited"


async def test_result_raises_what_the_task_came_to(
    serving: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    revoked = await queue.submit(echo, "never")
    assert (await serving.test_client().delete(f"/api/tasks/{revoked}")).status_code == 202
    with pytest.raises(TaskRevoked):
        await queue.result(revoked, timeout=TIMEOUT)
    with thread_worker(celery):
        failed = await queue.submit(fail, message="boom")
        with pytest.raises(TaskFailed, match=r"failed: ValueError: boom") as raised:
            await queue.result(failed, timeout=TIMEOUT)
    assert raised.value.snapshot.error is not None


async def test_result_gives_up_after_its_timeout(serving: Quart) -> None:
    task_id = await queue.submit(echo, "no worker runs")
    with pytest.raises(TimeoutError):
        await queue.result(task_id, timeout=0.2)
    listener = serving.extensions["quart_celery.result_listener"]
    assert task_id not in listener.recipients  # it stopped following


async def test_follow_gives_every_change_up_to_the_final_state(
    serving: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = await queue.submit(count, steps=3, delay=0.01)
    changes = queue.follow(task_id)
    states = [(await anext(changes)).state]  # before any worker runs
    with thread_worker(celery):
        async with asyncio.timeout(TIMEOUT):
            states += [snapshot.state async for snapshot in changes]
    assert states == ["PENDING", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]


async def test_followers_wait_without_a_thread_each(serving: Quart) -> None:
    task_ids = [await queue.submit(echo, str(n)) for n in range(100)]
    before = threading.active_count()
    followers = [queue.follow(task_id) for task_id in task_ids]
    firsts = await asyncio.gather(*(anext(follower) for follower in followers))
    assert {snapshot.state for snapshot in firsts} == {"PENDING"}
    waiting = [asyncio.ensure_future(anext(follower)) for follower in followers]
    for _ in range(20):  # the loop comes round: each follower is waiting, none has anything
        await asyncio.sleep(0)
    assert not any(next_one.done() for next_one in waiting)
    # The thread pool's threads (made on demand, up to BLOCKING_POOL_SIZE), and no more.
    assert threading.active_count() <= before + serving.config["BLOCKING_POOL_SIZE"]
    for next_one in waiting:
        next_one.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)  # each follower unwinds, and closes
    assert not serving.extensions["quart_celery.result_listener"].recipients


@pytest.mark.parametrize("task_id", ["3b241101-e2bb-4255-8caf-4136c566a962", "not-an-id"])
async def test_an_id_never_published_is_not_found(serving: Quart, task_id: str) -> None:
    with pytest.raises(TaskNotFound):
        await queue.look_up(task_id)
    with pytest.raises(TaskNotFound):
        await anext(queue.follow(task_id))
    with pytest.raises(TaskNotFound):
        await queue.result(task_id, timeout=1)

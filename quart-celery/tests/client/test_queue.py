"""The async API a user's own routes call: submit, look up, follow, wait for a result.

Against the real Redis and, where a task must run, a real worker in a thread of this process.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from celery import Celery
from quart import Blueprint, Quart

from quart_celery import InvalidArguments, ResultTimeout, TaskFailed, TaskRevoked, queue
from quart_celery.errors import TaskNotFound
from quart_celery.testing import ThreadWorker, error_of
from tests.probe_app import KEYS
from tests.worker_tasks import async_echo, cached_client, count, echo, fail, increment_later

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
    with pytest.raises(ResultTimeout) as raised:
        await queue.result(task_id, timeout=0.2)
    assert isinstance(raised.value, TimeoutError)  # what `asyncio.timeout` raises, too
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


@pytest.mark.parametrize(
    ("task", "args", "kwargs", "problem"),
    [
        (echo, (), {"message": ""}, "message: String should have at least 1 character"),
        (echo, (5,), {}, "message: Input should be a valid string"),
        (echo, (), {"message": "x", "extra": 1}, "unexpected keyword argument 'extra'"),
        (echo, (), {}, "missing a required argument: 'message'"),
        (count, (), {"steps": 1000, "delay": 1.0}, "steps * delay is 1000 s; at most 60"),
        (count, (), {"steps": 2, "delay": float("nan")}, "delay: Input should be a finite"),
        (cached_client, (), {"key": 5}, "key: Input should be a valid string"),  # not exposed
        (increment_later, ("k",), {}, "missing a required argument: 'seconds'"),
    ],
)
async def test_submit_checks_the_arguments_against_the_tasks_declared_ones(
    serving: Quart,
    redis_client: redis.Redis,
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    problem: str,
) -> None:
    with pytest.raises(InvalidArguments) as raised:
        await queue.submit(task, *args, **kwargs)
    assert problem in str(raised.value)
    assert (raised.value.status, raised.value.code) == (422, "invalid_arguments")
    assert isinstance(raised.value, TypeError)  # as a call with bad arguments raises
    assert redis_client.llen("celery") == 0  # nothing was sent
    assert redis_client.keys(KEYS.task("*")) == []  # nor recorded
    await queue.submit(increment_later, "k", 0.5)  # arguments that fit: sent, positional too


async def test_what_queue_raises_in_a_route_answers_as_a_json_error(
    app: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    views = Blueprint("waits", __name__)

    @views.post("/waits/<name>")
    async def wait(name: str) -> dict[str, Any]:
        task = {"fail": fail, "echo": echo}[name]
        task_id = await queue.submit(task, message=name)
        if name == "echo":  # revoked: no worker runs yet
            await app.test_client().delete(f"/api/tasks/{task_id}")
        return {"result": await queue.result(task_id, timeout=TIMEOUT)}

    @views.post("/waits-briefly")
    async def wait_briefly() -> dict[str, Any]:
        task_id = await queue.submit(echo, message="nobody runs it")
        return {"result": await queue.result(task_id, timeout=0.1)}

    @views.post("/submits-badly")
    async def submit_badly() -> dict[str, str]:
        return {"id": await queue.submit(echo, message="")}

    app.register_blueprint(views)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        # Revoked before any worker runs: its REVOKED is stored at once, no worker needed.
        revoked = await client.post("/waits/echo")
        with thread_worker(celery):
            failed = await client.post("/waits/fail")
        late = await client.post("/waits-briefly")
        bad = await client.post("/submits-badly")
    answers = [(r.status_code, (await error_of(r))["code"]) for r in (failed, revoked, late, bad)]
    assert answers == [
        (502, "task_failed"),
        (409, "task_revoked"),
        (504, "result_timeout"),
        (422, "invalid_arguments"),
    ]
    assert "ValueError: fail" in (await error_of(failed))["message"]

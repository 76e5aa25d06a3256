"""Workflows from a user's own code: `queue.submit(chain(...))` and the calls to look one up,
follow it, wait for it and cancel it; sent in one step, or not at all.

Against the real Redis and a real worker in a thread of this process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest
import redis
from celery import Celery, chain, chord, group
from quart import Quart

from quart_celery import (
    InvalidArguments,
    ServiceUnavailable,
    WorkflowChange,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowRevoked,
    WorkflowSnapshot,
    queue,
)
from quart_celery._broker.workflow_records import decoded_hash
from quart_celery._client import submitter as submitter_module
from quart_celery._client.submitter import submitter
from quart_celery._client.workflows import submit_workflow
from quart_celery.testing import ThreadWorker
from tests.probe_app import KEYS, create_app
from tests.worker_tasks import async_square, echo, fail, square, total

TIMEOUT = 20.0


@pytest.fixture
async def serving(app: Quart, celery: Celery) -> AsyncIterator[Quart]:
    """The app serving, with its context pushed."""
    async with app.test_app(), app.app_context():
        yield app


def stored_state(redis_client: redis.Redis, task_id: str) -> str | None:
    raw = redis_client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else str(json.loads(raw)["status"])


async def test_a_chain_from_user_code_is_followed_to_its_result(
    serving: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    workflow_id = await queue.submit(chain(square.s(x=2), square.s(), square.s()))
    with thread_worker(celery):
        seen: list[WorkflowSnapshot | WorkflowChange] = []
        async with aclosing(queue.follow_workflow(workflow_id)) as changes:
            async for change in changes:
                seen.append(change)
        assert await queue.workflow_result(workflow_id, timeout=TIMEOUT) == 256
    assert isinstance(seen[0], WorkflowSnapshot)
    assert (seen[-1].state, seen[-1].done, seen[-1].total, seen[-1].result) == (
        "SUCCESS",
        3,
        3,
        256,
    )


async def test_a_group_is_found_by_its_own_id(
    serving: Quart, celery: Celery, thread_worker: ThreadWorker, redis_client: redis.Redis
) -> None:
    workflow_id = await queue.submit(group(square.s(x=value) for value in range(4)))
    snapshot = await queue.look_up_workflow(workflow_id)
    assert (snapshot.state, snapshot.total, snapshot.done) == ("PENDING", 4, 0)
    assert redis_client.llen("celery") == 4
    with thread_worker(celery):
        assert await queue.workflow_result(workflow_id, timeout=TIMEOUT) == [0, 1, 4, 9]


async def test_a_failed_or_cancelled_workflow_raises_its_error(
    serving: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    failing = await queue.submit(chord([square.s(x=1), fail.s(message="no")], total.s()))
    slow = await queue.submit(group(async_square.s(x=value, delay=5) for value in range(3)))
    with thread_worker(celery):
        with pytest.raises(WorkflowFailed):
            await queue.workflow_result(failing, timeout=TIMEOUT)
        cancelled = await queue.cancel_workflow(slow)
        assert cancelled.total == 3
        with pytest.raises(WorkflowRevoked):
            await queue.workflow_result(slow, timeout=TIMEOUT)
    with pytest.raises(WorkflowNotFound):
        await queue.look_up_workflow(str(uuid.uuid4()))


async def test_a_task_that_keeps_no_result_is_made_to_keep_it_in_a_workflow(
    serving: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    keeps_none = square.s(x=3).set(ignore_result=True)  # type: ignore[call-arg]  # not in the stubs
    workflow_id = await queue.submit(group(square.s(x=2), keeps_none))
    with thread_worker(celery):
        assert await queue.workflow_result(workflow_id, timeout=TIMEOUT) == [4, 9]


async def test_a_task_of_no_app_or_eager_mode_is_refused_before_anything_is_sent(
    serving: Quart, celery: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger = celery.signature("elsewhere.task", kwargs={"x": 1})
    with pytest.raises(TypeError, match="no task of this app"):
        await queue.submit(group(square.s(x=1), stranger))
    monkeypatch.setitem(celery.conf, "task_always_eager", True)
    with pytest.raises(RuntimeError, match="task_always_eager"):
        await queue.submit(group(square.s(x=1)))
    assert redis_client.llen("celery") == 0


@pytest.mark.parametrize(
    ("workflow", "problem"),
    [
        (lambda: chord([square.s(x="2")], total.s()), "x: Input should be a valid integer"),
        (lambda: chain(square.s(x=2), square.s(x=3)), "multiple values for argument 'x'"),
        (lambda: group(square.s()), "missing a required argument: 'x'"),
        (lambda: chain(square.s(x=1), echo.si(message="")), "message: String should have"),
    ],
    ids=["bad type", "given twice", "missing", "immutable step"],
)
async def test_each_step_is_checked_as_a_task_is_and_nothing_is_sent(
    serving: Quart, redis_client: redis.Redis, workflow: Any, problem: str
) -> None:
    with pytest.raises(InvalidArguments, match=problem):
        await queue.submit(workflow())
    assert redis_client.llen("celery") == 0
    # The argument a step is given by the step before it is taken as given.
    await queue.submit(chain(square.s(x=2), square.s(), echo.si(message="fine")))


async def test_a_workflow_goes_in_one_step_with_its_record_and_counter(
    serving: Quart, redis_client: redis.Redis
) -> None:
    workflow = chord([square.s(x=1), chain(square.s(x=2), square.s())], total.s())
    record = await submit_workflow(workflow)
    queued = [json.loads(raw)["headers"] for raw in redis_client.lrange("celery", 0, -1)]
    assert {headers["task"] for headers in queued} == {"tests.square"}
    assert len(queued) == 2  # the header's first tasks; the rest ride in their messages
    assert len(record.members) == 4
    for task_id, name in record.members:  # every task, sent or carried, is known at once
        assert redis_client.get(KEYS.task(task_id)) == name.encode()
        assert redis_client.exists(f"celery-task-meta-{task_id}.workflow")
    assert redis_client.exists(KEYS.workflow(record.workflow_id))
    # (A chain in the header carries the group's id on its last link, not its first.)
    group_id = next(headers["group"] for headers in queued if headers["group"])
    assert redis_client.get(f"celery-taskset-meta-{group_id}.s") == b"2"  # Celery's chord size


async def test_a_workflow_that_cannot_be_written_leaves_nothing_queued(
    serving: Quart, redis_client: redis.Redis
) -> None:
    workflow_id = str(uuid.uuid4())
    # A key of the wrong type where its counters go: the script fails half way.
    redis_client.rpush(KEYS.workflow(workflow_id) + ":progress", "in the way")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await submit_workflow(group(square.s(x=1), square.s(x=2)), workflow_id)
    assert redis_client.llen("celery") == 0


async def test_where_the_broker_is_apart_a_failed_send_revokes_the_whole_workflow(
    redis_client: redis.Redis, other_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app({"TESTING": True, "CELERY_BROKER_URL": other_redis_url})
    sent = submitter_module.publish

    def second_fails(*args: Any) -> list[Exception | None]:
        errors = sent(*args)
        return [errors[0], ConnectionError("the broker went"), *errors[2:]]

    monkeypatch.setattr(submitter_module, "publish", second_fails)
    workflow = group(echo.s(message="one"), echo.s(message="two"), echo.s(message="three"))
    async with app.test_app(), app.app_context():
        assert not submitter().workflows_in_one_step  # the thread pool's path
        with pytest.raises(ServiceUnavailable):
            await submit_workflow(workflow)
    (progress,) = redis_client.keys(f"{KEYS.namespace}:workflow:*:progress")
    fields = decoded_hash(redis_client.hgetall(progress))
    members = [name.removeprefix("state:") for name in fields if name.startswith("state:")]
    assert len(members) == 3  # each counted as it was revoked
    assert {stored_state(redis_client, task_id) for task_id in members} == {"REVOKED"}

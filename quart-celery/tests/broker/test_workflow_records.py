"""A workflow's counters, kept by the script that stores each state of its tasks: counted once
as each ends, published with the counts on the workflow's channel, and nothing for a task of
no workflow."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis
from celery import Celery

from quart_celery._broker.workflow_records import (
    Counts,
    ResultShape,
    WorkflowRecord,
    decoded_hash,
    writes,
)
from quart_celery.testing import wait_for
from tests.probe_app import KEYS


def recorded(celery: Celery, redis_client: redis.Redis, members: int) -> WorkflowRecord:
    """A group of `members` tasks, recorded as the bridge records it when it sends one."""
    ids: list[ResultShape] = [str(uuid.uuid4()) for _ in range(members)]
    record = WorkflowRecord(
        str(uuid.uuid4()), "group", tuple((str(i), "tests.square") for i in ids), ids
    )
    backend: Any = celery.backend
    for command in writes(record, KEYS.workflow(record.workflow_id), backend.get_key_for_task, 60):
        redis_client.execute_command(*command)  # type: ignore[no-untyped-call]
    return record


def counts(redis_client: redis.Redis, record: WorkflowRecord) -> Counts:
    fields = redis_client.hgetall(KEYS.workflow(record.workflow_id) + ":progress")
    return Counts.of(decoded_hash(fields))


def test_members_are_counted_once_as_they_end(celery: Celery, redis_client: redis.Redis) -> None:
    record = recorded(celery, redis_client, 3)
    first, second, third = (task_id for task_id, _ in record.members)
    with redis_client.pubsub(ignore_subscribe_messages=True) as pubsub:  # type: ignore[no-untyped-call, unused-ignore]
        pubsub.subscribe(KEYS.workflow(record.workflow_id))
        celery.backend.store_result(first, None, "STARTED")
        celery.backend.store_result(first, 1, "SUCCESS")
        celery.backend.store_result(first, 1, "SUCCESS")  # again: no change, not counted
        celery.backend.store_result(second, "x", "FAILURE")
        celery.backend.store_result(second, "x", "REVOKED")  # ended already: not counted again
        changes = [
            json.loads(wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "a change")["data"])
            for _ in range(4)
        ]
    assert [(change["task"], change["state"]) for change in changes] == [
        (first, "STARTED"),
        (first, "SUCCESS"),
        (second, "FAILURE"),
        (second, "REVOKED"),
    ]
    assert [change["version"] for change in changes] == [1, 2, 3, 4]
    now = counts(redis_client, record)
    # A failure ends the workflow (FAILURE), whatever else runs after it.
    assert (now.done, now.failed, now.revoked) == (2, 1, 0)
    assert (now.ended, now.state) == (True, "FAILURE")
    celery.backend.store_result(third, 9, "SUCCESS")
    assert counts(redis_client, record).done == 3


def test_a_task_revoked_then_started_then_revoked_is_counted_once(
    celery: Celery, redis_client: redis.Redis
) -> None:
    record = recorded(celery, redis_client, 2)
    (first, _), _ = record.members
    for state in ("REVOKED", "STARTED", "REVOKED"):
        celery.backend.store_result(first, None, state)
    now = counts(redis_client, record)
    assert (now.done, now.revoked) == (1, 1)


def test_a_workflow_ends_when_every_task_has_not_only_its_last(
    celery: Celery, redis_client: redis.Redis
) -> None:
    # Celery sends a chain's next link before it stores the link's own result: the last link
    # may be stored first.
    ids: list[ResultShape] = [str(uuid.uuid4()) for _ in range(2)]
    members = tuple((str(task_id), "tests.square") for task_id in ids)
    record = WorkflowRecord(str(uuid.uuid4()), "chain", members, ids[-1])
    backend: Any = celery.backend
    for command in writes(record, KEYS.workflow(record.workflow_id), backend.get_key_for_task, 60):
        redis_client.execute_command(*command)  # type: ignore[no-untyped-call]
    first, last = (task_id for task_id, _ in members)
    celery.backend.store_result(last, 4, "SUCCESS")
    assert not counts(redis_client, record).ended
    celery.backend.store_result(first, 2, "SUCCESS")
    assert (counts(redis_client, record).ended, counts(redis_client, record).state) == (
        True,
        "SUCCESS",
    )


def test_a_task_of_no_workflow_costs_nothing_more(
    celery: Celery, redis_client: redis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    celery.backend.store_result(task_id, 1, "SUCCESS")
    assert set(redis_client.keys("*")) == {f"celery-task-meta-{task_id}".encode()}


def test_the_workflow_lives_as_long_as_its_latest_result(
    celery: Celery, redis_client: redis.Redis
) -> None:
    record = recorded(celery, redis_client, 1)  # recorded for 60 s
    ((task_id, _),) = record.members
    keys = (KEYS.workflow(record.workflow_id), KEYS.workflow(record.workflow_id) + ":progress")
    assert all(0 < redis_client.ttl(key) <= 60 for key in keys)
    celery.backend.store_result(task_id, 1, "SUCCESS")  # kept for result_expires from now
    expires = redis_client.ttl(f"celery-task-meta-{task_id}")
    assert all(redis_client.ttl(key) >= expires - 1 > 60 for key in keys)

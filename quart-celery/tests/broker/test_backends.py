"""The result backend: a state stored, published and dated in one round trip, never over
SUCCESS."""

from __future__ import annotations

import json
import uuid

import redis
from celery import Celery

from quart_celery._broker.celery_settings import seconds
from quart_celery.testing import wait_for


def stored(redis_client: redis.Redis, task_id: str) -> dict[str, object]:
    raw = redis_client.get(f"celery-task-meta-{task_id}")
    assert raw is not None
    meta: dict[str, object] = json.loads(raw)
    return meta


def test_a_state_is_stored_published_and_expires(celery: Celery, redis_client: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    with redis_client.pubsub(ignore_subscribe_messages=True) as pubsub:  # type: ignore[no-untyped-call, unused-ignore]
        pubsub.subscribe(f"celery-task-meta-{task_id}")
        celery.backend.store_result(task_id, {"current": 1}, "PROGRESS")
        # (The first read takes the subscription's confirmation, and answers None.)
        message = wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "the state published")
    assert json.loads(message["data"]) == stored(redis_client, task_id)
    assert stored(redis_client, task_id)["status"] == "PROGRESS"
    assert "date_stored" in stored(redis_client, task_id)
    ttl = redis_client.ttl(f"celery-task-meta-{task_id}")
    assert 0 < ttl <= seconds(celery.conf.result_expires)


def test_nothing_is_stored_over_success(celery: Celery, redis_client: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    celery.backend.store_result(task_id, None, "STARTED")
    celery.backend.store_result(task_id, "done", "SUCCESS")
    # A copy of the task delivered twice starts again: its states are dropped.
    celery.backend.store_result(task_id, None, "STARTED")
    celery.backend.store_result(task_id, "again", "FAILURE")
    assert (stored(redis_client, task_id)["status"], stored(redis_client, task_id)["result"]) == (
        "SUCCESS",
        "done",
    )
    assert celery.AsyncResult(task_id).get(timeout=5) == "done"

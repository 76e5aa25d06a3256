"""A workflow sent from sync code (`send_workflow`): recorded, every task of it known at once,
sent through Celery's producer; if a message cannot be sent, none of it runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from celery import Celery, chain, group

from quart_celery import send_workflow
from quart_celery._broker.canvas import capturing
from quart_celery._broker.workflow_records import decoded_hash
from tests.probe_app import KEYS
from tests.worker_tasks import echo, square


def test_a_chain_is_recorded_and_its_first_link_sent(
    celery: Celery, redis_client: redis.Redis
) -> None:
    workflow_id = send_workflow(chain(square.s(x=2), square.s(), square.s()))
    (message,) = [json.loads(raw)["headers"] for raw in redis_client.lrange("celery", 0, -1)]
    assert message["task"] == "tests.square"
    progress = decoded_hash(redis_client.hgetall(KEYS.workflow(workflow_id) + ":progress"))
    assert progress["total"] == "3"
    assert redis_client.get(KEYS.task(workflow_id)) == b"tests.square"  # the last link, known


def test_a_message_that_cannot_be_sent_revokes_the_whole_workflow(
    celery: Celery, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    task_class = type(celery.tasks["tests.echo"])
    original = task_class.apply_async

    def second_fails(self: Any, *args: Any, **options: Any) -> Any:
        if capturing() is None:  # sending for real, once captured
            if sent:
                raise ConnectionError("the broker went")
            sent.append(options["task_id"])
        return original(self, *args, **options)

    monkeypatch.setattr(task_class, "apply_async", second_fails)
    with pytest.raises(ConnectionError):
        send_workflow(group(echo.s(message="one"), echo.s(message="two")), "whole-or-none")
    progress = decoded_hash(redis_client.hgetall(KEYS.workflow("whole-or-none") + ":progress"))
    assert [progress[name] for name in progress if name.startswith("state:")] == ["REVOKED"] * 2
    assert redis_client.llen("celery") == 1  # sent, but revoked: no worker runs it

"""What a task's result channel publishes, heard from before the task is sent."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis

from quart_celery.testing import wait_for


def published_states(
    redis_client: redis.Redis, task_id: str, send: Callable[[], object], timeout: float
) -> list[tuple[str, Any]]:
    """Subscribe to `task_id`'s channel, `send` the task, and return each state published, with
    its result, until SUCCESS (subscribed first, so that none is published before anyone
    listens)."""
    states: list[tuple[str, Any]] = []
    # redis-py leaves pubsub() unannotated.
    with redis_client.pubsub(ignore_subscribe_messages=True) as pubsub:  # type: ignore[no-untyped-call, unused-ignore]
        pubsub.subscribe(f"celery-task-meta-{task_id}")
        send()

        def finished() -> bool:
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                meta = json.loads(message["data"])
                states.append((meta["status"], meta["result"]))
            return bool(states) and states[-1][0] == "SUCCESS"

        wait_for(finished, timeout, "the task to succeed")
    return states

"""A revoked task never runs: not when the worker that heard the revoke restarts, nor when a
worker starts only after it. Celery keeps revocations in worker memory; the app keeps them in
the result backend too. A running task is stopped: an `async def` one at once, a sync one at
its next checkpoint, under the prefork and the threads pools; it ends REVOKED, for good."""

from __future__ import annotations

import time

import pytest
import redis
from celery import Celery
from quart.typing import TestClientProtocol as Client

from quart_celery.testing import (
    ProcessWorker,
    WebsocketClosed,
    finished,
    snapshot,
    snapshot_in,
    stop_process_group,
    submit,
    wait_for_async,
)
from tests.worker_tasks import sleeps_then_cleans_up

pytestmark = pytest.mark.integration


async def test_a_revoked_task_stays_revoked_across_a_worker_restart(
    client: Client, celery: Celery, process_worker: ProcessWorker, redis_client: redis.Redis
) -> None:
    first = process_worker("solo")  # one task at a time: the next one waits, prefetched
    busy = (await submit(client, "tests.count", steps=10, delay=0.1))["id"]

    async def running() -> bool:
        return (await snapshot(client, busy))["state"] in ("STARTED", "PROGRESS")

    await wait_for_async(running, 20, "the first task to start")
    # Queued behind it, and taken by the busy worker ahead of time (prefetched).
    revoked = (await submit(client, "tests.echo", message="never"))["id"]
    response = await client.delete(f"/api/tasks/{revoked}")
    assert response.status_code == 202

    stop_process_group(first)  # warm: the running task ends, the prefetched one goes back
    process_worker("solo")
    after = (await submit(client, "tests.echo", message="after"))["id"]
    assert (await finished(client, after))["state"] == "SUCCESS"

    assert (await snapshot(client, revoked))["state"] == "REVOKED"
    assert (await snapshot(client, busy))["state"] == "SUCCESS"
    assert redis_client.llen("celery") == 0

    async def acknowledged() -> bool:  # the second worker took it, and dropped it
        return redis_client.hlen("unacked") == 0

    # Waited for: a worker acknowledges its messages once a turn of its loop, after it stores
    # a task's result (the message of "after" was still unacknowledged once, as its SUCCESS
    # was read).
    await wait_for_async(acknowledged, 10, "every message to be acknowledged")


async def revoke_and_follow(client: Client, task_id: str) -> tuple[list[str], int, float]:
    """Revoke a running task while both websockets follow it: the states `/ws/tasks/<id>` got
    after the answer, its close code, and the seconds from the answer to REVOKED there; the
    many-task socket must get REVOKED too."""
    async with (
        client.websocket(f"/ws/tasks/{task_id}") as socket,
        client.websocket("/ws/tasks") as many,
    ):
        await many.send_json({"subscribe": [task_id]})
        assert (await many.receive_json())["state"] in ("STARTED", "PROGRESS")
        assert (await socket.receive_json())["state"] in ("STARTED", "PROGRESS")
        response = await client.delete(f"/api/tasks/{task_id}")
        answered = time.monotonic()
        assert response.status_code == 202, await response.get_data(as_text=True)
        states: list[str] = []
        stopped = float("inf")
        while True:
            try:
                states.append((await socket.receive_json())["state"])
            except WebsocketClosed as closed:
                code = closed.code
                break
            if states[-1] == "REVOKED":
                stopped = time.monotonic() - answered
        while (await many.receive_json())["state"] != "REVOKED":
            pass
    return states, code, stopped


@pytest.mark.parametrize("pool", ["asyncio", "prefork", "threads"])
async def test_a_running_sync_task_stops_at_its_next_checkpoint(
    client: Client, process_worker: ProcessWorker, redis_client: redis.Redis, pool: str
) -> None:
    process_worker(pool=pool, concurrency=2)
    task_id = (await submit(client, "tests.count", steps=100, delay=0.1))["id"]
    await snapshot_in(client, task_id, "PROGRESS")
    states, code, stopped = await revoke_and_follow(client, task_id)
    assert (states[-1], code) == ("REVOKED", 1000)
    print(f"{pool}: tests.count REVOKED {stopped:.3f} s after the answer")  # for the docs
    assert stopped < 0.5, f"it stopped {stopped:.3f} s after the answer"
    assert (await snapshot(client, task_id))["state"] == "REVOKED"
    # Acknowledged: late acknowledgement does not hand it to anyone again.
    await wait_for_async(lambda: _no_unacked(redis_client), 20, "the message to be acknowledged")
    assert redis_client.llen("celery") == 0


@pytest.mark.parametrize("pool", ["asyncio", "prefork", "threads"])
async def test_a_running_async_task_is_cancelled_at_once_and_cleans_up(
    client: Client, process_worker: ProcessWorker, redis_client: redis.Redis, pool: str
) -> None:
    process_worker(pool=pool, concurrency=2)
    task_id = (await submit(client, "tests.async_echo", message="long", delay=5))["id"]
    await snapshot_in(client, task_id, "STARTED")
    states, code, stopped = await revoke_and_follow(client, task_id)
    assert (states[-1], code) == ("REVOKED", 1000)
    print(f"{pool}: tests.async_echo REVOKED {stopped:.3f} s after the answer")  # for the docs
    assert stopped < 0.2, f"it stopped {stopped:.3f} s after the answer"
    await wait_for_async(lambda: _no_unacked(redis_client), 20, "the message to be acknowledged")

    key = f"cleanup-{pool}"
    sleeper = sleeps_then_cleans_up.delay(key, 30).id
    await snapshot_in(client, sleeper, "STARTED")
    assert (await client.delete(f"/api/tasks/{sleeper}")).status_code == 202
    assert (await snapshot_in(client, sleeper, "REVOKED"))["state"] == "REVOKED"
    assert redis_client.get(key) == b"cleaned up"  # its `finally` ran before it ended


async def _no_unacked(redis_client: redis.Redis) -> bool:
    return redis_client.hlen("unacked") == 0

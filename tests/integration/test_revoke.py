"""A revoked task never runs: not when the worker that heard the revoke restarts, nor when a
worker starts only after it. Celery keeps revocations in worker memory; the app keeps them in
the result backend too."""

from __future__ import annotations

import pytest
import redis
from celery import Celery
from quart.typing import TestClientProtocol as Client

from tests.clients import finished, snapshot, submit
from tests.processes import stop_process_group
from tests.waiting import wait_for_async
from tests.workers import ProcessWorker

pytestmark = pytest.mark.integration


async def test_a_revoked_task_stays_revoked_across_a_worker_restart(
    client: Client, celery: Celery, process_worker: ProcessWorker, redis_client: redis.Redis
) -> None:
    first = process_worker()
    busy = (await submit(client, "tests.count", steps=10, delay=0.1))["id"]

    async def running() -> bool:
        return (await snapshot(client, busy))["state"] in ("STARTED", "PROGRESS")

    await wait_for_async(running, 20, "the first task to start")
    # Queued behind it, and taken by the busy worker ahead of time (prefetched).
    revoked = (await submit(client, "tests.echo", message="never"))["id"]
    response = await client.delete(f"/api/tasks/{revoked}")
    assert response.status_code == 202

    stop_process_group(first)  # warm: the running task ends, the prefetched one goes back
    process_worker()
    after = (await submit(client, "tests.echo", message="after"))["id"]
    assert (await finished(client, after))["state"] == "SUCCESS"

    assert (await snapshot(client, revoked))["state"] == "REVOKED"
    assert (await snapshot(client, busy))["state"] == "SUCCESS"
    assert redis_client.llen("celery") == 0
    assert redis_client.hlen("unacked") == 0  # the second worker took it, and dropped it

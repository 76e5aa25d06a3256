"""Health checks, and the proof that slow Celery calls never hold up the event loop."""

from __future__ import annotations

import asyncio
import time
import uuid
from urllib.parse import urlsplit

import pytest
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery.testing import ThreadWorker
from tests.probe_app import create_app
from tests.proxy import slow_proxy


async def test_healthz_answers(client: Client) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert await response.get_json() == {"status": "ok"}


async def test_readyz_is_503_naming_what_failed_without_a_worker(client: Client) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 503
    body = await response.get_json()
    assert body["error"]["code"] == "not_ready"
    assert "workers: none answered" in body["error"]["message"]
    assert body["checks"]["broker"] == body["checks"]["result_backend"] == "ok"


async def test_readyz_is_200_with_a_worker(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    with thread_worker(celery):
        response = await client.get("/readyz")
    assert response.status_code == 200
    body = await response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["workers"].startswith("ok")


@pytest.mark.settings(READY_TIMEOUT=10.0)
async def test_readyz_answers_once_a_worker_does_not_at_the_end_of_its_timeout(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    # The ping ends at the first answer: it waited out its whole timeout (READY_TIMEOUT, here
    # ten seconds) for more workers before. Half of it is a bound no machine comes near.
    with thread_worker(celery):
        began = time.monotonic()
        response = await client.get("/readyz")
        took = time.monotonic() - began
    assert response.status_code == 200
    assert took < 5, f"/readyz took {took:.2f} s"


async def test_readyz_is_503_when_the_broker_and_backend_are_unreachable() -> None:
    app = create_app({"TESTING": True, "REDIS_URL": "redis://127.0.0.1:1/0"})
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/readyz")
    assert response.status_code == 503
    body = await response.get_json()
    assert "broker: unreachable" in body["error"]["message"]
    assert "result_backend: unreachable" in body["error"]["message"]
    assert body["checks"]["workers"].startswith("not asked")
    assert body["checks"]["redis"].startswith("unreachable")


async def test_slow_look_ups_do_not_hold_up_other_requests(redis_url: str, app: Quart) -> None:
    parts = urlsplit(redis_url)
    async with slow_proxy(parts.hostname or "127.0.0.1", parts.port or 6379, 0.2) as port:
        slow_backend = parts._replace(netloc=f"127.0.0.1:{port}").geturl()
        app = create_app(
            {"TESTING": True, "CELERY_RESULT_BACKEND": slow_backend, "BLOCKING_POOL_SIZE": 2}
        )
        async with app.test_app() as test_app:
            client = test_app.test_client()
            accepted = await client.post(
                "/api/tasks", json={"name": "tests.echo", "kwargs": {"message": "hi"}}
            )
            task_id = (await accepted.get_json())["id"]
            # More look-ups than the pool has threads, each held up by the slow backend...
            look_ups = [asyncio.create_task(client.get(f"/api/tasks/{task_id}")) for _ in range(4)]
            await asyncio.sleep(0)
            # ...while the loop still answers at once, before any of them.
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert not any(look_up.done() for look_up in look_ups)
            responses = await asyncio.gather(*look_ups)
    assert [response.status_code for response in responses] == [200] * 4
    assert uuid.UUID(task_id)

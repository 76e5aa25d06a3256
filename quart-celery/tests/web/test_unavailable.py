"""A broker or backend that cannot be reached: 503 in under 5 seconds, never a hang.

Two kinds of unreachable: a port where nothing listens (refused at once), and a server that
accepts connections but never answers (only a timeout ends the wait).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest
import redis
from quart import Quart

from quart_celery.testing import free_port, wait_for
from tests.probe_app import create_app

#: A task id in Celery's form that nobody publishes (the tests' database is flushed).
NEVER_SENT = "3b241101-e2bb-4255-8caf-4136c566a962"

DEADLINE = 5.0
BLOCKING_TIMEOUT = 1.5


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        yield listener.getsockname()[1]


@pytest.fixture
def silent_broker_app(silent_server: int) -> Quart:
    """The app, with Redis answering but the broker a server that never answers."""
    broker = f"redis://127.0.0.1:{silent_server}/0"
    return create_app({"TESTING": True, "CELERY_BROKER_URL": broker})


@pytest.fixture(params=["refused", "silent"])
def unreachable_app(request: pytest.FixtureRequest, silent_server: int) -> Quart:
    port = free_port() if request.param == "refused" else silent_server
    # A deadline shorter than the default's 4.5 s, to keep the suite short.
    return create_app(
        {
            "TESTING": True,
            "REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "BLOCKING_TIMEOUT": BLOCKING_TIMEOUT,
            "READY_TIMEOUT": BLOCKING_TIMEOUT / 2,
        }
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/tasks", {"name": "tests.echo", "kwargs": {"message": "hi"}}),
        ("GET", f"/api/tasks/{NEVER_SENT}", None),
        ("DELETE", f"/api/tasks/{NEVER_SENT}", None),
        ("GET", "/readyz", None),
        ("POST", "/api/workflows", {"group": [{"name": "tests.square", "kwargs": {"x": 1}}]}),
        ("GET", f"/api/workflows/{NEVER_SENT}", None),
        ("DELETE", f"/api/workflows/{NEVER_SENT}", None),
    ],
)
async def test_unreachable_redis_is_503_within_the_deadline(
    unreachable_app: Quart, method: str, path: str, body: object
) -> None:
    async with unreachable_app.test_app() as test_app:
        started = time.monotonic()
        response = await test_app.test_client().open(path, method=method, json=body)
        elapsed = time.monotonic() - started
        healthz = await test_app.test_client().get("/healthz")
        stopping = time.monotonic()
    # Serving stops soon too: a silent Redis held the result listener's hand-shake for good.
    assert time.monotonic() - stopping < 3.0
    assert response.status_code == 503
    answer = await response.get_json()
    assert answer["error"]["code"] in ("service_unavailable", "not_ready")
    assert elapsed < BLOCKING_TIMEOUT + 1.5
    assert healthz.status_code == 200  # and the server is still up


async def test_a_broker_that_cannot_take_the_task_leaves_no_record(
    redis_client: redis.Redis, silent_broker_app: Quart
) -> None:
    async with silent_broker_app.test_app() as test_app:
        client = test_app.test_client()
        started = time.monotonic()
        response = await client.post(
            "/api/tasks", json={"name": "tests.echo", "kwargs": {"message": "hi"}}
        )
        assert time.monotonic() - started < DEADLINE
        assert response.status_code == 503
        assert "broker" in (await response.get_json())["error"]["message"]
    assert redis_client.keys("probe_app:task:*") == []


async def test_a_workflow_the_broker_cannot_take_never_runs(
    redis_client: redis.Redis, silent_broker_app: Quart
) -> None:
    body = {"group": [{"name": "tests.square", "kwargs": {"x": x}} for x in range(3)]}
    async with silent_broker_app.test_app() as test_app:
        started = time.monotonic()
        response = await test_app.test_client().post("/api/workflows", json=body)
        assert time.monotonic() - started < DEADLINE
        assert response.status_code == 503

        def revoked() -> bool | None:
            keys = [key for key in redis_client.keys("celery-task-meta-*") if b"." not in key]
            metas = [json.loads(raw) for raw in redis_client.mget(keys) if raw] if keys else []
            states = [meta["status"] for meta in metas if "status" in meta]
            return (len(states) == 3 and set(states) == {"REVOKED"}) or None

        # Recorded before its messages went, and revoked once one could not: none of it runs.
        wait_for(revoked, DEADLINE, "every task of the workflow to be revoked")


async def test_a_burst_to_a_silent_broker_is_all_503_and_leaves_no_record(
    redis_client: redis.Redis, silent_broker_app: Quart
) -> None:
    body = {"name": "tests.echo", "kwargs": {"message": "hi"}}
    async with silent_broker_app.test_app() as test_app:
        client = test_app.test_client()
        started = time.monotonic()
        responses = await asyncio.gather(*(client.post("/api/tasks", json=body) for _ in range(20)))
        assert time.monotonic() - started < DEADLINE
        # Whatever was not sent has its record dropped before the answer.
        assert redis_client.keys("probe_app:task:*") == []
    assert [response.status_code for response in responses] == [503] * 20


async def test_a_task_waiting_when_serving_stops_is_answered_503(
    redis_client: redis.Redis, silent_broker_app: Quart
) -> None:
    body = {"name": "tests.echo", "kwargs": {"message": "hi"}}
    async with silent_broker_app.test_app() as test_app:
        waiting = asyncio.create_task(test_app.test_client().post("/api/tasks", json=body))
        submitter = silent_broker_app.extensions["quart_celery.submitter"]
        while submitter.sending is None:  # the batch is on its way to the silent broker
            await asyncio.sleep(0.01)
    response = await asyncio.wait_for(waiting, DEADLINE)
    assert response.status_code == 503

"""Redis goes away while the server serves, a worker runs a task and a client watches it, and
then comes back: nothing is restarted, nothing accepted is lost."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import websockets

from quart_celery.testing import Server, http, post_task, task_in, wait_for
from tests.faults.conftest import RedisServer, Worker, redis_binary
from tests.metrics import sample
from tests.probe_app import create_app

pytestmark = pytest.mark.e2e

FINAL = ("SUCCESS", "FAILURE", "REVOKED")


def submit(server: str, message: str, delay: float = 0.0) -> tuple[int, dict[str, Any]]:
    return post_task(server, "tests.async_echo", message=message, delay=delay)


async def test_redis_going_away_and_coming_back(
    redis_server: RedisServer, start_server: Server, start_worker: Worker
) -> None:
    url = redis_server.url()
    server = start_server(url)
    # Celery's default prefetch: the worker holds tasks it has not started yet, which it cannot
    # put back while Redis is away. kombu 5.7 then crashed the worker ("Unrecoverable error:
    # AttributeError ... 'hostname'"); they come back after the visibility timeout instead.
    worker = start_worker(
        url,
        *["--pool", "prefork", "--concurrency", "1"],
        CELERY_WORKER_PREFETCH_MULTIPLIER="4",
        CELERY_VISIBILITY_TIMEOUT="10",
    )
    # One task runs across the outage, three wait behind it (taken by the worker, or queued).
    status, running = submit(server, "running", 1.0)
    assert status == 202
    queued = []
    for n in range(3):
        status, task = submit(server, f"queued {n}")
        assert status == 202
        queued.append(task)
    socket_url = server.replace("http://", "ws://") + running["websocket"]

    async with websockets.connect(socket_url) as socket:
        states = [json.loads(await socket.recv())["state"]]
        while states[-1] != "STARTED":
            states.append(json.loads(await socket.recv())["state"])

        redis_server.stop()
        began = time.monotonic()
        status, body = submit(server, "refused")
        assert time.monotonic() - began < 5, "a submission hung while Redis was away"
        assert (status, body["error"]["code"]) == (503, "service_unavailable")
        status, body = http("GET", f"{server}/readyz")
        assert status == 503
        assert body["checks"]["broker"] != "ok"
        assert http("GET", f"{server}/healthz") == (200, {"status": "ok"})
        # The task ends while Redis is away: the worker holds its result and keeps trying.
        wait_for(lambda: "Failed operation" in worker.log(), 30, "the worker to retry storing")

        redis_server.start()
        # The socket stayed open, and hears the end of its task once Redis is back.
        async with asyncio.timeout(60):
            async for message in socket:
                states.append(json.loads(message)["state"])
        assert socket.close_code == 1000
    assert states[-1] == "SUCCESS"
    assert "STARTED" in states

    wait_for(lambda: submit(server, "after")[0] == 202, 30, "submissions to work again")
    # A 202 proves only that the server's publisher is back. The worker reconnects on its own
    # schedule (kombu tries again after 2, 4, 6... s), then mingles for a second before it
    # hears broadcasts again: until then /readyz rightly says "workers: none answered".
    wait_for(lambda: http("GET", f"{server}/readyz")[0] == 200, 30, "/readyz to answer 200")
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert sample(metrics, "probe_app_listener_reconnects_total") >= 1
    assert (
        sample(
            metrics,
            "probe_app_tasks_submitted_total",
            task="tests.async_echo",
            outcome="unavailable",
        )
        == 1
    )

    for n, task in enumerate([running, *queued]):
        message = "running" if n == 0 else f"queued {n - 1}"
        result = wait_for(
            partial(task_in, server, task["id"], FINAL), 60, f"the {message} task to end"
        )
        assert (result["state"], result["result"]["message"]) == ("SUCCESS", message)
    assert worker.running(), worker.log()
    assert "Unrecoverable error" not in worker.log()


async def test_a_master_that_refuses_writes_while_no_replica_keeps_up_is_503(
    tmp_path: Path,
) -> None:
    # `min-replicas-to-write 1` with no replica: Redis answers every write NOREPLICAS, which
    # redis-py raises as a plain ResponseError (it was a 500).
    master = RedisServer(redis_binary(), tmp_path, "--min-replicas-to-write", "1")
    master.start()
    try:
        app = create_app({"TESTING": True, "REDIS_URL": master.url()})
        async with app.test_app() as test_app:
            response = await test_app.test_client().post(
                "/api/tasks", json={"name": "tests.echo", "kwargs": {"message": "refused"}}
            )
            answer = await response.get_json()
    finally:
        master.stop()
    assert response.status_code == 503, answer
    assert answer["error"]["code"] == "service_unavailable"
    assert "NOREPLICAS" in answer["error"]["message"]


async def test_redis_going_away_in_the_middle_of_a_stream_loses_no_chunk(
    redis_server: RedisServer, start_server: Server, start_worker: Worker
) -> None:
    url = redis_server.url()
    server = start_server(url)
    start_worker(url)
    status, task = post_task(server, "tests.stream_count", count=400, delay=0.01)
    assert status == 202
    socket_url = server.replace("http://", "ws://") + task["websocket"]
    received: list[dict[str, Any]] = []
    async with websockets.connect(socket_url) as socket:
        while sum("offset" in message for message in received) < 50:
            async with asyncio.timeout(30):
                received.append(json.loads(await socket.recv()))
        # Away for a while in the middle: the task goes on sending, the writer keeps trying.
        redis_server.stop()
        await asyncio.sleep(1.0)  # an outage of a second, not a wait for something
        redis_server.start()
        async with asyncio.timeout(60):
            async for message in socket:
                received.append(json.loads(message))
        code = socket.close_code
    offsets = [message["offset"] for message in received if "offset" in message]
    # Never a silent gap: every chunk in order, once, then the end; or a clear error.
    gaps = [(a, b) for a, b in itertools.pairwise(offsets) if b != a + 1]
    assert offsets == list(range(len(offsets))), (code, gaps, offsets[:3], received[-1])
    if code == 1000:
        assert offsets == list(range(400)), (len(offsets), received[-1])
        assert received[-1]["state"] == "SUCCESS", received[-1]
    else:
        assert "error" in received[-1], received[-1]

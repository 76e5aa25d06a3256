"""What an operator sees of a running system: `GET /metrics` of `hypercorn --workers 2`
against a real worker, every process's samples in every answer; and Flower, unchanged,
showing the workers, the tasks submitted over HTTP, the broker and its queues."""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from quart_celery.testing import (
    ProcessWorker,
    accepted_task,
    answers_http,
    free_port,
    serving,
    start_process,
    stop_process_group,
    wait_for,
)
from tests.metrics import MESSAGES, sample, scrape
from tests.probe_app import ASGI_APP, ROOT, WORKER_APP

pytestmark = pytest.mark.e2e

SUBMITTED = "probe_app_tasks_submitted_total"


@pytest.fixture
def two_workers(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`hypercorn --workers 2 asgi:app`: its URL, and the directory its workers share their
    samples in (named after the server's PID, in the temporary directory); removed after."""
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    served = serving(ASGI_APP, redis_url, tmp_path, arguments=["--workers", "2"], root=ROOT)
    with served as (process, server):
        pattern = os.path.join(tempfile.gettempdir(), f"probe_app-metrics-{process.pid}-*")
        try:
            yield server, wait_for(lambda: glob.glob(pattern), 30, "the metrics directory")[0]
        finally:
            for directory in glob.glob(pattern):
                shutil.rmtree(directory, ignore_errors=True)


def test_the_metrics_directory_goes_with_its_server(redis_url: str, tmp_path: Path) -> None:
    # A directory of a server that is gone (killed before its processes could remove it):
    # the next server removes it when it starts.
    stale = Path(tempfile.gettempdir(), "probe_app-metrics-999999999-1")
    stale.mkdir(exist_ok=True)
    (stale / "counter_999999999.db").touch()
    served = serving(ASGI_APP, redis_url, tmp_path, arguments=["--workers", "2"], root=ROOT)
    with served as (process, server):
        pattern = os.path.join(tempfile.gettempdir(), f"probe_app-metrics-{process.pid}-*")
        (directory,) = wait_for(lambda: glob.glob(pattern), 30, "the metrics directory")
        assert sample(scrape(server), "probe_app_websockets_open") == 0
        assert not stale.exists()
    # Its last process to stop removed it: no directory left behind by a restart.
    assert not Path(directory).exists()


def processes_counted(directory: str) -> set[str]:
    """The PIDs that have counted submissions in `directory`."""
    return {
        found.group(1)
        for name in os.listdir(directory)
        if (found := re.fullmatch(r"counter_(\d+)\.db", name))
    }


async def test_metrics_add_up_every_worker_process(
    two_workers: tuple[str, str], process_worker: ProcessWorker
) -> None:
    server, directory = two_workers
    # Submit, each on a connection of its own, until both processes have taken some.
    accepted: list[dict[str, Any]] = []

    def both_counted() -> bool:
        accepted.append(accepted_task(server, "tests.echo", message=str(len(accepted))))
        return len(processes_counted(directory)) == 2

    wait_for(both_counted, 30, "both worker processes to take a submission")
    # Whichever process answers a scrape, it tells every process's count.
    for _ in range(10):
        assert sample(scrape(server), SUBMITTED, task="tests.echo", outcome="accepted") == len(
            accepted
        )

    socket_base = server.replace("http://", "ws://")
    sockets = [await websockets.connect(f"{socket_base}/ws/tasks") for _ in range(6)]
    try:
        for _ in range(5):
            assert sample(scrape(server), "probe_app_websockets_open") == 6
    finally:
        for socket in sockets:
            await socket.close()
    wait_for(
        lambda: sample(scrape(server), "probe_app_websockets_open") == 0, 30, "the sockets to go"
    )

    # A state pushed to a socket is timed from the worker storing it.
    task = accepted_task(server, "tests.count", steps=2, delay=0.1)
    async with websockets.connect(socket_base + task["websocket"]) as socket:
        assert json.loads(await socket.recv())["state"] == "PENDING"
        process_worker()
        async with asyncio.timeout(60):
            states = [json.loads(message)["state"] async for message in socket]
    assert states[-1] == "SUCCESS"
    text = scrape(server)
    assert sample(text, "probe_app_delivery_seconds_count") == len(states)
    assert 0 < sample(text, "probe_app_delivery_seconds_sum") < len(states)
    # Its messages (compressed: each through its handler), counted as it ended in its own
    # process, whichever answers.
    wait_for(
        lambda: sample(scrape(server), MESSAGES, path="handler") == 1 + len(states),
        30,
        "the socket's messages counted",
    )


FLOWER_LOGIN = "ops:secret"


@pytest.fixture
def flower(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """`celery -A worker flower` with basic auth, as an operator starts it: its URL."""
    port = free_port()
    with (tmp_path / "flower.log").open("wb") as log:
        process: subprocess.Popen[bytes] = start_process(
            [
                *[sys.executable, "-m", "celery", "-A", WORKER_APP, "flower"],
                *[f"--port={port}", "--address=127.0.0.1", f"--basic-auth={FLOWER_LOGIN}"],
            ],
            redis_url,
            log,
            root=ROOT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: process.poll() is None and answers_http(url), 60, "Flower to answer")
            yield url
        finally:
            stop_process_group(process)


def flower_get(url: str) -> tuple[int, str]:
    """GET a page or an API of Flower, logged in: the status and the body."""
    request = urllib.request.Request(url)
    request.add_header("Authorization", f"Basic {base64.b64encode(FLOWER_LOGIN.encode()).decode()}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


def test_flower_shows_the_workers_tasks_broker_and_queues(
    flower: str, server_url: str, process_worker: ProcessWorker
) -> None:
    process_worker()

    def workers_heard() -> list[dict[str, Any]] | None:
        workers: list[dict[str, Any]] = json.loads(flower_get(f"{flower}/workers?json=1")[1])[
            "data"
        ]
        return workers if any(worker["status"] for worker in workers) else None

    # Heard through the worker's own events: they are on without Flower turning them on.
    wait_for(workers_heard, 60, "Flower to hear the worker")
    task = accepted_task(server_url, "tests.count", steps=2, delay=0.1)

    def task_ended() -> dict[str, Any] | None:
        tasks = json.loads(flower_get(f"{flower}/api/tasks")[1])
        found: dict[str, Any] | None = tasks.get(task["id"])
        return found if found is not None and found["state"] == "SUCCESS" else None

    seen = wait_for(task_ended, 60, "Flower to see the task succeed")
    assert seen["name"] == "tests.count"
    # Each step's event: sent by the web server that published it, then the worker's.
    assert all(seen[step] is not None for step in ("sent", "received", "started", "succeeded"))
    status, queues = flower_get(f"{flower}/api/queues/length")
    assert status == 200
    assert {"name": "celery", "messages": 0} in json.loads(queues)["active_queues"]
    status, page = flower_get(f"{flower}/broker")
    assert status == 200
    assert "redis://" in page
    assert "not supported" not in page

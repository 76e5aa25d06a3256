"""What an operator sees of a running system: `GET /metrics` of `hypercorn --workers 2`
against a real worker, every process's samples in every answer."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.metrics import sample
from tests.servers import accepted_task, serving
from tests.waiting import wait_for
from tests.workers import ProcessWorker

pytestmark = pytest.mark.e2e

SUBMITTED = "quart_app_tasks_submitted_total"


def scrape(server: str) -> str:
    """`GET /metrics` on a connection of its own (so any worker process may answer)."""
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


@pytest.fixture
def two_workers(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`hypercorn --workers 2 asgi:app`: its URL, and the directory its workers share their
    samples in (named after the server's PID, in the temporary directory); removed after."""
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    with serving(redis_url, tmp_path, arguments=["--workers", "2"]) as (process, server):
        pattern = os.path.join(tempfile.gettempdir(), f"quart_app-metrics-{process.pid}-*")
        try:
            yield server, wait_for(lambda: glob.glob(pattern), 30, "the metrics directory")[0]
        finally:
            for directory in glob.glob(pattern):
                shutil.rmtree(directory, ignore_errors=True)


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
            assert sample(scrape(server), "quart_app_websockets_open") == 6
    finally:
        for socket in sockets:
            await socket.close()
    wait_for(
        lambda: sample(scrape(server), "quart_app_websockets_open") == 0, 30, "the sockets to go"
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
    assert sample(text, "quart_app_delivery_seconds_count") == len(states)
    assert 0 < sample(text, "quart_app_delivery_seconds_sum") < len(states)

"""The entry points as users run them: `hypercorn asgi:app`, `celery -A worker worker` and
`celery -A worker beat`. (The bridge's own tests run its guarantees across several servers on
an app of their own: quart-celery/tests/test_entry_points.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from quart_celery.testing import (
    START_TIMEOUT,
    ProcessWorker,
    Server,
    http,
    wait_for,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent

CELERY = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool", "solo"]
HYPERCORN = [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", "127.0.0.1:0"]


def test_hypercorn_serves_the_app(server_url: str) -> None:
    with urllib.request.urlopen(f"{server_url}/", timeout=5) as response:
        assert response.status == 200
        assert "<form" in response.read().decode()


@pytest.mark.parametrize("command", [CELERY, HYPERCORN], ids=["celery", "hypercorn"])
@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (
            "CELERY_BROKER_URL",
            "redis://:secret@localhost:abc/0",
            "has a port that is not from 0 to 65535",
        ),
        ("REDIS_URL", "localhost", "is not a URL of a known kind"),
        ("CELERY_RESULT_EXPIRES", "one day", "expected a number from 0 up, got 'one day'"),
    ],
)
def test_a_wrong_setting_stops_start_up_with_one_line(
    command: list[str], name: str, value: str, problem: str
) -> None:
    completed = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"configuration error: {name}: ")
    assert problem in lines[0]
    assert "secret" not in lines[0]
    if command is CELERY:
        # hypercorn 0.18 exits 0 even when its worker process fails: it drops the exit code.
        assert completed.returncode == 1


def test_the_api_over_real_http_with_a_real_worker(
    server_url: str, process_worker: ProcessWorker
) -> None:
    process_worker()
    api = f"{server_url}/api/tasks"
    status, accepted = http(
        "POST", api, {"name": "progress_task", "kwargs": {"steps": 3, "delay": 0.01}}
    )
    assert status == 202
    task_url = f"{server_url}{accepted['url']}"

    def done() -> dict[str, Any] | None:
        status, task = http("GET", task_url)
        assert status == 200
        return task if task["state"] == "SUCCESS" else None

    assert wait_for(done, 30, "the task to succeed")["result"] == {"steps": 3}
    assert http("DELETE", task_url)[0] == 409
    assert http("GET", f"{api}/{uuid.uuid4()}")[0] == 404
    assert http("POST", api, {"name": "progress_task", "kwargs": {"steps": 0}})[0] == 422
    assert http("GET", f"{server_url}/readyz")[0] == 200
    assert http("GET", f"{server_url}/healthz") == (200, {"status": "ok"})


async def follow(url: str, start_worker: Callable[[], object]) -> tuple[list[Any], int | None]:
    """Every message a real websocket client gets from `url`, and the close code.

    The worker starts once the first message (the snapshot) is in, so that every change
    after it is pushed, not already stored.
    """
    async with websockets.connect(url) as socket:
        received = [json.loads(await socket.recv())]
        start_worker()
        async for message in socket:
            received.append(json.loads(message))
    return received, socket.close_code


async def test_a_real_websocket_client_gets_every_state_in_order(
    server_url: str, process_worker: ProcessWorker
) -> None:
    status, accepted = http(
        "POST",
        f"{server_url}/api/tasks",
        {"name": "progress_task", "kwargs": {"steps": 3, "delay": 0.2}},
    )
    assert status == 202
    socket_url = server_url.replace("http://", "ws://") + accepted["websocket"]
    received, code = await asyncio.wait_for(follow(socket_url, process_worker), 60)
    assert code == 1000
    states = [message["state"] for message in received]
    assert states == ["PENDING", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert [message["progress"] for message in received[2:5]] == [
        {"current": n, "total": 3} for n in (1, 2, 3)
    ]


def test_a_schedule_in_celerys_variable_stops_beat_with_one_line() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "beat"],
        cwd=ROOT,
        env={**os.environ, "CELERY_BEAT_SCHEDULE": '{"tick": {"task": "t", "schedule": 1}}'},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("configuration error: CELERY_BEAT_SCHEDULE: ")
    assert "BEAT_SCHEDULE instead" in lines[0]
    assert completed.returncode == 1
    assert not list(ROOT.glob("{*")), "beat took the schedule for its state file's name"


def test_only_the_web_server_says_the_api_is_open(
    start_server: Server, redis_url: str, tmp_path: Path
) -> None:
    start_server()
    (log,) = tmp_path.glob("hypercorn-*.log")
    wait_for(lambda: "API_TOKEN is not set" in log.read_text(), START_TIMEOUT, "the warning")
    assert log.read_text().count("API_TOKEN is not set") == 1  # once, by its one process
    report = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "report"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert report.returncode == 0, report.stderr
    assert "API_TOKEN" not in report.stdout + report.stderr

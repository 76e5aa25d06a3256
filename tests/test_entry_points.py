"""The entry points as users run them: `hypercorn asgi:app`, `celery -A worker worker` and
`celery -A worker beat`: they start, answer, and stop on a wrong setting with one line. (The
bridge's own tests run the rest, websockets and several servers, on an app of their own:
quart-celery/tests/test_entry_points.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from quart_celery.testing import (
    START_TIMEOUT,
    ProcessWorker,
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
def test_a_wrong_setting_stops_start_up_with_one_line(command: list[str]) -> None:
    # Each kind of wrong setting is the bridge's to name (quart-celery/tests): here, that the
    # entry points turn it into one line, the password left out.
    completed = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "CELERY_BROKER_URL": "redis://:secret@localhost:abc/0"},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    assert lines == [
        "configuration error: CELERY_BROKER_URL: 'redis://:**@localhost:abc/0' has a port "
        "that is not from 0 to 65535"
    ]
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

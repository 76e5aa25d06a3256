"""The entry points of an app built with the bridge, as users run them: `hypercorn`, `celery
worker` and `celery beat`, on the probe app's (`tests.probe_asgi`, `tests.probe_worker`)."""

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import websockets

from quart_celery.testing import (
    START_TIMEOUT,
    ProcessWorker,
    Server,
    http,
    start_process,
    stop_process_group,
    wait_for,
)
from tests.connections import connections
from tests.probe_app import ASGI_APP, KEYS, ROOT, WORKER_APP

pytestmark = pytest.mark.e2e


CELERY = [sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "--pool", "solo"]
HYPERCORN = [sys.executable, "-m", "hypercorn", ASGI_APP, "--bind", "127.0.0.1:0"]


def test_hypercorn_serves_the_app(server_url: str) -> None:
    with urllib.request.urlopen(f"{server_url}/", timeout=5) as response:
        assert response.status == 200
        assert response.read().decode() == "the probe app"


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
        "POST", api, {"name": "tests.count", "kwargs": {"steps": 3, "delay": 0.01}}
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
    assert http("POST", api, {"name": "tests.count", "kwargs": {"steps": 0}})[0] == 422
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
        {"name": "tests.count", "kwargs": {"steps": 3, "delay": 0.2}},
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


async def test_a_workflow_over_real_http_and_one_real_websocket(
    server_url: str, process_worker: ProcessWorker
) -> None:
    header = [{"name": "tests.square", "kwargs": {"x": x}} for x in (1, 2, 3)]
    chord = {"chord": {"header": header, "body": {"name": "tests.total"}}}
    status, accepted = http("POST", f"{server_url}/api/workflows", chord)
    assert status == 202
    socket_url = server_url.replace("http://", "ws://") + accepted["websocket"]
    received, code = await asyncio.wait_for(follow(socket_url, process_worker), 60)
    assert code == 1000
    assert (received[0]["state"], received[0]["total"]) == ("PENDING", 4)
    final = received[-1]
    assert (final["state"], final["done"], final["result"]) == ("SUCCESS", 4, 14)
    # A member update for each change: STARTED and SUCCESS of each of the four.
    assert len(received) == 1 + 2 * 4
    status, after = http("GET", f"{server_url}{accepted['url']}")
    assert (status, after["result"]) == (200, 14)
    assert http("DELETE", f"{server_url}{accepted['url']}")[0] == 409


async def test_a_stream_over_a_real_websocket_and_real_server_sent_events(
    server_url: str, process_worker: ProcessWorker
) -> None:
    status, accepted = http(
        "POST", f"{server_url}/api/tasks", {"name": "tests.stream_count", "kwargs": {"count": 200}}
    )
    assert status == 202
    socket_url = server_url.replace("http://", "ws://") + accepted["websocket"]
    received, code = await asyncio.wait_for(follow(socket_url, process_worker), 60)
    assert code == 1000
    assert [message["chunk"] for message in received if "offset" in message] == list(range(200))
    assert received[-1]["state"] == "SUCCESS"
    # The same chunks in batches, from offset 150, on a socket that comes after the end.
    batched_url = socket_url + "?chunks=batched&from=150"
    received, code = await asyncio.wait_for(follow(batched_url, lambda: None), 60)
    assert code == 1000
    batches = [(batch["offset"], batch["chunks"]) for batch in received if "offset" in batch]
    assert batches == [(150, list(range(150, 200)))]
    # The same chunks as server-sent events, read as they arrive, and resumed after offset 189.
    stream_url = f"{server_url}{accepted['url']}/stream"
    with urllib.request.urlopen(stream_url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        body = response.read().decode()
    assert body.count("\nid: ") + body.startswith("id: ") == 200
    request = urllib.request.Request(stream_url, headers={"Last-Event-ID": "189"})
    with urllib.request.urlopen(request, timeout=30) as response:
        events = [block for block in response.read().decode().split("\n\n") if block]
    assert [event.splitlines()[0] for event in events[:-1]] == [f"id: {n}" for n in range(190, 200)]
    assert events[-1].startswith("event: end\ndata: ")
    assert json.loads(events[-1].split("data: ", 1)[1])["result"] == 200


async def test_two_servers_share_one_redis(
    start_server: Server, process_worker: ProcessWorker
) -> None:
    first, second = start_server(), start_server()
    status, accepted = http(
        "POST", f"{first}/api/tasks", {"name": "tests.async_echo", "kwargs": {"message": "across"}}
    )
    assert status == 202
    # Submitted through the first, followed through the second.
    socket_url = second.replace("http://", "ws://") + accepted["websocket"]
    received, code = await asyncio.wait_for(follow(socket_url, process_worker), 60)
    assert code == 1000
    assert received[-1]["result"] == {"message": "across", "app": "probe_app"}
    assert http("GET", f"{second}/api/tasks/{accepted['id']}")[1]["state"] == "SUCCESS"


def test_fifty_repeats_at_once_on_two_servers_send_one_message(
    start_server: Server, redis_client: redis.Redis
) -> None:
    servers = [start_server(), start_server()]
    body = {"name": "tests.echo", "kwargs": {"message": "once"}}

    def submit(n: int) -> tuple[int, dict[str, Any]]:
        key = {"Idempotency-Key": "retried-fifty-times"}
        return http("POST", f"{servers[n % 2]}/api/tasks", body, key)

    with ThreadPoolExecutor(50) as clients:
        answers = list(clients.map(submit, range(50)))
    # One claimed the key and sent; the rest saw it sent (202, replayed) or being sent (409).
    assert {status for status, _ in answers} <= {202, 409}
    accepted = [answer for status, answer in answers if status == 202]
    assert accepted
    assert len({answer["id"] for answer in accepted}) == 1
    refused = [answer for status, answer in answers if status == 409]
    assert all(answer["error"]["code"] == "idempotency_key_in_use" for answer in refused)
    assert redis_client.llen("celery") == 1


def test_two_servers_share_one_rate_limit(start_server: Server) -> None:
    servers = [start_server(API_RATE_LIMIT="4/minute") for _ in range(2)]
    statuses = []
    for n in range(8):
        server = servers[n % 2]
        assert http("GET", f"{server}/healthz")[0] == 200  # never counts
        status, answer = http(
            "POST", f"{server}/api/tasks", {"name": "tests.echo", "kwargs": {"message": str(n)}}
        )
        statuses.append(status)
        if status == 429:
            assert answer["error"]["code"] == "rate_limited"
    # One count for the client, whichever process it reached.
    assert statuses == [202] * 4 + [429] * 4


async def test_an_empty_binary_message_gets_an_error_and_the_socket_stays_open(
    server_url: str,
) -> None:
    # Quart hands an empty binary message on as None: the socket must not fail on it.
    async with websockets.connect(server_url.replace("http://", "ws://") + "/ws/tasks") as socket:
        await socket.send(b"")
        assert json.loads(await socket.recv())["error"]["code"] == "invalid_message"
        await socket.send(json.dumps({"subscribe": ["nope"]}))
        assert json.loads(await socket.recv())["error"]["code"] == "not_found"


async def test_a_task_that_beat_publishes_is_followed_like_any(
    server_url: str,
    process_worker: ProcessWorker,
    redis_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    schedule = {"tick": {"task": "tests.echo", "schedule": 0.5, "args": ["from beat"]}}
    command = [sys.executable, "-m", "celery", "-A", WORKER_APP, "beat", "--loglevel", "INFO"]
    log_path = tmp_path / "beat.log"
    checkout = checkout_state()
    with log_path.open("wb") as log:
        # Its state file where the settings put it by default: outside the checkout.
        schedule_setting = {"BEAT_SCHEDULE": json.dumps(schedule)}
        beat = start_process(command, redis_url, log, schedule_setting, root=ROOT)
        try:

            def published() -> list[str]:
                assert beat.poll() is None, log_path.read_text()
                keys = redis_client.keys(KEYS.task("*"))
                names = [key.decode() if isinstance(key, bytes) else key for key in keys]
                return sorted(name.removeprefix(KEYS.task("")) for name in names)

            task_id = wait_for(published, 60, "beat to publish a task")[0]
        finally:
            stop_process_group(beat)
    assert checkout_state() == checkout, "beat wrote into the checkout"
    status, task = http("GET", f"{server_url}/api/tasks/{task_id}")
    assert (status, task["name"]) == (200, "tests.echo")
    socket_url = server_url.replace("http://", "ws://") + f"/ws/tasks/{task_id}"
    received, code = await asyncio.wait_for(follow(socket_url, process_worker), 60)
    assert code == 1000
    assert (received[-1]["state"], received[-1]["result"]) == ("SUCCESS", "from beat")


def checkout_state() -> list[str]:
    """Every file of the checkout that git does not track, ignored ones too (git's view, or
    a walk of the tree where it is not a git checkout), but the caches."""
    listing = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listing.returncode == 0:
        lines = listing.stdout.splitlines()
    else:
        lines = [str(path) for path in ROOT.rglob("*") if ".venv" not in path.parts]
    caches = ("__pycache__", ".venv", ".hypothesis")  # Python's, pip's and the tests' own
    return sorted(line for line in lines if not any(cache in line for cache in caches))


def test_a_schedule_in_celerys_variable_stops_beat_with_one_line() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", WORKER_APP, "beat"],
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


async def test_a_server_hears_only_the_tasks_its_sockets_watch(
    start_server: Server, redis_client: redis.Redis
) -> None:
    first, second = start_server(), start_server()
    status, accepted = http(
        "POST", f"{first}/api/tasks", {"name": "tests.echo", "kwargs": {"message": "watched"}}
    )
    assert status == 202
    channel = f"celery-task-meta-{accepted['id']}"

    def subscribers() -> int:
        ((_, count),) = redis_client.pubsub_numsub(channel)
        return int(count)

    def listeners() -> list[dict[str, str]]:
        return [c for c in connections(redis_client) if c["name"].startswith("probe_app-results-")]

    # One connection for each server, made as the server starts, not before it answers HTTP.
    wait_for(lambda: len(listeners()) == 2, 10, "each server's result listener to connect")
    assert [int(c["psub"]) for c in listeners()] == [0, 0]  # no pattern subscription
    assert subscribers() == 0
    async with websockets.connect(first.replace("http://", "ws://") + accepted["websocket"]) as ws:
        assert json.loads(await ws.recv())["state"] == "PENDING"
        assert subscribers() == 1  # the first server's; the second hears nothing of it
    wait_for(lambda: subscribers() == 0, 10, "the first server to unsubscribe")
    assert http("GET", f"{second}/healthz")[0] == 200


def test_only_the_web_server_says_the_api_is_open(
    start_server: Server, redis_url: str, tmp_path: Path
) -> None:
    start_server()
    (log,) = tmp_path.glob("hypercorn-*.log")
    wait_for(lambda: "API_TOKEN is not set" in log.read_text(), START_TIMEOUT, "the warning")
    assert log.read_text().count("API_TOKEN is not set") == 1  # once, by its one process
    report = subprocess.run(
        [sys.executable, "-m", "celery", "-A", WORKER_APP, "report"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert report.returncode == 0, report.stderr
    assert "API_TOKEN" not in report.stdout + report.stderr

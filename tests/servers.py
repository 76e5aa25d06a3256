"""Fixtures that start `hypercorn asgi:app` as users run it, on free ports."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.processes import answers_http, free_port, start_process, stop_process_group
from tests.waiting import wait_for

START_TIMEOUT = 30.0

Server = Callable[..., str]


@contextmanager
def serving(
    redis_url: str,
    log_dir: Path,
    settings: Mapping[str, str] | None = None,
    arguments: Sequence[str] = (),
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`hypercorn asgi:app` on a free port (with more of hypercorn's `arguments`), logging to
    `log_dir/hypercorn-<port>.log`: the process and its URL, once it answers. Stopped, with
    what it started, when the block ends."""
    port = free_port()
    log_path = log_dir / f"hypercorn-{port}.log"
    with log_path.open("wb") as log:
        process = start_process(
            [
                *[sys.executable, "-m", "hypercorn", "asgi:app"],
                *["--bind", f"127.0.0.1:{port}", *arguments],
            ],
            redis_url,
            log,
            settings,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def answers() -> bool:
                assert process.poll() is None, log_path.read_text()
                return answers_http(url)

            wait_for(answers, START_TIMEOUT, "hypercorn to answer")
            yield process, url
        finally:
            stop_process_group(process)


@pytest.fixture
def start_server(redis_url: str, tmp_path: Path) -> Iterator[Server]:
    """Start `hypercorn asgi:app` on a free port: its URL, once it answers. Stopped after.

    `start(redis_url, **settings)` serves against another Redis, with more settings;
    `start(arguments=["--workers", "2"])` passes hypercorn more arguments.
    """
    with ExitStack() as cleanup:

        def start(url: str | None = None, arguments: Sequence[str] = (), **settings: str) -> str:
            served = serving(url or redis_url, tmp_path, settings, arguments)
            _, server = cleanup.enter_context(served)
            return server

        yield start


@pytest.fixture
def server_url(start_server: Server) -> str:
    """One `hypercorn asgi:app`, answering."""
    return start_server()


def http(
    method: str, url: str, body: object = None, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request over real HTTP (with more `headers`); the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_task(server: str, name: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Submit a task through `POST /api/tasks`; the status and the answer."""
    return http("POST", f"{server}/api/tasks", {"name": name, "kwargs": kwargs})


def accepted_task(server: str, name: str, **kwargs: Any) -> dict[str, Any]:
    """Submit a task that must be accepted (202); the answer."""
    status, accepted = post_task(server, name, **kwargs)
    assert status == 202, accepted
    return accepted


def task_in(server: str, task_id: str, states: tuple[str, ...]) -> dict[str, Any] | None:
    """The task's snapshot if it is in one of `states`, else None (for `wait_for`)."""
    task = http("GET", f"{server}/api/tasks/{task_id}")[1]
    return task if task["state"] in states else None

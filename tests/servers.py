"""Fixtures that start `hypercorn asgi:app` as users run it, on free ports."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.processes import answers_http, free_port, start_process, stop_process_group
from tests.waiting import wait_for

START_TIMEOUT = 30.0

Server = Callable[..., str]


@pytest.fixture
def start_server(redis_url: str, tmp_path: Path) -> Iterator[Server]:
    """Start `hypercorn asgi:app` on a free port: its URL, once it answers. Stopped after.

    `start(redis_url, **settings)` serves against another Redis, with more settings.
    """
    with ExitStack() as cleanup:

        def start(url: str | None = None, **settings: str) -> str:
            port = free_port()
            log_path = tmp_path / f"hypercorn-{port}.log"
            log = cleanup.enter_context(log_path.open("wb"))
            process = start_process(
                [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
                url or redis_url,
                log,
                settings,
            )
            cleanup.callback(stop_process_group, process)
            url = f"http://127.0.0.1:{port}"

            def answers() -> bool:
                assert process.poll() is None, log_path.read_text()
                return answers_http(url)

            wait_for(answers, START_TIMEOUT, "hypercorn to answer")
            return url

        yield start


@pytest.fixture
def server_url(start_server: Server) -> str:
    """One `hypercorn asgi:app`, answering."""
    return start_server()


def http(method: str, url: str, body: object = None) -> tuple[int, dict[str, Any]]:
    """One request over real HTTP; the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())

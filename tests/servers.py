"""Fixtures that start `hypercorn asgi:app` as users run it, on free ports."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.processes import answers_http, free_port, start_process, stop_process_group
from tests.waiting import wait_for

START_TIMEOUT = 30.0

Server = Callable[[], str]


@pytest.fixture
def start_server(redis_url: str, tmp_path: Path) -> Iterator[Server]:
    """Start `hypercorn asgi:app` on a free port: its URL, once it answers. Stopped after."""
    with ExitStack() as cleanup:

        def start() -> str:
            port = free_port()
            log_path = tmp_path / f"hypercorn-{port}.log"
            log = cleanup.enter_context(log_path.open("wb"))
            process = start_process(
                [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
                redis_url,
                log,
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

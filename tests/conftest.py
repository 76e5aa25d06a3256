"""Fixtures for the whole suite: an environment of the tests' own, the app, a clean Redis.

The tests use Redis databases of their own (`TEST_REDIS_DB`, default 13, and the one after it;
pytest-xdist's second process the two below) on the server at `REDIS_URL`, and flush only
those.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from quart import Quart
from quart.testing import QuartClient
from quart.typing import TestClientProtocol as Client

from factories.application import create_application
from factories.configuration import DEFAULT_REDIS_URL
from tests.clients import ClosingWebsocket

pytest_plugins = ["tests.workers", "tests.servers"]
PROBES = "tests.worker_tasks"


def _worker_index() -> int:
    """Which of pytest-xdist's processes this is (0 without xdist): each has two databases."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def _database_url(url: str, database: int) -> str:
    """`url` with its database number replaced by `database`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session", autouse=True)
def redis_url() -> Iterator[str]:
    """The tests' own Redis database, made the environment's `REDIS_URL` for the session.

    Celery reads `CELERY_BROKER_URL` and `CELERY_RESULT_BACKEND` from the environment ahead of
    its settings, so a developer's own are kept out of the tests, and out of the processes the
    tests start. Every app the tests build, in this process or in the servers and workers they
    start, imports the probe tasks (`CELERY_IMPORTS`).
    """
    database = int(os.environ.get("TEST_REDIS_DB", "13")) - 2 * _worker_index()
    url = _database_url(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), database)
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith(("CELERY_", "REDIS_SENTINEL")):  # the tests' Redis is REDIS_URL's
                patch.delenv(name)
        patch.setenv("REDIS_URL", url)
        patch.setenv("CELERY_IMPORTS", json.dumps([PROBES]))
        yield url


@pytest.fixture(scope="session", autouse=True)
def websockets_that_tell_their_close() -> Iterator[None]:
    """Every test client's websockets raise `tests.clients.WebsocketClosed` with the code the
    server closed them with, whichever Quart runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(QuartClient, "websocket_connection_class", ClosingWebsocket)
        yield


@pytest.fixture(scope="session")
def other_redis_url(redis_url: str) -> str:
    """A second database of the tests' own, for tests that need two."""
    return _database_url(redis_url, int(urlsplit(redis_url).path.strip("/")) + 1)


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Quart:
    """The app as `asgi.py` builds it, in testing mode, with the settings of the test's
    `@pytest.mark.settings(NAME=value)` if it has one; the placeholder Celery is bound to it."""
    marked = request.node.get_closest_marker("settings")
    return create_application({"TESTING": True, **(marked.kwargs if marked else {})})


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the tests' database, flushed before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
async def client(app: Quart, redis_client: redis.Redis) -> AsyncIterator[Client]:
    """A test client of the app while it serves (its thread pool and Redis client open)."""
    async with app.test_app() as test_app:
        yield test_app.test_client()

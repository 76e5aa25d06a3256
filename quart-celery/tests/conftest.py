"""Fixtures for the bridge's own tests: the probe app, built as a user's app is, under the
bridge's pytest plugin (`quart_celery.testing`), which gives every test a Redis database of the
tests' own, workers and servers."""

from __future__ import annotations

import pytest
from quart import Quart

from tests.probe_app import ASGI_APP, WORKER_APP, create_app

pytest_plugins = ["quart_celery.testing"]


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Quart:
    """The probe app, in testing mode, with the settings of the test's
    `@pytest.mark.settings(NAME=value)` if it has one; its Celery instance is bound to it."""
    marked = request.node.get_closest_marker("settings")
    return create_app({"TESTING": True, **(marked.kwargs if marked else {})})


@pytest.fixture(scope="session")
def worker_app() -> str:
    """The probe app's worker, for `celery -A`."""
    return WORKER_APP


@pytest.fixture(scope="session")
def asgi_app() -> str:
    """The probe app, for `hypercorn`."""
    return ASGI_APP

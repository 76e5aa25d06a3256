"""Fixtures for the app's tests: the bridge's pytest plugin, with the app built by its factory.

The plugin (`quart_celery.testing`) gives every test a Redis database of the tests' own, real
workers (`thread_worker`, `process_worker`) and real servers (`start_server`, `server_url`),
which run the entry points `worker.py` and `asgi.py`; see docs/testing.md.
"""

from __future__ import annotations

import pytest
from quart import Quart

from factories.application import create_application

pytest_plugins = ["quart_celery.testing"]


@pytest.fixture
def app(request: pytest.FixtureRequest) -> Quart:
    """The app as `asgi.py` builds it, in testing mode, with the settings of the test's
    `@pytest.mark.settings(NAME=value)` if it has one; the placeholder Celery is bound to it."""
    marked = request.node.get_closest_marker("settings")
    return create_application({"TESTING": True, **(marked.kwargs if marked else {})})

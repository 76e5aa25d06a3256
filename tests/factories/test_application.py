"""The application factory: settings in order, extensions configured, routes attached."""

from __future__ import annotations

import pytest
from quart import Quart

from factories.application import create_application
from quart_app import extensions


def test_builds_the_quart_app(app: Quart) -> None:
    assert isinstance(app, Quart)
    assert app.name == "quart_app"
    assert app.config["TESTING"] is True


def test_the_environment_overrides_defaults_and_config_overrides_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/1")
    monkeypatch.setenv("CELERY_TASK_DEFAULT_QUEUE", "from-env")
    app = create_application({"CELERY_TASK_DEFAULT_QUEUE": "from-config"})
    assert app.config["REDIS_URL"] == "redis://from-env:6379/1"
    assert app.config["CELERY_RESULT_EXPIRES"] == 24 * 60 * 60
    assert extensions.celery.conf.broker_url == "redis://from-env:6379/1"
    assert extensions.celery.conf.task_default_queue == "from-config"


def test_configures_the_placeholder_celery(app: Quart) -> None:
    assert app.extensions["celery"] is extensions.celery
    assert extensions.celery.Task.web_app is app


async def test_the_bridge_and_the_pages_are_attached(app: Quart) -> None:
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert {"api.submit_task", "api.get_task", "health.healthz", "pages.index"} <= endpoints
    assert {"websockets.follow_task", "websockets.follow_tasks"} <= endpoints

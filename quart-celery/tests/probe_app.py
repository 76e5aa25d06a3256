"""The app the bridge's tests run against, built as a user's app is built with the bridge: a
placeholder Celery instance and the bridge created bare, a Celery factory, an application
factory. Its tasks are the probes (`tests.worker_tasks`); the servers and workers the tests
start run it through `tests.probe_asgi` and `tests.probe_worker`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from celery import Celery
from flask import Flask
from quart import Blueprint, Quart, request

from quart_celery import APIError, QuartCelery, limits_submissions, queue
from quart_celery._broker.keys import Keys

NAME = "probe_app"
celery = Celery(NAME, include=["tests.worker_tasks"])
bridge = QuartCelery(celery)
#: Where the bridge keeps the probe app's records, marks and claims in Redis.
KEYS = Keys(NAME)
#: The probe app's entry points, for `hypercorn` and `celery -A`, run from `ROOT`.
ASGI_APP = "tests.probe_asgi:app"
WORKER_APP = "tests.probe_worker"
ROOT = Path(__file__).resolve().parent.parent

#: The app's own settings, as a user's factory sets them (`SECRET_KEY`, Quart's own
#: `MAX_CONTENT_LENGTH`); the bridge reads the rest itself.
DEFAULTS: dict[str, Any] = {"SECRET_KEY": "probe secret", "MAX_CONTENT_LENGTH": 64 * 1024}


#: Routes of the app's own, as a user adds them beside the bridge's.
pages = Blueprint("probe_pages", __name__)


@pages.get("/")
async def index() -> str:
    """A page of the app's own: the bridge's tokens do not guard it."""
    return "the probe app"


@pages.post("/echo")
@limits_submissions
async def submit_echo() -> tuple[dict[str, str], int]:
    """A route of the app's own that submits `tests.echo` with the posted `message`: it counts
    against `API_RATE_LIMIT` (refused or not), as the JSON API's submissions do."""
    message = (await request.get_json(silent=True) or {}).get("message")
    if not isinstance(message, str):
        raise APIError(400, "no_message", 'Post {"message": "..."}.')
    task_id = await queue.submit(celery.signature("tests.echo", kwargs={"message": message}))
    return {"id": task_id}, 202


def configure_celery(app: Quart | Flask) -> Celery:
    """The Celery factory: configure the placeholder from `app`'s config; return it."""
    celery.config_from_object(bridge.celery_settings(app), force=True)
    bridge.init_celery(app)
    return celery


def create_app(config: Mapping[str, Any] | None = None) -> Quart:
    """The application factory: defaults, then `config`, then Celery and the bridge."""
    app = Quart(NAME)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(config or {})
    configure_celery(app)
    bridge.init_app(app)
    app.register_blueprint(pages)
    return app

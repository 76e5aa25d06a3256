"""The application factory."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from quart import Quart
from quart_schema import QuartSchema

from factories.celery import configure_celery
from factories.configuration import get_config
from quart_app import (
    access,
    blocking,
    garbage,
    result_listener,
    shutdown,
    submissions,
    task_records,
)
from quart_app.blueprints import api, health, pages, websockets
from quart_app.errors import register_error_handlers


def create_application(config: Mapping[str, Any] | None = None) -> Quart:
    """Build the app: defaults, then the environment, then `config`, then extensions and routes."""
    app = Quart("quart_app")
    app.config.from_mapping(get_config())
    if config is not None:
        app.config.from_mapping(config)
    ensure_secret_key(app)
    register_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    return app


def ensure_secret_key(app: Quart) -> None:
    """Sign sessions with `SECRET_KEY`; without one, with a random key and a warning.

    A random key works for one process until it restarts; with several processes behind one
    address each would refuse the others' CSRF tokens, so production sets `SECRET_KEY`.
    """
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = secrets.token_hex(32)
        app.logger.warning("SECRET_KEY is not set: using a random key for this process only")


def register_extensions(app: Quart) -> None:
    """Configure the placeholder extensions, and what opens when serving starts."""
    configure_celery(app)
    access.init_app(app)
    blocking.init_app(app)
    task_records.init_app(app)
    submissions.init_app(app)
    result_listener.init_app(app)
    shutdown.init_app(app)
    QuartSchema(
        app,
        info={"title": "quart_app", "version": "0.1.0"},
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
    )
    garbage.init_app(app)  # last: it freezes what the others open


def register_blueprints(app: Quart) -> None:
    """Attach the controllers."""
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(websockets.blueprint)

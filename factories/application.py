"""The application factory."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from quart import Quart

from factories.celery import configure_celery
from factories.configuration import get_config
from quart_app.blueprints import pages
from quart_app.bridge import (
    access,
    admission,
    connection,
    garbage,
    idempotency,
    lookups,
    metrics,
    openapi,
    pool,
    rate_limits,
    records,
    result_listener,
    shutdown,
    submitter,
    tracing,
)
from quart_app.bridge.blueprints import api, health, websockets
from quart_app.bridge.errors import register_error_handlers
from quart_app.bridge.exposure import exposed_tasks


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
    configure_celery(app)  # and import the task modules
    # The bridge: the metrics, who gets in, how many sockets are set up at once and what each
    # costs, the thread pool and Redis client, the look-ups, the submitter with its idempotency
    # keys and rate limits, the result listener, hearing the server stop, and the OpenAPI
    # document.
    metrics.init_app(app)
    access.init_app(app)
    admission.init_app(app)
    connection.init_app(app)
    pool.init_app(app)
    records.init_app(app)
    lookups.init_app(app)
    submitter.init_app(app)
    idempotency.init_app(app)
    rate_limits.init_app(app)
    result_listener.init_app(app)
    shutdown.init_app(app)
    openapi.init_app(app)
    tracing.init_app(app)  # where OTEL_* asks for it
    # Your extensions here.
    garbage.init_app(app)  # last: it freezes what the others open


def register_blueprints(app: Quart) -> None:
    """Attach the controllers: the bridge's JSON API, websockets, health checks and metrics;
    your pages."""
    app.register_blueprint(api.create_blueprint(exposed_tasks()))
    app.register_blueprint(websockets.blueprint)
    app.register_blueprint(health.blueprint)
    app.register_blueprint(pages.blueprint)

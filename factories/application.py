"""The application factory."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from quart import Quart

from factories.celery import configure_celery
from factories.configuration import get_config
from quart_app.blueprints import pages
from quart_app.extensions import bridge


def create_application(config: Mapping[str, Any] | None = None) -> Quart:
    """Build the app: defaults, then the environment, then `config`, then extensions and routes."""
    app = Quart("quart_app")
    app.config.from_mapping(get_config())
    if config is not None:
        app.config.from_mapping(config)
    ensure_secret_key(app)
    register_extensions(app)
    register_blueprints(app)
    return app


def ensure_secret_key(app: Quart) -> None:
    """Sign sessions with `SECRET_KEY`; without one, with a random key, and a warning when the
    app starts serving.

    A random key works for one process until it restarts; with several processes behind one
    address each would refuse the others' CSRF tokens, so production sets `SECRET_KEY`. Only
    a server signs anything: the Celery commands, which build the app too, stay quiet.
    """
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = secrets.token_hex(32)

        @app.before_serving
        async def warn_of_the_random_key() -> None:
            app.logger.warning("SECRET_KEY is not set: using a random key for this process only")


def register_extensions(app: Quart) -> None:
    """Configure the placeholder Celery, then the bridge (its JSON API, websockets, health
    checks and metrics, with their settings), then your own extensions."""
    configure_celery(app)  # and import the task modules
    bridge.init_app(app)
    # Your extensions here.


def register_blueprints(app: Quart) -> None:
    """Attach your controllers (the bridge attached its own)."""
    app.register_blueprint(pages.blueprint)

"""The application factory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Quart

from factories.celery import configure_celery
from factories.configuration import get_config
from quart_app.blueprints import pages


def create_application(config: Mapping[str, Any] | None = None) -> Quart:
    """Build the app: defaults, then the environment, then `config`, then extensions and routes."""
    app = Quart("quart_app")
    app.config.from_mapping(get_config())
    if config is not None:
        app.config.from_mapping(config)
    register_extensions(app)
    register_blueprints(app)
    return app


def register_extensions(app: Quart) -> None:
    """Configure the placeholder extensions from the app's config."""
    configure_celery(app)


def register_blueprints(app: Quart) -> None:
    """Attach the controllers."""
    app.register_blueprint(pages.blueprint)

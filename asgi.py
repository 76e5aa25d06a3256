"""ASGI entry point: `hypercorn asgi:app`."""

from __future__ import annotations

from quart_celery import exit_on_configuration_error

from factories.application import create_application

with exit_on_configuration_error():
    app = create_application()

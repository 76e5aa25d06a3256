"""ASGI entry point: `hypercorn asgi:app`."""

from __future__ import annotations

from factories.application import create_application
from factories.configuration import exit_on_configuration_error

with exit_on_configuration_error():
    app = create_application()

"""The probe app's ASGI entry point: `hypercorn tests.probe_asgi:app`."""

from __future__ import annotations

from quart_celery import exit_on_configuration_error
from tests.probe_app import create_app

with exit_on_configuration_error():
    app = create_app()

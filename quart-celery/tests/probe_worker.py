"""The probe app's Celery entry point: `celery -A tests.probe_worker worker`."""

from __future__ import annotations

from quart_celery import exit_on_configuration_error
from tests.probe_app import configure_celery, create_app

with exit_on_configuration_error():
    celery = configure_celery(create_app())

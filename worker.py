"""Celery entry point: `celery -A worker worker`.

The Quart app is not bound to a name here: `celery -A worker` would take an attribute named
`app` for the Celery instance.
"""

from __future__ import annotations

from quart_celery import exit_on_configuration_error

from factories.application import create_application
from factories.celery import configure_celery

with exit_on_configuration_error():
    celery = configure_celery(create_application())

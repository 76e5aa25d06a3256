"""Celery entry point: `celery -A worker worker`.

The Quart app is not bound to a name here: `celery -A worker` would take an attribute named
`app` for the Celery instance.
"""

from __future__ import annotations

import os

from factories.application import create_application
from factories.celery import configure_celery
from factories.configuration import exit_on_configuration_error

#: A worker whose task ends while Redis is away keeps retrying to store the result until Redis
#: is back (Celery would otherwise record a FAILURE it cannot even store). Only the worker: a
#: web request gives up within `BLOCKING_TIMEOUT` and answers 503, and must not leave a pool
#: thread retrying. The environment can say otherwise.
WORKER_DEFAULTS = {"CELERY_RESULT_BACKEND_ALWAYS_RETRY": True}

with exit_on_configuration_error():
    celery = configure_celery(
        create_application({k: v for k, v in WORKER_DEFAULTS.items() if k not in os.environ})
    )

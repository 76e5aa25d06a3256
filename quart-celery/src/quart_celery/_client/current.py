"""The Celery instance and the Redis keys of the app in context, for the bridge's async code.

Both come from the app, never from an import: the Celery instance is the one the app's Celery
factory configured (`app.extensions["celery"]`, Flask's own key for it), and the keys are named
after the app (`quart_celery._broker.keys`).
"""

from __future__ import annotations

from functools import cache

from celery import Celery
from quart import Quart, current_app

from quart_celery._broker.keys import Keys


def current_celery() -> Celery:
    """The Celery instance of the app in context; `RuntimeError` if it has none yet."""
    return celery_of(current_app)


def celery_of(app: Quart) -> Celery:
    """The Celery instance of `app`; `RuntimeError` if its Celery factory has not run."""
    celery: Celery | None = app.extensions.get("celery")
    if celery is None:
        raise RuntimeError(
            f"the app {app.name!r} has no Celery instance: configure it (your Celery factory, "
            "which calls QuartCelery.init_celery(app)) before the app serves"
        )
    return celery


def current_keys() -> Keys:
    """The Redis keys of the app in context."""
    return keys_of(current_app.name)


@cache
def keys_of(app_name: str) -> Keys:
    """The Redis keys of the app named `app_name`."""
    return Keys(app_name)

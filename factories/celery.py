"""The Celery factory: configure the placeholder from a web app, whose context tasks run in."""

from __future__ import annotations

from celery import Celery
from flask import Flask
from quart import Quart

from quart_app.extensions import bridge, celery


def configure_celery(app: Quart | Flask) -> Celery:
    """Configure the placeholder Celery instance from `app`'s config; return that instance.

    Celery's settings are the app's `CELERY_*` keys (from its config, else the environment)
    over the bridge's defaults: the broker and the result backend are `REDIS_URL` unless
    `CELERY_BROKER_URL` and `CELERY_RESULT_BACKEND` say otherwise, messages are JSON only,
    tasks are acknowledged when they end. The task modules are imported, as a worker does, so
    that the web app knows every task too, and every task then runs inside `app`'s context
    (the bridge's task base class pushes it, for sync and `async def` tasks alike). Takes a
    Quart or a Flask app, and may be called again.
    """
    celery.config_from_object(bridge.celery_settings(app), force=True)
    bridge.init_celery(app)
    return celery

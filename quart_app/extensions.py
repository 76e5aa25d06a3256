"""Bare extension instances, created at import and configured by the factories at start-up.

`celery` is configured by `factories.celery.configure_celery(app)`. Until then it is a
placeholder that tasks can bind to without connecting anywhere, which is what lets controllers
import tasks, and tasks import this module, with no import cycle and no code run at import.

The modules that declare tasks are listed in `include`: the worker imports them, and so does
`configure_celery`, so that the web app knows the same tasks. Add yours there (or name them in
`CELERY_IMPORTS`).
"""

from __future__ import annotations

from celery import Celery

# The bridge's classes are named, not imported: the task base class, so that every task gets
# the app context even if something touches it before configure_celery runs; the messaging
# class, so that every task the app publishes is recorded.
celery = Celery(
    "quart_app",
    include=["quart_app.tasks"],
    task_cls="quart_app.bridge.app_context:ContextTask",
    amqp="quart_app.bridge.records:RecordingAMQP",
)

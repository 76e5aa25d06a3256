"""Bare extension instances, created at import and configured by the factories at start-up.

`celery` is configured by `factories.celery.configure_celery(app)`. Until then it is a
placeholder that tasks can bind to without connecting anywhere, which is what lets controllers
import tasks, and tasks import this module, with no import cycle and no code run at import.
"""

from __future__ import annotations

from celery import Celery

# The base class is named, not imported: the factories stay out of this module's imports, and
# every task gets the app context even if something touches it before configure_celery runs.
celery = Celery("quart_app", include=["quart_app.tasks"], task_cls="factories.celery:ContextTask")

"""Bare extension instances, created at import and configured by the factories at start-up.

`celery` is configured by `factories.celery.configure_celery(app)`; `bridge`, the Quart-Celery
bridge, by `factories.application.create_application`. Until then they are placeholders that
tasks can bind to without connecting anywhere, which is what lets controllers import tasks,
and tasks import this module, with no import cycle and no code run at import.

The modules that declare tasks are listed in `include`: the worker imports them, and so does
the Celery factory, so that the web app knows the same tasks. Add yours there (or name them in
`CELERY_IMPORTS`). Add your own extensions' bare instances here too.
"""

from __future__ import annotations

from celery import Celery
from quart_celery import QuartCelery

celery = Celery("quart_app", include=["quart_app.tasks"])
# Every task of `celery` runs in the app's context, and is served over HTTP and websockets.
bridge = QuartCelery(celery)

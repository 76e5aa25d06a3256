"""The bridge between Quart and Celery: the reusable part of the skeleton. Leave it as it is.

What your own code uses of it is here:

- `expose` (and `ArgumentRules`): let clients start a task over the JSON API, its arguments
  checked against its signature (`quart_app.bridge.exposure`);
- `queue`: submit, look up, follow and wait for tasks from async views, without blocking
  (`quart_app.bridge.queue`);
- `APIError`: raise it in a view to answer with a JSON error (`quart_app.bridge.errors`);
- `watch_ticket`: lets a page of yours follow one task over its websocket
  (`quart_app.bridge.access`);
- `limits_submissions`: counts a view of yours that submits against `API_RATE_LIMIT`
  (`quart_app.bridge.rate_limits`);
- `checkpoint`: where a long sync task of yours may stop if it is cancelled
  (`quart_app.bridge.cancellation`).

The rest is plumbing: the task base class and event loops that run tasks in the app context,
the Redis transport and result backend, records, revocation, the submitter, the result
listener, the thread pool, access, shutdown, and the JSON API, websockets and health checks
(`quart_app.bridge.blueprints`). Nothing here imports `factories`, and importing any of it
connects nowhere.
"""

from __future__ import annotations

from quart_app.bridge import queue
from quart_app.bridge.access import watch_ticket
from quart_app.bridge.cancellation import checkpoint
from quart_app.bridge.errors import APIError
from quart_app.bridge.exposure import ArgumentRules, expose
from quart_app.bridge.rate_limits import limits_submissions

__all__ = [
    "APIError",
    "ArgumentRules",
    "checkpoint",
    "expose",
    "limits_submissions",
    "queue",
    "watch_ticket",
]

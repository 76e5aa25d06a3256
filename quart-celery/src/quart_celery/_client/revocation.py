"""Revoking a task: the web app's half (`quart_celery._worker.revoked` is the workers').

Workers keep the revocations they hear in memory only: one that restarted, or started after
the revoke, would run the task anyway. So the web app also marks a task it revokes before it
starts as REVOKED in the result backend (`revoke`, which blocks: run it in the thread pool), and
every worker looks there before running a task it receives, one read per task. A task already
running is asked to stop (`quart_celery._broker.cancel_requests`): an `async def` task stops at
once, a sync task at its next `checkpoint()`, and it ends REVOKED.
"""

from __future__ import annotations

from celery import Celery
from celery.backends.redis import RedisBackend
from redis import Redis

from quart_celery._broker.cancel_requests import request_cancel
from quart_celery._broker.keys import Keys
from quart_celery._client.snapshots import name_of_published, read_snapshot
from quart_celery.errors import APIError
from quart_celery.schemas import TaskSnapshot
from quart_celery.states import FINAL_STATES


def revoke(celery: Celery, redis: Redis, keys: Keys, task_id: str) -> TaskSnapshot:
    """Revoke `celery`'s task: one not started yet will never run; one running is asked to
    stop (its records and marks in `redis`, under `keys`).

    409 if the task already ended: revoking it changes nothing.
    """
    name = name_of_published(redis, keys, task_id)
    backend = celery.backend
    if not isinstance(backend, RedisBackend):
        raise RuntimeError("revoking needs the Redis result backend")
    if not backend.revoke_unless_started(task_id):  # type: ignore[attr-defined]
        current = read_snapshot(backend, task_id, name)
        if current.state in FINAL_STATES:
            raise APIError(
                409,
                "task_finished",
                f"Task {task_id} already ended in {current.state}; nothing was revoked.",
            )
    # Also where it was marked before it started: a worker may have taken it just now, and
    # its STARTED would follow the mark; the request stops it once it runs.
    request_cancel(redis, keys, task_id, int(backend.expires))  # type: ignore[attr-defined]
    celery.control.revoke(task_id)
    return read_snapshot(backend, task_id, name)

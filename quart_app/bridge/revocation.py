"""Revoking a task, both halves: the web app's mark, and every worker's check before it runs one.

Workers keep the revocations they hear in memory only: one that restarted, or started after
the revoke, would run the task anyway. So the web app also marks a task it revokes before it
starts as REVOKED in the result backend (`revoke`, which blocks: run it in the thread pool), and
every worker looks there before running a task it receives (`init_celery`), one read per task.
A task already running is asked to stop (`quart_app.bridge.cancellation`): an `async def` task
stops at once, a sync task at its next `checkpoint()`, and it ends REVOKED.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import signals, states
from celery.backends.redis import RedisBackend
from celery.exceptions import TaskRevokedError
from celery.worker import state as worker_state
from celery.worker.request import Request
from redis import Redis
from redis.exceptions import WatchError

from quart_app.bridge.cancellation import request_cancel
from quart_app.bridge.errors import APIError
from quart_app.bridge.schemas import TaskSnapshot
from quart_app.bridge.snapshots import name_of_published, read_snapshot
from quart_app.bridge.states import FINAL_STATES
from quart_app.extensions import celery

# Revoking these stops them before they run; a task already running runs to its end.
NOT_STARTED = frozenset({states.PENDING, states.RETRY})


def revoke(redis: Redis, task_id: str) -> TaskSnapshot:
    """Revoke the task: one not started yet will never run; one running is asked to stop.

    409 if the task already ended: revoking it changes nothing.
    """
    name = name_of_published(redis, task_id)
    if not _mark_revoked_unless_started(task_id):
        current = read_snapshot(task_id, name)
        if current.state in FINAL_STATES:
            raise APIError(
                409,
                "task_finished",
                f"Task {task_id} already ended in {current.state}; nothing was revoked.",
            )
    # Also where it was marked before it started: a worker may have taken it just now, and
    # its STARTED would follow the mark; the request stops it once it runs.
    request_cancel(redis, task_id, int(celery.backend.expires))  # type: ignore[attr-defined]
    celery.control.revoke(task_id)
    return read_snapshot(task_id, name)


def _mark_revoked_unless_started(task_id: str) -> bool:
    """Store REVOKED for the task, only if it has not started; whether it did.

    Read and write are one transaction (WATCH): a task that starts, or ends, in between keeps
    its state, where Celery's own `mark_as_revoked` would overwrite it.
    """
    backend = celery.backend
    if not isinstance(backend, RedisBackend):
        raise RuntimeError("revoking needs the Redis result backend")
    key = backend.get_key_for_task(task_id)
    revoked = backend.encode(
        {
            "status": states.REVOKED,
            "result": backend.prepare_exception(TaskRevokedError("revoked")),
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat(),
            "task_id": task_id,
        }
    )
    with backend.client.pipeline() as pipeline:
        while True:
            try:
                pipeline.watch(key)
                stored = pipeline.get(key)
                state = backend.decode(stored)["status"] if stored else states.PENDING
                if state not in NOT_STARTED:
                    return False
                pipeline.multi()
                # `expires` (seconds, from result_expires) is missing from the stubs.
                pipeline.set(key, revoked, ex=int(backend.expires))  # type: ignore[attr-defined]
                pipeline.publish(key, revoked)  # as Celery publishes every state it stores
                pipeline.execute()
                return True
            except WatchError:
                continue


def init_celery() -> None:
    """Make every worker skip a task that the result backend says was revoked."""
    signals.task_received.connect(skip_if_revoked, weak=False, dispatch_uid=__name__)


def skip_if_revoked(request: Request, **_: Any) -> None:
    """Count a received task as revoked if the result backend says it was (a signal receiver).

    A task the worker counts as revoked is acknowledged and recorded as REVOKED, never run.
    """
    if (
        request.id not in worker_state.revoked
        and request.task.backend.get_state(request.id) == states.REVOKED
    ):
        worker_state.revoked.add(request.id)

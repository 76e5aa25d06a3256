"""Every worker's check, before it runs a task, that the task was not revoked meanwhile.

Workers keep the revocations they hear in memory only: one that restarted, or started after
the revoke, would run the task anyway. So the web app also marks a task it revokes before it
starts as REVOKED in the result backend (`quart_celery._client.revocation`), and every worker
looks there before running a task it receives, one read per task.
"""

from __future__ import annotations

from typing import Any

from celery import signals, states
from celery.worker import state as worker_state
from celery.worker.request import Request

from quart_celery._broker.round_trips import sharing

#: Whether this process's pool reads revocations itself as it starts each task (the async
#: pool does, on its tracer threads): then the worker's consumer, which every message waits
#: on, does not.
checked_by_the_pool = False


def init_celery() -> None:
    """Make every worker skip a task that the result backend says was revoked."""
    signals.task_received.connect(skip_if_revoked, weak=False, dispatch_uid=__name__)


def skip_if_revoked(request: Request, **_: Any) -> None:
    """Count a received task as revoked if the result backend says it was (a signal receiver).

    A task the worker counts as revoked is acknowledged and recorded as REVOKED, never run.
    """
    if not checked_by_the_pool:
        _count_if_revoked(request)


def was_revoked(request: Request) -> bool:
    """Whether the task of `request`, about to start, was revoked; if so Celery's handling of
    a revoked task is done (REVOKED recorded, the message acknowledged, task-revoked sent)."""
    _count_if_revoked(request)
    return bool(request.revoked())


def _count_if_revoked(request: Request) -> None:
    if request.id in worker_state.revoked:
        return
    with sharing():  # one read, holding nothing (`quart_celery._broker.round_trips`)
        state = request.task.backend.get_state(request.id)
    if state == states.REVOKED:
        worker_state.revoked.add(request.id)

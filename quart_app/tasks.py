"""The example tasks, bound to the placeholder Celery instance.

Each has a registered name equal to its function name, so a client can send it by name and the
name survives a move to another module. Arguments and results are JSON primitives: that is all
the JSON serializer carries, and it keeps tasks callable from any client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from celery import Task
from quart import current_app

from quart_app.extensions import celery
from quart_app.states import TaskState


@celery.task(name="simple_task")
def simple_task(message: str) -> str:
    """Return `message` unchanged: the smallest round trip through the queue."""
    return message


@celery.task(name="progress_task", bind=True)
def progress_task(self: Task[Any, Any], steps: int, delay: float = 0.1) -> dict[str, int]:
    """Work through `steps` steps of `delay` seconds, recording PROGRESS after each."""
    for current in range(1, steps + 1):
        time.sleep(delay)
        # Called directly rather than as a task, there is no task id to record progress under.
        if self.request.id is not None:
            self.update_state(state=TaskState.PROGRESS, meta={"current": current, "total": steps})
    return {"steps": steps}


@celery.task(name="async_task")
async def async_task(message: str, delay: float = 0.0) -> dict[str, str]:
    """Await `delay` seconds, then say which app's context the task ran in."""
    await asyncio.sleep(delay)
    return {"message": message, "app": current_app.name}


@celery.task(name="failing_task")
def failing_task(message: str) -> None:
    """Raise `ValueError(message)`: shows how a task's failure reaches the client."""
    raise ValueError(message)

"""Accepting a task: record its id, then send it. Shared by the JSON API and the HTML form."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from celery import Task

from quart_app import celery_calls, task_records
from quart_app.blocking import run_blocking
from quart_app.errors import APIError


async def submit(task: Task[Any, Any], kwargs: dict[str, Any]) -> UUID:
    """Send a run of `task`; return its id. 503, and nothing recorded, if it cannot be sent."""
    task_id = uuid4()
    # Recorded before it is sent, so that a look-up right after the answer finds it.
    await task_records.remember(task_id, task.name)
    try:
        await run_blocking("the broker", celery_calls.send, task, kwargs, task_id)
    except APIError:
        await task_records.forget(task_id)
        raise
    return task_id


async def accepted_name(task_id: UUID) -> str:
    """The name of an accepted task; 404 for an id the app never accepted (or forgot)."""
    name = await task_records.name_of(task_id)
    if name is None:
        raise APIError(404, "task_not_found", f"No task {task_id} was submitted here.")
    return name

"""Accepting a task, shared by the JSON API and the HTML form."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from celery import Task
from quart import current_app

from quart_app import celery_calls, task_records
from quart_app.blocking import run_blocking


async def submit(task: Task[Any, Any], kwargs: dict[str, Any]) -> UUID:
    """Record and send a run of `task`; return its id. 503, recording nothing, if it can't."""
    task_id = uuid4()
    expires = int(current_app.config["CELERY_RESULT_EXPIRES"])
    await run_blocking(
        "the broker", celery_calls.accept, task_records.client(), expires, task, kwargs, task_id
    )
    return task_id

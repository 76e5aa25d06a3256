"""Sending a workflow from sync code: a task, a shell, a Flask view, `celery beat`'s jobs.

    workflow_id = send_workflow(chord([square.s(x=x) for x in range(10)], total.s()))

Celery's own `chord(...).apply_async()` runs as well from there, but leaves no workflow record:
its tasks can be followed one by one, not as one. `send_workflow` captures what Celery would
send (`quart_celery._broker.canvas`), records the workflow and its tasks, then sends each
message through Celery's producer, as `apply_async` would. A message that cannot be sent
revokes every task of the workflow (none runs) and raises. The web app's views use
`queue.submit`, which sends it from the event loop, all in one step.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from celery import Signature
from redis.exceptions import RedisError

from quart_celery._broker import canvas, recording, records, workflow_records
from quart_celery._broker.keys import Keys
from quart_celery._broker.workflow_records import Command, WorkflowRecord


def send_workflow(workflow: Signature[Any], workflow_id: str | None = None) -> str:
    """Send a chain, group or chord of the app's tasks, followable as one; its id (with
    `workflow_id`, that one). Blocks; call it from sync code of an app the bridge configured
    (`QuartCelery.init_celery`), never from an event loop (there: `await queue.submit(...)`).
    """
    recorder = recording.recorder()
    if recorder is None:
        raise RuntimeError("the bridge keeps workflows in the app's Redis, which this app has not")
    celery: Any = workflow.app
    captured = canvas.capture(celery, workflow, workflow_id)
    backend: Any = celery.backend
    keys, expires = recorder.keys, recorder.expires
    run_commands(backend, recording_commands(captured, keys, backend, expires))
    records.remember(recorder.redis, keys, captured.carried, expires)
    try:
        with celery.producer_or_acquire() as producer:
            for send in captured.sends:
                send.task.apply_async(send.args, send.kwargs, producer=producer, **send.options)
    except Exception:
        revoke_every_task(backend, captured.record)
        raise
    return captured.record.workflow_id


def recording_commands(
    captured: canvas.CapturedWorkflow, keys: Keys, backend: Any, expires: int
) -> list[Command]:
    """The commands for the result backend's Redis that record a captured workflow (its record
    and counters, each task's membership) for `expires` seconds, then Celery's own writes."""
    record = captured.record
    commands = workflow_records.writes(
        record, keys.workflow(record.workflow_id), backend.get_key_for_task, expires
    )
    return commands + captured.commands


def run_commands(backend: Any, commands: list[Command]) -> None:
    """Run `commands` on the result backend's Redis, in one round trip."""
    with backend.client.pipeline(transaction=False) as pipeline:
        for command in commands:
            pipeline.execute_command(*command)
        pipeline.execute()


def revoke_every_task(backend: Any, record: WorkflowRecord) -> None:
    """Mark every task of a workflow not started REVOKED: one of its messages could not be
    sent, and none of it is to run (a worker skips a task marked so)."""
    for task_id, _ in record.members:
        with suppress(RedisError):
            backend.revoke_unless_started(task_id)

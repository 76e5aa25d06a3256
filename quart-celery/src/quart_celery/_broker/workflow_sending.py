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
    record = captured.record
    backend: Any = celery.backend
    commands = workflow_records.writes(
        record,
        recorder.keys.workflow(record.workflow_id),
        backend.get_key_for_task,
        recorder.expires,
    )
    with backend.client.pipeline(transaction=False) as pipeline:
        for command in commands + captured.commands:
            pipeline.execute_command(*command)
        pipeline.execute()
    sent = {send.task_id for send in captured.sends}
    carried = [(task_id, name) for task_id, name in record.members if task_id not in sent]
    records.remember(recorder.redis, recorder.keys, carried, recorder.expires)
    try:
        with celery.producer_or_acquire() as producer:
            for send in captured.sends:
                options = dict(send.options)
                send.task.apply_async(send.args, send.kwargs, producer=producer, **options)
    except Exception:
        for task_id, _ in record.members:
            with suppress(RedisError):
                backend.revoke_unless_started(task_id)
        raise
    return record.workflow_id

"""Workflows from async code: send a chain, group or chord, look it up, follow it, cancel it.

    workflow_id = await queue.submit(chord([square.s(x=x) for x in range(10)], total.s()))
    snapshot = await queue.look_up_workflow(workflow_id)
    async for change in queue.follow_workflow(workflow_id):
        ...
    result = await queue.workflow_result(workflow_id, timeout=30)

A workflow's id is the id of what Celery's `apply_async` returns for it: a chain's last link,
a group's own id, a chord's body. Its record and counters (`quart_celery._broker.
workflow_records`) are written with its messages, all in one step, and kept as members end by
the script that stores their states: following one reads it once, then hears one message per
change of a task of it on its own channel, through the process's one pub/sub listener.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from celery import Celery, Signature
from quart import current_app
from redis import Redis

from quart_celery._broker.cancel_requests import request_cancels
from quart_celery._broker.keys import Keys
from quart_celery._broker.task_ids import parse_task_id
from quart_celery._broker.workflow_records import (
    ENDED,
    Counts,
    WorkflowRecord,
    decoded_hash,
    member_states,
    result_from,
)
from quart_celery._client import listener
from quart_celery._client.blocking import run_blocking
from quart_celery._client.connections import blocking_redis
from quart_celery._client.current import current_celery, current_keys
from quart_celery._client.following import Inbox, last_change
from quart_celery._client.listener import Update
from quart_celery._client.snapshots import decoded
from quart_celery._client.submitter import submitter
from quart_celery._observability import metrics
from quart_celery.errors import (
    APIError,
    ServiceUnavailable,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowRevoked,
)
from quart_celery.schemas import WorkflowChange, WorkflowSnapshot, WorkflowTask
from quart_celery.states import TaskState

RESULTS = "the result backend"


@dataclass(slots=True)
class Workflow:
    """A workflow as read from Redis: its record, its counts, its tasks' states, its result."""

    record: WorkflowRecord
    counts: Counts
    states: dict[str, str]
    #: Once it has ended: its result (a chain's last, a group's list, a chord body's).
    result: Any = None

    def snapshot(self) -> WorkflowSnapshot:
        """The workflow as `GET /api/workflows/<id>` gives it."""
        counts = self.counts
        return WorkflowSnapshot(
            id=self.record.workflow_id,
            state=counts.state,
            total=counts.total,
            done=counts.done,
            failed=counts.failed,
            result=self.result,
            tasks=[
                WorkflowTask(id=task_id, name=name, state=self.states.get(task_id, "PENDING"))
                for task_id, name in self.record.members
            ],
        )


def read(backend: Any, keys: Keys, workflow_id: str) -> Workflow | None:
    """The workflow, with its result if it has ended; None if none was sent as `workflow_id`.

    Blocks: run it in the thread pool. One round trip, and one more for the result.
    """
    key = keys.workflow(workflow_id)
    with backend.client.pipeline(transaction=False) as pipeline:
        pipeline.get(key)
        pipeline.hgetall(key + ":progress")
        raw, progress = pipeline.execute()
    if raw is None or not progress:
        return None
    fields = decoded_hash(progress)
    workflow = Workflow(
        WorkflowRecord.decode(workflow_id, raw), Counts.of(fields), member_states(fields)
    )
    if workflow.counts.ended:
        workflow.result = final_result(backend, workflow.record)
    return workflow


def final_result(backend: Any, record: WorkflowRecord) -> Any:
    """The workflow's result, read from the results of the tasks it comes from (one MGET);
    None in place of a task that did not succeed. Blocks."""
    task_ids = record.result_ids()
    stored = backend.client.mget([backend.get_key_for_task(task_id) for task_id in task_ids])
    results: dict[str, Any] = {}
    for task_id, raw in zip(task_ids, stored, strict=True):
        meta = decoded(backend, raw)
        if meta.get("status") == TaskState.SUCCESS:
            results[task_id] = meta.get("result")
    return result_from(record.result, results)


def cancel(celery: Celery, redis: Redis, keys: Keys, workflow_id: str) -> Workflow:
    """Revoke every task of the workflow that has not ended: those not started never will,
    the running ones are asked to stop (as `DELETE /api/tasks/<id>` does each). Blocks.

    `WorkflowNotFound` (404); 409 if the workflow had ended already.
    """
    backend: Any = celery.backend
    workflow = read(backend, keys, workflow_id)
    if workflow is None:
        raise WorkflowNotFound(workflow_id)
    if workflow.counts.ended:
        raise APIError(
            409,
            "workflow_finished",
            f"Workflow {workflow_id} already ended in {workflow.counts.state}; nothing was "
            "revoked.",
        )
    open_ids = [
        task_id
        for task_id, _ in workflow.record.members
        if workflow.states.get(task_id) not in ENDED
    ]
    # First: from now on it ends only once every task of it has, the running ones stopped.
    backend.client.hset(keys.workflow(workflow_id) + ":progress", "cancelled", 1)
    for task_id in open_ids:
        backend.revoke_unless_started(task_id)
    # The running ones, and any a worker takes meanwhile: they stop once they run.
    request_cancels(redis, keys, open_ids, int(backend.expires))
    if open_ids:
        celery.control.revoke(open_ids)
    ended = read(backend, keys, workflow_id)
    return ended if ended is not None else workflow


async def submit_workflow(
    workflow: Signature[Any], workflow_id: str | None = None
) -> WorkflowRecord:
    """Send a chain, group or chord, all of it or none; its record (id and tasks), once sent.
    With `workflow_id`, that is its id.

    `ServiceUnavailable` (503) if it cannot be sent in time: then none of it runs.
    """
    try:
        record = await submitter().submit_workflow(workflow, workflow_id)
    except ServiceUnavailable:
        metrics.count_submission(metrics.WORKFLOW, "unavailable")
        raise
    metrics.count_submission(metrics.WORKFLOW, "accepted")
    return record


async def look_up_workflow(workflow_id: str) -> WorkflowSnapshot:
    """The workflow's snapshot now; `WorkflowNotFound` (404) if none was sent as `workflow_id`."""
    normal = parse_task_id(workflow_id)
    if normal is None:
        raise WorkflowNotFound(workflow_id)
    workflow = await run_blocking(RESULTS, read, current_celery().backend, current_keys(), normal)
    if workflow is None:
        raise WorkflowNotFound(workflow_id)
    return workflow.snapshot()


async def cancel_workflow(workflow_id: str) -> WorkflowSnapshot:
    """Revoke every task of the workflow not yet ended; its snapshot after. `WorkflowNotFound`
    (404), or 409 if it had ended already."""
    normal = parse_task_id(workflow_id)
    if normal is None:
        raise WorkflowNotFound(workflow_id)
    workflow = await run_blocking(
        "the broker", cancel, current_celery(), blocking_redis(), current_keys(), normal
    )
    return workflow.snapshot()


class WorkflowFollower:
    """One consumer following one workflow: its snapshot, then each change of its tasks.

    Subscribed to the workflow's channel before it reads the workflow, so that no change falls
    in between; a change the snapshot already counts (by its version) is not given again.
    """

    def __init__(self) -> None:
        self.listener: listener.ResultListener = current_app.extensions[listener.EXTENSION]
        self.inbox = Inbox(current_app.config["WS_QUEUE_SIZE"])
        self.backend: Any = current_celery().backend
        self.keys = current_keys()
        self.channel: str | None = None
        self.workflow: Workflow | None = None
        self.names: dict[str, str] = {}

    async def follow(self, workflow_id: str) -> WorkflowSnapshot:
        """Start following; the workflow's snapshot. `WorkflowNotFound` (404)."""
        normal = parse_task_id(workflow_id)
        if normal is None:
            raise WorkflowNotFound(workflow_id)
        self.channel = self.keys.workflow(normal)
        await self.listener.subscribe(self.channel, self.inbox)
        workflow = await run_blocking(RESULTS, read, self.backend, self.keys, normal)
        if workflow is None:
            raise WorkflowNotFound(workflow_id)
        self.workflow = workflow
        self.names = dict(workflow.record.members)
        return workflow.snapshot()

    async def next_change(self) -> WorkflowChange | WorkflowSnapshot:
        """The next change of a task of the workflow; after the listener reconnected, the
        workflow's snapshot read anew. `FellBehind` if more than `WS_QUEUE_SIZE` waited."""
        workflow = self.workflow
        assert workflow is not None, "follow() first"
        while True:
            update = await self.inbox.get()
            if not isinstance(update, Update):
                continue  # no chunks are published on a workflow's channel
            if update.meta is None:  # the listener reconnected: what happened meanwhile
                again = await run_blocking(
                    RESULTS, read, self.backend, self.keys, workflow.record.workflow_id
                )
                if again is None or again.counts.version <= workflow.counts.version:
                    continue
                self.workflow = workflow = again
                return again.snapshot()
            counts = Counts.of(update.meta)
            if counts.version <= workflow.counts.version:
                continue  # counted in the snapshot already
            task_id, state = str(update.meta.get("task")), str(update.meta.get("state"))
            workflow.counts = counts
            workflow.states[task_id] = state
            if counts.ended:
                workflow.result = await run_blocking(
                    RESULTS, final_result, self.backend, workflow.record
                )
            return WorkflowChange(
                id=workflow.record.workflow_id,
                state=counts.state,
                total=counts.total,
                done=counts.done,
                failed=counts.failed,
                task=WorkflowTask(id=task_id, name=self.names.get(task_id, ""), state=state),
                result=workflow.result,
            )

    def close(self) -> None:
        """Stop following."""
        if self.channel is not None:
            self.listener.unsubscribe(self.channel, self.inbox)
            self.channel = None


async def follow_workflow(
    workflow_id: str,
) -> AsyncGenerator[WorkflowSnapshot | WorkflowChange, None]:
    """The workflow's snapshot, then each change of a task of it, ending after its final state.

    `WorkflowNotFound` (404); `FellBehind` if more than `WS_QUEUE_SIZE` changes wait for you.
    Stopping early, wrap it in `contextlib.aclosing`.
    """
    follower = WorkflowFollower()
    try:
        snapshot = await follower.follow(workflow_id)
        yield snapshot
        state = snapshot.state
        while state not in ENDED:
            change = await follower.next_change()
            yield change
            state = change.state
    finally:
        follower.close()


async def workflow_result(workflow_id: str, timeout: float | None = None) -> Any:
    """Wait for the workflow's result, for at most `timeout` seconds (None: as long as it takes).

    `WorkflowFailed` (502) if a task of it failed, `WorkflowRevoked` (409) if it was
    cancelled, `ResultTimeout` (504) if it has not ended in time (it goes on running),
    `WorkflowNotFound` (404).
    """
    last = await last_change(follow_workflow(workflow_id), workflow_id, timeout)
    assert last.state in ENDED
    if last.state == TaskState.SUCCESS:
        return last.result
    if last.state == TaskState.FAILURE:
        raise WorkflowFailed(workflow_id, last.failed)
    raise WorkflowRevoked(workflow_id)

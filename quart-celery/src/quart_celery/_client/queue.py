"""The task queue from async code: submit a task, look one up, follow one, wait for its result.

For your own views and websocket handlers, in place of Celery's blocking calls (`delay()`,
`AsyncResult.get()`), which would stall the event loop; Celery itself has no awaitable result
(celery/celery#6603). Call these while the app serves, in its context:

    task_id = await queue.submit(send_report, report_id=7)
    snapshot = await queue.look_up(task_id)
    async for snapshot in queue.follow(task_id):
        ...
    report = await queue.result(task_id, timeout=30)
    async for chunk in queue.stream(task_id):    # what it streams (`send_chunk`), from offset 0
        ...

    workflow_id = await queue.submit(chord([square.s(x=x) for x in range(10)], total.s()))
    async for change in queue.follow_workflow(workflow_id):
        ...
    total = await queue.workflow_result(workflow_id, timeout=30)

Submitting goes through the app's submitter, in batches; a look-up through its thread pool;
following and waiting through the process's one pub/sub listener, so a follower costs no
thread and no polling. The JSON API and the websockets are built on these same calls. Every
error they raise is an `APIError`: uncaught in a view, it answers with its status and the
usual JSON body.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from celery import Signature, Task
from celery.canvas import maybe_signature
from quart import current_app

from quart_celery._broker.canvas import kind_of
from quart_celery._broker.task_ids import parse_task_id
from quart_celery._client.current import current_celery
from quart_celery._client.exposure import check_arguments
from quart_celery._client.following import (
    Changed,
    Follower,
    StreamedChunk,
    TaskError,
    last_change,
)
from quart_celery._client.reader import task_reader
from quart_celery._client.snapshots import decoded, snapshot_from_meta
from quart_celery._client.submitter import Submission, submitter
from quart_celery._client.workflows import (
    cancel_workflow,
    follow_workflow,
    look_up_workflow,
    submit_workflow,
    workflow_result,
)
from quart_celery._observability import metrics
from quart_celery.errors import (
    FellBehind,
    InvalidArguments,
    ResultTimeout,
    ServiceUnavailable,
    TaskFailed,
    TaskNotFound,
    TaskRevoked,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowRevoked,
)
from quart_celery.schemas import TaskSnapshot
from quart_celery.states import FINAL_STATES, TaskState

__all__ = [
    "FellBehind",
    "InvalidArguments",
    "ResultTimeout",
    "ServiceUnavailable",
    "TaskFailed",
    "TaskNotFound",
    "TaskRevoked",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowRevoked",
    "cancel_workflow",
    "follow",
    "follow_workflow",
    "look_up",
    "look_up_workflow",
    "result",
    "stream",
    "submit",
    "workflow_result",
]


async def submit(task: Task[Any, Any] | Signature[Any], /, *args: Any, **kwargs: Any) -> str:
    """Send a run of `task` with these arguments; its id, once the broker has it.

    For Celery's options, pass a signature instead: `submit(report.s(7).set(countdown=60))`
    (with `task_id` among them, the task gets that id). A workflow (a chain, group or chord)
    is sent whole or not at all, and its id is the workflow's (`look_up_workflow`,
    `follow_workflow`). `InvalidArguments` (422) if the arguments do not fit the task's
    declared ones; `ServiceUnavailable` (503) if the broker does not take it within
    `BLOCKING_TIMEOUT`. Either way it was not sent, and will not be.
    """
    options: dict[str, Any] = {}
    if isinstance(task, Signature):
        if args or kwargs:
            raise TypeError("submit(signature) takes no more arguments: put them in the signature")
        if kind_of(task) is not None:
            _check_steps(task, given_result=False)
            return (await submit_workflow(task)).workflow_id
        signature = task
        if signature.task is None:
            raise TypeError(f"{signature!r} names no task")
        task = current_celery().tasks[signature.task]
        args, kwargs = tuple(signature.args), dict(signature.kwargs)
        options = dict(signature.options)
    check_arguments(task, args, kwargs)
    return await submit_checked(task, args, kwargs, options)


def _check_steps(signature: Any, *, given_result: bool) -> None:
    """Check the arguments of every task of a workflow, as `submit` checks a task's; the
    argument a step is given by the step before it (in a chain, a chord's body) is not."""
    signature = maybe_signature(signature)
    kind = kind_of(signature)
    if kind == "chain":
        for index, step in enumerate(signature.tasks):
            _check_steps(step, given_result=given_result or index > 0)
    elif kind == "group":
        for step in signature.tasks:
            _check_steps(step, given_result=given_result)
    elif kind == "chord":
        for step in signature.tasks:  # its header's
            _check_steps(step, given_result=given_result)
        _check_steps(signature.body, given_result=True)
    else:
        task = current_celery().tasks.get(str(signature.task))
        if task is not None:  # else refused as no task of the app, when it is captured
            given = given_result and not signature.immutable
            check_arguments(task, tuple(signature.args), dict(signature.kwargs), given_result=given)


async def submit_checked(
    task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
) -> str:
    """`submit`, for arguments checked already (the JSON API's, by its request model), with
    Celery's `options`."""
    options = dict(options)
    task_id = str(options.pop("task_id", None) or uuid.uuid4())
    submission = Submission(task, args, kwargs, options, task_id=task_id)
    try:
        await submitter().submit(submission)
    except ServiceUnavailable:
        metrics.count_submission(task.name, "unavailable")
        raise
    metrics.count_submission(task.name, "accepted")
    return submission.task_id


async def look_up(task_id: str) -> TaskSnapshot:
    """The task's snapshot now; `TaskNotFound` (404) if no task was published as `task_id`."""
    normal = parse_task_id(task_id)
    if normal is None:
        raise TaskNotFound(task_id)
    found = await task_reader().read(normal, name=True, stored=True)
    if found.name is None:
        raise TaskNotFound(task_id)
    stored = decoded(current_celery().backend, found.stored)
    return snapshot_from_meta(normal, found.name, stored, current_app.debug)


async def follow(task_id: str) -> AsyncGenerator[TaskSnapshot, None]:
    """The task's snapshot, then each change of it as it happens, ending after its final state.

    `TaskNotFound` if no task was published as `task_id`; `FellBehind` if more than
    `WS_QUEUE_SIZE` changes wait for you. Stopping early, wrap it in `contextlib.aclosing` to
    stop following at once rather than when the iterator is collected.
    """
    follower = Follower()
    try:
        await follower.follow(task_id)
        while True:
            event = await follower.next_event()
            if isinstance(event, TaskError):
                raise event.error
            if isinstance(event, Changed):
                yield event.snapshot
                if event.state in FINAL_STATES:
                    return
    finally:
        follower.close()


async def stream(task_id: str, start: int = 0) -> AsyncGenerator[Any, None]:
    """Each chunk the task streams (`send_chunk`), from offset `start`: those it streamed
    already, then each as it comes, in order, each once; ending once the task has ended.

    `TaskFailed` (502) after the chunks of a task that failed, `TaskRevoked` (409) of one
    revoked; `TaskNotFound` (404) if no task was published as `task_id`; `FellBehind` if more
    than `WS_QUEUE_SIZE` batches wait for you. Stopping early, wrap it in
    `contextlib.aclosing`, as `follow`.
    """
    async with aclosing(streamed(task_id, start)) as following:
        async for event in following:
            if isinstance(event, StreamedChunk):
                yield event.value
            elif event.state in FINAL_STATES:
                _raise_unless_succeeded(event)


async def streamed(
    task_id: str, start: int = 0, follower: Follower | None = None
) -> AsyncGenerator[StreamedChunk | TaskSnapshot, None]:
    """The task's chunks from offset `start` and its snapshots, in the order they happened,
    ending after its final snapshot (which comes after its last chunk): `stream`, with the
    offsets and the states, through `follower` if given (whose inbox can be interrupted).
    `TaskNotFound` before anything if no task was published as `task_id`."""
    follower = follower or Follower()
    try:
        await follower.follow(task_id, chunks_from=start)
        while True:
            event = await follower.next_event()
            if isinstance(event, TaskError):
                raise event.error
            if isinstance(event, StreamedChunk):
                yield event
            elif isinstance(event, Changed):
                yield event.snapshot
                if event.state in FINAL_STATES:
                    return
    finally:
        follower.close()


async def result(task_id: str, timeout: float | None = None) -> Any:
    """Wait for the task's result, for at most `timeout` seconds (None: for as long as it takes).

    `TaskFailed` (502) if it failed, `TaskRevoked` (409) if it was revoked, `ResultTimeout`
    (504, a `TimeoutError`) if it has not ended in time (it goes on running), `TaskNotFound`
    (404) if no task was published as `task_id`.
    """
    last = await last_change(follow(task_id), task_id, timeout)
    assert last.state in FINAL_STATES
    _raise_unless_succeeded(last)
    return last.result


def _raise_unless_succeeded(final: TaskSnapshot) -> None:
    """`TaskFailed` for a task that failed, `TaskRevoked` for one revoked."""
    if final.state == TaskState.FAILURE:
        raise TaskFailed(final)
    if final.state == TaskState.REVOKED:
        raise TaskRevoked(final)

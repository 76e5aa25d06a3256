"""What Celery would send for a workflow (a chain, group or chord), captured rather than sent.

Celery's canvas sends a workflow a message at a time (a chain's first link, each task of a
group, a chord's header), with the rest carried in those messages, and writes the chord's
counter to the result backend on the way. That is Celery's semantics, and is kept whole here:
`capture(workflow)` lets Celery's own `apply_async` run, but while it runs every task's
`apply_async` (the bridge's `ContextTask`) hands over its call instead of sending it, and the
result backend's client is a pipeline that keeps its writes. What was captured is then sent in
one step with the workflow's record (`quart_celery._client.submitter`): all of it or none, where
Celery's own sending could stop half way and leave a chord without its counter or a group
half sent.

Only the calling thread (its context) captures: every other send goes on as usual.
"""

from __future__ import annotations

import contextvars
import copy
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task
from celery.canvas import Signature, maybe_signature
from celery.canvas import signature as signature_of
from celery.result import AsyncResult, GroupResult

from quart_celery._broker.workflow_records import Command, ResultShape, WorkflowRecord

#: The options of `Task.apply_async` and `Celery.send_task` that say how to send, not what:
#: they are the sender's, not the message's.
SENDING_ONLY = (
    "producer",
    "connection",
    "router",
    "result_cls",
    "publisher",
    "add_to_parent",
    "task_type",
)
WORKFLOW_TASKS = {"celery.chain": "chain", "celery.group": "group", "celery.chord": "chord"}


@dataclass(slots=True)
class Send:
    """A task's `apply_async(args, kwargs, **options)`, as Celery's canvas called it (its id
    among the options)."""

    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]

    @property
    def task_id(self) -> str:
        task_id: str = self.options["task_id"]
        return task_id


@dataclass(slots=True)
class Capture:
    """What is captured on one thread while a workflow is applied."""

    sends: list[Send] = field(default_factory=list)
    pipeline: Any = None

    def send(self, task: Task[Any, Any], args: Any, kwargs: Any, options: dict[str, Any]) -> Any:
        """Keep a task's call; its result, as `apply_async` returns it."""
        options = {name: value for name, value in options.items() if value is not None}
        for name in SENDING_ONLY:
            options.pop(name, None)
        options["task_id"] = task_id = str(options.get("task_id") or uuid.uuid4())
        self.sends.append(Send(task, tuple(args or ()), dict(kwargs or {}), options))
        return task.AsyncResult(task_id)

    def backend_writes(self, client: Any) -> Any:
        """A pipeline (not sent) in place of the result backend's `client`: it keeps Celery's
        writes for the workflow (a chord's size)."""
        if self.pipeline is None:
            self.pipeline = client.pipeline(transaction=False)
        return self.pipeline

    def commands(self) -> list[Command]:
        """The result backend's writes, as Redis commands."""
        if self.pipeline is None:
            return []
        return [tuple(arguments) for arguments, _ in self.pipeline.command_stack]


_capturing: contextvars.ContextVar[Capture | None] = contextvars.ContextVar(
    "quart_celery_capturing", default=None
)


def capturing() -> Capture | None:
    """What this thread is capturing, if it is."""
    return _capturing.get()


@contextmanager
def captured() -> Iterator[Capture]:
    """Capture, rather than send, every task applied in this context meanwhile."""
    capture = Capture()
    token = _capturing.set(capture)
    try:
        yield capture
    finally:
        _capturing.reset(token)


@dataclass(frozen=True, slots=True)
class CapturedWorkflow:
    """A workflow as Celery would send it: its messages' calls, the backend's writes, and its
    record."""

    record: WorkflowRecord
    sends: list[Send]
    commands: list[Command]

    @property
    def carried(self) -> list[tuple[str, str]]:
        """The tasks (id, name) its messages carry to run later (a chain's links, a chord's
        body), rather than sent now."""
        sent = {send.task_id for send in self.sends}
        return [(task_id, name) for task_id, name in self.record.members if task_id not in sent]


def kind_of(workflow: Signature[Any]) -> str | None:
    """ "chain", "group" or "chord" for one of Celery's workflows; None for a task's signature."""
    return WORKFLOW_TASKS.get(str(workflow.task or ""))


def capture(
    celery: Celery, workflow: Signature[Any], workflow_id: str | None = None
) -> CapturedWorkflow:
    """Apply `workflow` as Celery does, capturing what it would send; with `workflow_id`,
    that is its id (Celery's `task_id` for it: a chain's last link, a group, a chord's body).

    Blocks (Celery takes a producer from its pool on the way, though it sends nothing with it):
    run it in the thread pool. `TypeError` for a signature that is no workflow, or a workflow
    with no task.
    """
    kind = kind_of(workflow)
    if kind is None:
        raise TypeError(f"{workflow!r} is no chain, group or chord")
    if celery.conf.task_always_eager:
        raise RuntimeError(
            "task_always_eager runs a workflow where it is sent: apply it directly, or run a worker"
        )
    copied = copy.deepcopy(workflow)  # plain dicts, all the way down
    for task in _tasks_of(copied):
        registered = celery.tasks.get(str(task.get("task")))
        if not getattr(registered, "captures_workflows", False):
            raise TypeError(
                f"{task.get('task')!r} is no task of this app (from its ContextTask): "
                "it cannot be sent as part of a workflow"
            )
        # A task that stores no result could never be counted as ended.
        task.setdefault("options", {})["ignore_result"] = False
    with captured() as capture:
        # No `task_id=None`: a group takes it as its id.
        options: dict[str, Any] = {} if workflow_id is None else {"task_id": workflow_id}
        result = signature_of(copied, app=celery).apply_async(**options)
    if not capture.sends:
        raise TypeError(f"{workflow!r} has no task to run")
    members = _members(celery, capture.sends)
    shape = _shape(result)
    if kind == "group" and isinstance(shape, str):  # Celery sends a group of one as its task
        shape = [shape]
    # Celery gives the id asked for to what it returns, but for a group ending a chain or
    # making a chord's body: the record goes under the id asked for all the same.
    record = WorkflowRecord(workflow_id or str(result.id), kind, tuple(members.items()), shape)
    return CapturedWorkflow(record, capture.sends, capture.commands())


def _tasks_of(signature: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The task signatures of a workflow held as plain dicts (as `deepcopy` makes it)."""
    kind = WORKFLOW_TASKS.get(str(signature.get("task")))
    arguments = signature.get("kwargs") or {}
    if kind == "chord":
        header = arguments.get("header") or []
        if isinstance(header, dict):  # a group's signature
            header = (header.get("kwargs") or {}).get("tasks") or []
        for part in header:
            yield from _tasks_of(part)
        yield from _tasks_of(arguments["body"])
    elif kind is not None:
        for part in arguments.get("tasks") or []:
            yield from _tasks_of(part)
    else:
        yield signature


def _shape(result: AsyncResult[Any] | GroupResult) -> ResultShape:
    """Where the result `apply_async` returned comes from: a task's id, or a group's list."""
    if isinstance(result, GroupResult):
        return [_shape(part) for part in result.results or ()]
    return str(result.id)


def _members(celery: Celery, sends: list[Send]) -> dict[str, str]:
    """Every task of the workflow (id: name), in the order they run: each task sent, the links
    its message carries after it, and the chords' bodies last."""
    members: dict[str, str] = {}
    bodies: list[Signature[Any]] = []
    for send in sends:
        members[send.task_id] = send.task.name
        _add_carried(celery, send.options, members, bodies)
    while bodies:
        _add_signature(celery, bodies.pop(0), members, bodies)
    return members


def _add_carried(
    celery: Celery, options: dict[str, Any], members: dict[str, str], bodies: list[Any]
) -> None:
    """The tasks a message carries to run after it: its chain's links (kept last first) and
    its chord's body."""
    for link in reversed(options.get("chain") or []):
        _add_signature(celery, link, members, bodies)
    body = options.get("chord")
    if body is not None:
        bodies.append(body)


def _add_signature(
    celery: Celery, carried: Any, members: dict[str, str], bodies: list[Any]
) -> None:
    """The tasks of a signature a message carries (a task, or a workflow nested in it)."""
    signature: Any = maybe_signature(carried, app=celery)
    kind = kind_of(signature)
    if kind == "chord":
        header = signature.kwargs.get("header") or signature.tasks
        for part in getattr(header, "tasks", header):
            _add_signature(celery, part, members, bodies)
        bodies.append(signature.kwargs.get("body") or signature.body)
        return
    if kind is not None:
        for part in signature.tasks:
            _add_signature(celery, part, members, bodies)
        return
    task_id = signature.options.get("task_id")
    if task_id is None:
        raise TypeError(f"{signature!r} in the workflow was given no id: it cannot be followed")
    if task_id not in members:
        members[str(task_id)] = str(signature.task)
        _add_carried(celery, signature.options, members, bodies)

"""A workflow sent as JSON (`POST /api/workflows`), read into Celery's canvas, each fault named
by where it is (`group[2].kwargs.x`).

    {"chain": [step, ...]}
    {"group": [step, ...]}
    {"chord": {"header": [step, ...], "body": step}}

A step is an exposed task, `{"name": ..., "kwargs": {...}}` (with `"immutable": true`, it is
given no result), or another workflow. Celery's semantics hold: in a chain each step is given
the previous step's result as its first argument, and a chord's body the list of its header's
results, so that argument of a step given one must not be in its `kwargs`, and is not checked.
Every other argument is checked as `POST /api/tasks` checks it (the task's model, from its
signature); an argument rule (`ArgumentRules`) that reads the argument given is checked only
where the task runs.

Read by hand, not by a pydantic model: a model of a recursive union names a fault by the
variants it tried, where a client needs the one place it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Signature, chain, chord, group
from pydantic import BaseModel, Field, RootModel, ValidationError

from quart_celery._client.exposure import ExposedTask, ExposedTasks
from quart_celery.errors import APIError

KINDS = ("chain", "group", "chord")
STEP_FIELDS = frozenset({"name", "kwargs", "immutable"})
WORKFLOW_SHAPE = '{"chain": [...]}, {"group": [...]} or {"chord": {"header": [...], "body": ...}}'
SHAPE = f'a task {{"name", "kwargs"}} or a workflow {WORKFLOW_SHAPE}'


class TaskStep(BaseModel):
    """A run of an exposed task: its name, and its arguments as `POST /api/tasks` takes them.
    Given the result before it as its first argument (in a chain, a chord's body), unless
    immutable; that argument is then left out of `kwargs`."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    immutable: bool = False


class ChainStep(BaseModel):
    """Steps run one after another, each given the result before it."""

    chain: list[Step] = Field(min_length=1)


class GroupStep(BaseModel):
    """Steps run side by side; the result is the list of theirs, in order."""

    group: list[Step] = Field(min_length=1)


class ChordParts(BaseModel):
    """A group (`header`), then `body`, given the list of the header's results."""

    header: list[Step] = Field(min_length=1)
    body: Step


class ChordStep(BaseModel):
    """A group, then a step given the list of its results (map, then reduce)."""

    chord: ChordParts


Step = TaskStep | ChainStep | GroupStep | ChordStep


class WorkflowRequest(RootModel[ChainStep | GroupStep | ChordStep]):
    """A workflow: a chain, a group or a chord of steps, each a task or a workflow (for the
    OpenAPI document: the view reads the body itself, to name where a fault is)."""


for _model in (ChainStep, GroupStep, ChordParts, ChordStep, WorkflowRequest):
    _model.model_rebuild()


class InvalidWorkflow(APIError):
    """422: the workflow cannot run as sent; `where` it is wrong, and why. Nothing was sent."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(422, "invalid_workflow", f"{where}: {problem}")
        self.where = where


@dataclass(frozen=True, slots=True)
class Limits:
    """How large a workflow one request may send: tasks, and depth of nesting."""

    max_tasks: int
    max_depth: int


def read_workflow(body: Any, exposed: ExposedTasks, limits: Limits) -> Signature[Any]:
    """The canvas the JSON `body` describes; `InvalidWorkflow` (422) where it is wrong."""
    if not isinstance(body, dict):
        raise InvalidWorkflow("workflow", f"must be {WORKFLOW_SHAPE}")
    return _Reader(exposed, limits).workflow(body, "", 1, given_result=False)


class _Reader:
    def __init__(self, exposed: ExposedTasks, limits: Limits) -> None:
        self.exposed = exposed
        self.limits = limits
        self.tasks = 0

    def step(self, value: Any, where: str, depth: int, given_result: bool) -> Signature[Any]:
        """A task or a nested workflow at `where`."""
        if not isinstance(value, dict):
            raise InvalidWorkflow(where, f"must be {SHAPE}")
        if "name" in value:
            return self.task(value, where, given_result)
        return self.workflow(value, where, depth, given_result)

    def workflow(
        self, value: dict[str, Any], where: str, depth: int, given_result: bool
    ) -> Signature[Any]:
        """A chain, group or chord at `where`, `depth` deep; its first steps are given a result
        if `given_result`."""
        if depth > self.limits.max_depth:
            raise InvalidWorkflow(
                where or "workflow",
                f"workflows may nest {self.limits.max_depth} deep at most",
            )
        kinds = [key for key in value if key in KINDS]
        if len(value) != 1 or len(kinds) != 1:
            unknown = [key for key in value if key not in KINDS]
            problem = (
                f"{unknown[0]!r} is no kind of workflow" if unknown else "has more than one kind"
            )
            raise InvalidWorkflow(
                where or "workflow", f'{problem}: give one of "chain", "group", "chord"'
            )
        kind = kinds[0]
        here = f"{where}.{kind}" if where else kind
        inner = value[kind]
        if kind == "chord":
            return self.chord(inner, here, depth, given_result)
        steps = self.steps(inner, here)
        if kind == "chain":
            return chain(
                *(
                    self.step(part, f"{here}[{i}]", depth + 1, given_result if i == 0 else True)
                    for i, part in enumerate(steps)
                )
            )
        return group(
            [
                self.step(part, f"{here}[{i}]", depth + 1, given_result)
                for i, part in enumerate(steps)
            ]
        )

    def chord(self, value: Any, here: str, depth: int, given_result: bool) -> Signature[Any]:
        """A chord: its header's steps, and its body, given their results."""
        if not isinstance(value, dict):
            raise InvalidWorkflow(here, 'must be an object {"header": [...], "body": step}')
        unknown = sorted(set(value) - {"header", "body"})
        if unknown:
            raise InvalidWorkflow(
                f"{here}.{unknown[0]}", 'is not part of a chord: "header", "body"'
            )
        if "body" not in value:
            raise InvalidWorkflow(here, "has no body: the step given the header's results")
        header = [
            self.step(part, f"{here}.header[{i}]", depth + 1, given_result)
            for i, part in enumerate(self.steps(value.get("header"), f"{here}.header"))
        ]
        body = self.step(value["body"], f"{here}.body", depth + 1, True)
        return chord(header, body)

    @staticmethod
    def steps(value: Any, where: str) -> list[Any]:
        """The list of steps at `where`: at least one."""
        if not isinstance(value, list):
            raise InvalidWorkflow(where, "must be a list of steps")
        if not value:
            raise InvalidWorkflow(where, "must have at least one step")
        return value

    def task(self, value: dict[str, Any], where: str, given_result: bool) -> Signature[Any]:
        """An exposed task's signature, its arguments checked; given the step before's result
        as its first argument if `given_result` and not immutable."""
        unknown = sorted(set(value) - STEP_FIELDS)
        if unknown:
            raise InvalidWorkflow(
                f"{where}.{unknown[0]}", 'is not part of a step: "name", "kwargs", "immutable"'
            )
        self.tasks += 1
        if self.tasks > self.limits.max_tasks:
            raise InvalidWorkflow(
                where, f"a workflow may have {self.limits.max_tasks} tasks at most"
            )
        name, kwargs = value["name"], value.get("kwargs", {})
        immutable = value.get("immutable", False)
        if not isinstance(name, str) or name not in self.exposed.by_name:
            raise InvalidWorkflow(f"{where}.name", f"there is no task {name!r} to run")
        if not isinstance(kwargs, dict):
            raise InvalidWorkflow(f"{where}.kwargs", "must be an object of named arguments")
        if not isinstance(immutable, bool):
            raise InvalidWorkflow(f"{where}.immutable", "must be true or false")
        exposed = self.exposed.by_name[name]
        given = given_result and not immutable
        first = next(iter(exposed.arguments.model_fields), None) if given else None
        if given and first is None:
            raise InvalidWorkflow(
                where,
                f"{name!r} takes no argument, and would be given the result before it: "
                'mark it "immutable": true',
            )
        if first is not None and first in kwargs:
            raise InvalidWorkflow(
                f"{where}.kwargs.{first}",
                "is given by the result before it: leave it out, or mark the step "
                '"immutable": true',
            )
        checked = _checked(exposed, kwargs, first, f"{where}.kwargs")
        return exposed.task.si(**checked) if immutable else exposed.task.s(**checked)


def _checked(
    exposed: ExposedTask, kwargs: dict[str, Any], given: str | None, where: str
) -> dict[str, Any]:
    """`kwargs`, checked against the task's model (all but the argument `given` it); as the
    model gives them back (with defaults) where nothing is given."""
    try:
        model = exposed.arguments.model_validate(kwargs)
    except ValidationError as error:
        problems = [
            problem
            for problem in error.errors()
            if not (
                given is not None and problem["loc"] == (given,) and problem["type"] == "missing"
            )
        ]
        if problems:
            problem = problems[0]
            place = ".".join(str(part) for part in problem["loc"])
            message = problem["msg"].removeprefix("Value error, ")
            raise InvalidWorkflow(f"{where}.{place}" if place else where, f"{message}.") from None
        return kwargs
    checked: dict[str, Any] = model.model_dump()
    return checked

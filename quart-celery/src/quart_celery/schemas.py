"""The JSON the API gives, declared once for validation and for the OpenAPI document.

What it takes, the runs of the exposed tasks, is derived from the tasks themselves
(`quart_celery._client.exposure`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from quart_celery.states import STATE_DESCRIPTION, TaskState


class Strict(BaseModel):
    """Types as declared (no "5" for 5), no field that is not declared, and no NaN or infinity
    for a number (JSON has neither)."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class TaskAccepted(BaseModel):
    """A task accepted to run: where to follow it."""

    id: str
    name: str
    state: TaskState
    url: str
    websocket: str


class Progress(BaseModel):
    """How far a task is: `current` steps done of `total`."""

    current: int
    total: int


class TaskFailure(BaseModel):
    """Why a task failed: the type and message of the exception it raised."""

    type: str
    message: str


class DebugTaskFailure(TaskFailure):
    """A failure with its traceback: only in debug mode."""

    traceback: str | None


class TaskSnapshot(BaseModel):
    """A task as it stands: its state, and its progress, result, error or meta where it has one."""

    id: str
    name: str
    state: Annotated[TaskState | str, Field(description=STATE_DESCRIPTION)]
    progress: Annotated[
        Progress | None,
        Field(description="While the task records PROGRESS with a `current` and a `total`."),
    ]
    result: Annotated[Any, Field(description="The task's result, on SUCCESS.")]
    error: Annotated[
        SerializeAsAny[TaskFailure] | None, Field(description="Why it failed, on FAILURE.")
    ]
    meta: Annotated[
        Any,
        Field(
            description="The JSON the task recorded with its current state (`update_state`'s "
            "`meta`): null for Celery's own states and where it recorded none."
        ),
    ]


class ErrorDetail(BaseModel):
    """A stable code for programs, and a sentence for people."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class Healthy(BaseModel):
    """The process is up."""

    status: Literal["ok"]


class Ready(BaseModel):
    """Everything the app needs answers; `checks` says how each part answered."""

    status: Literal["ready"]
    checks: dict[str, str]


class NotReady(ErrorBody):
    """Something the app needs does not answer; `checks` says which."""

    checks: dict[str, str]

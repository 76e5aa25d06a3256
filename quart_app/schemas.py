"""The JSON the API takes and gives, declared once for validation and for the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, SerializeAsAny, model_validator

from quart_app.states import TaskState

#: At most this many seconds of planned work per task (steps * delay).
MAX_PLANNED_SECONDS = 600
Message = Annotated[str, Field(min_length=1, max_length=1000)]
Delay = Annotated[float, Field(ge=0, le=10, description="seconds")]


class Strict(BaseModel):
    """Types as declared (no "5" for 5) and no field that is not declared."""

    model_config = ConfigDict(strict=True, extra="forbid")


class SimpleTaskKwargs(Strict):
    """The arguments of `simple_task`."""

    message: Message


class ProgressTaskKwargs(Strict):
    """The arguments of `progress_task`."""

    steps: Annotated[int, Field(ge=1, le=1000)]
    delay: Delay = 0.1

    @model_validator(mode="after")
    def bounded_work(self) -> ProgressTaskKwargs:
        """Refuse more than ten minutes of planned work."""
        if self.steps * self.delay > MAX_PLANNED_SECONDS:
            raise ValueError(
                f"steps * delay is {self.steps * self.delay:g} s of work; "
                f"at most {MAX_PLANNED_SECONDS} s are allowed"
            )
        return self


class AsyncTaskKwargs(Strict):
    """The arguments of `async_task`."""

    message: Message
    delay: Delay = 0.0


class FailingTaskKwargs(Strict):
    """The arguments of `failing_task`."""

    message: Message


class SimpleTaskRequest(Strict):
    """A run of `simple_task`."""

    name: Literal["simple_task"]
    kwargs: SimpleTaskKwargs


class ProgressTaskRequest(Strict):
    """A run of `progress_task`."""

    name: Literal["progress_task"]
    kwargs: ProgressTaskKwargs


class AsyncTaskRequest(Strict):
    """A run of `async_task`."""

    name: Literal["async_task"]
    kwargs: AsyncTaskKwargs


class FailingTaskRequest(Strict):
    """A run of `failing_task`."""

    name: Literal["failing_task"]
    kwargs: FailingTaskKwargs


class TaskRequest(RootModel[Any]):
    """A task to run: its name, and its keyword arguments as that task declares them."""

    root: Annotated[
        SimpleTaskRequest | ProgressTaskRequest | AsyncTaskRequest | FailingTaskRequest,
        Field(discriminator="name"),
    ]


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
    """A task as it stands: its state, and its progress, result or error where it has one."""

    id: str
    name: str
    state: TaskState
    progress: Progress | None
    result: Any
    error: SerializeAsAny[TaskFailure] | None


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

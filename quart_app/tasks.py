"""The example tasks, bound to the placeholder Celery instance and exposed to the JSON API.

Each has a registered name equal to its function name, so a client can send it by name and the
name survives a move to another module. Arguments and results are JSON primitives: that is all
the JSON serializer carries, and it keeps tasks callable from any client. What a client may
send is read off each signature: the type hints (with their bounds) and the defaults.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Self

from celery import Task
from pydantic import Field, model_validator
from quart import current_app
from quart_celery import ArgumentRules, TaskState, checkpoint, expose, send_chunk

from quart_app.extensions import celery

#: At most this many seconds of planned work per task (steps * delay).
MAX_PLANNED_SECONDS = 600

Message = Annotated[str, Field(min_length=1, max_length=1000)]
Steps = Annotated[int, Field(ge=1, le=1000)]
Delay = Annotated[float, Field(ge=0, le=10, description="seconds")]
Number = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]
# Bounded by the largest square of a `Number`, so that `total` takes whatever `square`s a chord
# gives it, and no client has a worker add up numbers of thousands of digits.
Numbers = Annotated[
    list[Annotated[int, Field(ge=-(10**12), le=10**12)]],
    Field(max_length=1000),
]


class AtMostTenMinutes(ArgumentRules):
    """`steps * delay`, the seconds of work planned, may be at most 600."""

    steps: int
    delay: float

    @model_validator(mode="after")
    def bounded_work(self) -> Self:
        """Refuse more than ten minutes of planned work."""
        if self.steps * self.delay > MAX_PLANNED_SECONDS:
            raise ValueError(
                f"steps * delay is {self.steps * self.delay:g} s of work; "
                f"at most {MAX_PLANNED_SECONDS} s are allowed"
            )
        return self


@expose
@celery.task(name="simple_task")
def simple_task(message: Message) -> str:
    """Return `message` unchanged: the smallest round trip through the queue."""
    return message


@expose(rules=AtMostTenMinutes)
@celery.task(name="progress_task", bind=True)
def progress_task(self: Task[Any, Any], steps: Steps, delay: Delay = 0.1) -> dict[str, int]:
    """Work through `steps` steps of `delay` seconds, recording PROGRESS after each, and
    stopping there if it was cancelled (`DELETE /api/tasks/<id>`)."""
    for current in range(1, steps + 1):
        time.sleep(delay)
        # Called directly rather than as a task, there is no task id to record progress under.
        if self.request.id is not None:
            self.update_state(state=TaskState.PROGRESS, meta={"current": current, "total": steps})
        checkpoint()
    return {"steps": steps}


@expose
@celery.task(name="async_task")
async def async_task(message: Message, delay: Delay = 0.0) -> dict[str, str]:
    """Await `delay` seconds, then say which app's context the task ran in."""
    await asyncio.sleep(delay)
    return {"message": message, "app": current_app.name}


class AtMostTenMinutesOfWords(ArgumentRules):
    """A word every `delay` seconds may take at most 600 seconds in all."""

    text: str
    delay: float

    @model_validator(mode="after")
    def bounded_streaming(self) -> Self:
        """Refuse more than ten minutes of words."""
        seconds = len(self.text.split()) * self.delay
        if seconds > MAX_PLANNED_SECONDS:
            raise ValueError(f"{seconds:g} s of words; at most {MAX_PLANNED_SECONDS} s are allowed")
        return self


@expose(rules=AtMostTenMinutesOfWords)
@celery.task(name="stream_text")
async def stream_text(text: Message, delay: Delay = 0.0) -> str:
    """Stream `text` word by word, awaiting `delay` seconds between words, and return it: how
    a language model's tokens, or a report's rows, reach a page as they are made. Clients
    get each word as a chunk (`/ws/tasks/<id>`, `GET /api/tasks/<id>/stream`)."""
    for word in text.split():
        send_chunk(word)
        await asyncio.sleep(delay)
    return text


@expose
@celery.task(name="failing_task")
def failing_task(message: Message) -> None:
    """Raise `ValueError(message)`: shows how a task's failure reaches the client."""
    raise ValueError(message)


@expose
@celery.task(name="square")
def square(x: Number) -> int:
    """`x` squared: the map step of a workflow, as in the front page's chord with `total`."""
    return x * x


@expose
@celery.task(name="total")
def total(values: Numbers) -> int:
    """The sum of `values`: a chord's body (reduce), given the list of its header's results."""
    return sum(values)

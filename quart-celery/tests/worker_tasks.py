"""Probe tasks: the tasks the bridge's tests run, bound to the probe app's placeholder.

The probe app lists this module in its Celery's `include`, so that the servers and workers the
tests start know these tasks too.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Annotated, Any, Self
from weakref import WeakKeyDictionary

import flask
import quart
from celery import Task, chord
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from pydantic import Field, model_validator
from redis.asyncio import Redis

from quart_celery import ArgumentRules, TooManyChunks, checkpoint, expose, send_chunk, send_workflow
from tests.probe_app import celery

Text = Annotated[str, Field(min_length=1, max_length=100)]
Seconds = Annotated[float, Field(ge=0, le=5)]

# One client per event loop, as an app would cache one: a client is bound to the loop it was
# made on, so one cache across loops would fail, and a new loop per task would close it.
_clients: WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = WeakKeyDictionary()


class AtMostAMinute(ArgumentRules):
    """`steps * delay` may be at most 60 seconds."""

    steps: int
    delay: float

    @model_validator(mode="after")
    def at_most_a_minute(self) -> Self:
        """Refuse more than a minute of work."""
        if self.steps * self.delay > 60:
            raise ValueError(f"steps * delay is {self.steps * self.delay:g} s; at most 60")
        return self


@expose
@celery.task(name="tests.echo")
def echo(message: Text) -> str:
    """Return `message`: the smallest round trip."""
    return message


@expose
@celery.task(name="tests.square")
def square(x: int) -> int:
    """`x` squared: a workflow's step."""
    return x * x


@expose
@celery.task(name="tests.total")
def total(values: list[int]) -> int:
    """The sum of `values`: a chord's body."""
    return sum(values)


@expose
@celery.task(name="tests.async_square")
async def async_square(x: int, delay: Seconds = 0.0) -> int:
    """`x` squared, after `delay` seconds on the event loop: a step that can be cancelled."""
    await asyncio.sleep(delay)
    return x * x


@expose
@celery.task(name="tests.fans_out")
def fans_out(count: Annotated[int, Field(ge=1, le=100)]) -> str:
    """Send a chord of `count` squares and their total from inside a task; its id."""
    return send_workflow(chord([square.s(x=x) for x in range(count)], total.s()))


@expose(rules=AtMostAMinute)
@celery.task(name="tests.count", bind=True)
def count(
    self: Task[Any, Any], steps: Annotated[int, Field(ge=1, le=1000)], delay: Seconds = 0.0
) -> dict[str, int]:
    """Count to `steps`, a step every `delay` seconds, recording PROGRESS after each, and
    stopping there if it was cancelled."""
    for current in range(1, steps + 1):
        time.sleep(delay)
        self.update_state(state="PROGRESS", meta={"current": current, "total": steps})
        checkpoint()
    return {"steps": steps}


@expose
@celery.task(name="tests.async_echo")
async def async_echo(message: Text, delay: Seconds = 0.0) -> dict[str, str]:
    """Await `delay` seconds; return `message` and the name of the app whose context it ran in."""
    await asyncio.sleep(delay)
    return {"message": message, "app": quart.current_app.name}


@expose
@celery.task(name="tests.fail")
def fail(message: Text) -> None:
    """Raise `ValueError(message)`."""
    raise ValueError(message)


@expose
@celery.task(name="tests.uploads", bind=True)
def uploads(self: Task[Any, Any], files: list[Text]) -> dict[str, int]:
    """Record a state of its own, UPLOADING, with a new meta for each file."""
    for file in files:
        for percent in (0, 100):
            self.update_state(state="UPLOADING", meta={"file": file, "percent": percent})
    self.update_state(state="PROGRESS", meta={"current": 1, "total": 1, "status": "all sent"})
    return {"uploaded": len(files)}


@expose
@celery.task(name="tests.stays_in", bind=True)
def stays_in(self: Task[Any, Any], state: Text, meta: dict[str, Any] | None = None) -> None:
    """Record `state` with `meta`, then end without a state of Celery's (`Ignore`)."""
    self.update_state(state=state, meta=meta)
    raise Ignore()


@expose
@celery.task(name="tests.spawn")
def spawn(message: Text) -> str:
    """Start `tests.echo` with `message`, as a task of a task; return its id."""
    return str(echo.delay(message).id)


@celery.task(name="tests.web_app_name")
def web_app_name() -> str:
    """The name of the Quart app whose context a sync task runs in."""
    return quart.current_app.name


@celery.task(name="tests.runs_its_own_loop")
def runs_its_own_loop() -> str:
    """A sync task may run a loop of its own: it is not called on the worker's loop."""

    async def name() -> str:
        return quart.current_app.name

    return asyncio.run(name())


@celery.task(name="tests.calls_a_task_directly")
async def calls_a_task_directly() -> dict[str, str]:
    """An async task that calls another async task as a function, from inside a loop."""
    result: dict[str, str] = async_echo("inner")
    return result


@celery.task(name="tests.cached_client")
async def cached_client(key: str) -> dict[str, int]:
    """Count with a Redis client cached for this loop; say which process, thread and loop ran."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = Redis.from_url(quart.current_app.config["REDIS_URL"])
    count = await client.incr(key)
    return {
        "pid": os.getpid(),
        "thread": threading.get_ident(),
        "loop": id(loop),
        "client": id(client),
        "count": count,
    }


@celery.task(name="tests.retried_once", bind=True)
def retried_once(self: Task[Any, Any]) -> dict[str, Any]:
    """Retry once, then report the request the task saw: its id, eagerness and retries."""
    if self.request.retries == 0:
        raise self.retry(countdown=0, exc=RuntimeError("again"))
    return {"id": self.request.id, "eager": self.request.is_eager, "retries": self.request.retries}


@celery.task(name="tests.increment_later")
async def increment_later(key: str, seconds: float) -> None:
    """Wait, then count: shows whether a task stopped by its time limit really stopped."""
    await asyncio.sleep(seconds)
    client = Redis.from_url(quart.current_app.config["REDIS_URL"])
    await client.incr(key)
    await client.aclose()


@celery.task(name="tests.sleeps_then_cleans_up")
async def sleeps_then_cleans_up(key: str, seconds: float) -> None:
    """Sleep; whatever ends the sleep, note in `key` that the `finally` block ran."""
    try:
        await asyncio.sleep(seconds)
    finally:
        client = Redis.from_url(quart.current_app.config["REDIS_URL"])
        await client.set(key, "cleaned up")
        await client.aclose()


@celery.task(name="tests.acks_late_always", acks_late=True)
def acks_late_always() -> None:
    """A task that sets an option itself, which the settings must not override."""


@celery.task(name="tests.flask_app_name")
def flask_app_name() -> str:
    """The name of the Flask app whose context a sync task runs in."""
    return flask.current_app.name


@celery.task(name="tests.flask_app_name_async")
async def flask_app_name_async() -> str:
    """The name of the Flask app whose context an async task runs in."""
    await asyncio.sleep(0)
    return flask.current_app.name


@celery.task(name="tests.own_context", bind=True)
async def own_context(self: Task[Any, Any], delay: float) -> dict[str, str]:
    """Keep this task's id in `g`, await, then say what `g`, `self.request` and the app were:
    each task's own, however many interleave on the loop."""
    quart.g.task_id = self.request.id
    await asyncio.sleep(delay)
    return {"g": quart.g.task_id, "request": self.request.id, "app": quart.current_app.name}


@celery.task(name="tests.spin")
def spin(seconds: float) -> float:
    """Keep a CPU busy for `seconds`, in Python (holding the GIL as much as it may)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


@celery.task(name="tests.notes_its_end")
async def notes_its_end(key: str, seconds: float) -> str:
    """Sleep `seconds`; push onto the list `key` how the sleep ended (`soft limit` or
    `cancelled`), then `finally`."""
    client = Redis.from_url(quart.current_app.config["REDIS_URL"])
    try:
        await asyncio.sleep(seconds)
        await client.rpush(key, "slept")
        return "slept"
    except SoftTimeLimitExceeded:
        await client.rpush(key, "soft limit")
        raise
    except asyncio.CancelledError:
        await client.rpush(key, "cancelled")
        raise
    finally:
        await client.rpush(key, "finally")
        await client.aclose()


@celery.task(name="tests.async_progress", bind=True)
async def async_progress(self: Task[Any, Any], steps: int, delay: float) -> dict[str, int]:
    """Count to `steps` as `tests.count` does, awaiting `delay` between steps."""
    for current in range(1, steps + 1):
        await asyncio.sleep(delay)
        self.update_state(state="PROGRESS", meta={"current": current, "total": steps})
    return {"steps": steps}


@celery.task(name="tests.async_retried_once", bind=True)
async def async_retried_once(self: Task[Any, Any]) -> dict[str, Any]:
    """`tests.retried_once`, as a coroutine."""
    await asyncio.sleep(0)
    if self.request.retries == 0:
        raise self.retry(countdown=0, exc=RuntimeError("again"))
    return {"id": self.request.id, "retries": self.request.retries}


@celery.task(name="tests.long_the_first_time")
async def long_the_first_time(key: str, seconds: float) -> str:
    """Push `started` onto the list `key`; the first time, sleep `seconds` (noting `cancelled`
    if cancelled); then push `finally`. Shows a task that was cut short running again."""
    client = Redis.from_url(quart.current_app.config["REDIS_URL"])
    first = await client.rpush(key, "started") == 1
    try:
        if first:
            await asyncio.sleep(seconds)
        return "first" if first else "again"
    except asyncio.CancelledError:
        await client.rpush(key, "cancelled")
        raise
    finally:
        await client.rpush(key, "finally")
        await client.aclose()


@celery.task(name="tests.rate_limited", rate_limit="4/s")
async def rate_limited() -> float:
    """Say when it ran: at most four a second start."""
    return time.time()


@celery.task(name="tests.blocks_the_loop")
async def blocks_the_loop(seconds: float) -> None:
    """Block the event loop for `seconds`, as a blocking call in a coroutine does."""
    time.sleep(seconds)


@celery.task(name="tests.parent_of_me", bind=True)
def parent_of_me(self: Task[Any, Any]) -> str | None:
    """The id of the task that sent this one."""
    return self.request.parent_id


@celery.task(name="tests.sends_a_child", bind=True)
async def sends_a_child(self: Task[Any, Any]) -> dict[str, Any]:
    """Send `tests.parent_of_me` from a coroutine; say what Celery took for the current task."""
    from celery import current_task

    await asyncio.sleep(0)
    return {
        "child": parent_of_me.delay().id,
        "current": current_task.request.id if current_task else None,
    }


@celery.task(name="tests.cancels_itself")
async def cancels_itself() -> None:
    """Get cancelled by nobody's request, as when a library cancels what a task awaits."""
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(1)


@celery.task(name="tests.async_autoretried", autoretry_for=(KeyError,), max_retries=1)
async def async_autoretried() -> str:
    """An `async def` task behind Celery's `autoretry_for` wrapper."""
    await asyncio.sleep(0)
    return "ran"


@expose
@celery.task(name="tests.stream_words")
def stream_words(text: Text, delay: Seconds = 0.0) -> str:
    """Stream `text` word by word (sync), sleeping `delay` between words; return `text`."""
    for word in text.split():
        send_chunk(word)
        time.sleep(delay)
    return text


@expose
@celery.task(name="tests.stream_count")
async def stream_count(count: Annotated[int, Field(ge=0, le=100_000)], delay: Seconds = 0.0) -> int:
    """Stream 0, 1, ..., count - 1 (async), sleeping `delay` between; return `count`."""
    for number in range(count):
        send_chunk(number)
        if delay:
            await asyncio.sleep(delay)
    return count


@expose
@celery.task(name="tests.stream_yielded")
async def stream_yielded(count: Annotated[int, Field(ge=0, le=1000)]) -> Any:
    """An async generator task: stream what it yields, `{"n": 0}`, `{"n": 1}`, ..."""
    for number in range(count):
        yield {"n": number}
        await asyncio.sleep(0)


@expose
@celery.task(name="tests.stream_with_progress", bind=True)
def stream_with_progress(self: Task[Any, Any], steps: Annotated[int, Field(ge=1, le=100)]) -> int:
    """Stream a chunk, then record PROGRESS, for each step: states and chunks interleaved."""
    for step in range(steps):
        send_chunk(f"chunk {step}")
        self.update_state(state="PROGRESS", meta={"current": step + 1, "total": steps})
    return steps


@celery.task(name="tests.stream_with_progress_async", bind=True)
async def stream_with_progress_async(self: Task[Any, Any], steps: int) -> int:
    """`stream_with_progress`, as a coroutine on the async pool."""
    for step in range(steps):
        send_chunk(f"chunk {step}")
        self.update_state(state="PROGRESS", meta={"current": step + 1, "total": steps})
        await asyncio.sleep(0)
    return steps


@celery.task(name="tests.streams_past_its_time_limit", bind=True)
async def streams_past_its_time_limit(self: Task[Any, Any]) -> None:
    """Stream a chunk and sleep past a hard time limit; cancelled, stream a chunk and store a
    state all the same: neither may land after the failure the worker stores."""
    send_chunk("before its limit")
    try:
        await asyncio.sleep(10)
    finally:
        send_chunk("after its limit")
        self.update_state(state="PROGRESS", meta={"after": "its limit"})


@celery.task(name="tests.stream_then_fail")
def stream_then_fail(count: int) -> None:
    """Stream `count` chunks, then fail."""
    for number in range(count):
        send_chunk(number)
    raise ValueError("failed after streaming")


@celery.task(name="tests.stream_past_the_cap")
def stream_past_the_cap() -> int:
    """Stream until `STREAM_MAX_CHUNKS` refuses one; return how many were taken."""
    sent = 0
    while True:
        try:
            send_chunk(sent)
        except TooManyChunks:
            return sent
        sent += 1


@celery.task(name="tests.stream_not_json")
def stream_not_json() -> str:
    """Try to stream what is not JSON; return the error's type."""
    try:
        send_chunk(object())
    except TypeError as error:
        return type(error).__name__
    return "sent"


@celery.task(name="tests.stream_and_retry", bind=True, max_retries=1)
def stream_and_retry(self: Task[Any, Any]) -> int:
    """Stream two chunks, then retry once: the second run's come after the first's."""
    send_chunk(f"run {self.request.retries} a")
    send_chunk(f"run {self.request.retries} b")
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return self.request.retries

"""Tasks only the tests use, bound to the same placeholder as the app's own.

A worker started by the tests loads them with `--include tests.worker_tasks`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any
from weakref import WeakKeyDictionary

import flask
import quart
from celery import Task
from redis.asyncio import Redis

from quart_app.extensions import celery
from quart_app.tasks import async_task

# One client per event loop, as an app would cache one: a client is bound to the loop it was
# made on, so one cache across loops would fail, and a new loop per task would close it.
_clients: WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = WeakKeyDictionary()


@celery.task(name="tests.quart_app_name")
def quart_app_name() -> str:
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
    result: dict[str, str] = async_task("inner")
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

"""The Celery factory: configure the placeholder from a web app and run tasks in its context.

`quart_app.extensions.celery` is created bare at import time, so tasks can bind to it without
connecting anywhere. `configure_celery(app)` fills in its settings from the app's `CELERY_*`
keys and binds its tasks to the app; every task then runs inside the app's context, so
`current_app` works in tasks as it does in views, for sync and `async def` tasks alike.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, ClassVar, TypeAlias

from celery import Celery, Task, signals
from flask import Flask
from quart import Quart

from factories.configuration import (
    CELERY_PREFIX,
    DEFAULT_REDIS_URL,
    DEFAULT_RESULT_EXPIRES,
    ConfigurationError,
    celery_name,
    check_setting,
)
from factories.event_loops import call_outside_loop, close_event_loops, thread_runner
from quart_app.extensions import celery

WebApp: TypeAlias = Quart | Flask

# Messages and results travel as JSON only: a pickle accepted from the broker runs code.
JSON_ONLY: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
}
_JSON_NAMES = frozenset({"json", "application/json"})


class ContextTask(Task[Any, Any]):
    """The base of every task: runs the task inside its web app's context.

    An `async def` task is awaited on the calling thread's own event loop (see
    `factories.event_loops`); a sync task runs on the thread itself, outside any loop, so it may
    call `asyncio.run` as usual. Teardown handlers run after every task, with its exception.
    """

    #: The app whose context tasks run in; `configure_celery` sets it.
    web_app: ClassVar[WebApp | None] = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        app = self.web_app
        if app is None:
            raise RuntimeError(
                f"task {self.name!r} was called before configure_celery(app) bound it to an app"
            )
        return call_outside_loop(partial(_call_in_app_context, app, self.run, args, kwargs))


def configure_celery(app: WebApp) -> Celery:
    """Configure the placeholder Celery instance from `app`'s config; return that instance.

    Reads `CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND` and any other Celery setting in the
    `CELERY_` namespace (both URLs fall back to `REDIS_URL`). Takes a Quart or a Flask app, and
    may be called again: with the same settings nothing changes; with others, connections made
    under the old ones are dropped.
    """
    settings = celery_settings(app.config)
    task_cls = celery.Task
    if not issubclass(task_cls, ContextTask):
        raise ConfigurationError("task_cls", f"{task_cls!r} must derive from {ContextTask!r}")
    # `configured` is public Celery API that celery-types leaves out.
    configured: bool = celery.configured  # type: ignore[attr-defined]
    if configured and any(celery.conf.get(key) != value for key, value in settings.items()):
        _drop_connections(celery)
    celery.config_from_object(settings, force=True)
    task_cls.web_app = app
    app.extensions["celery"] = celery
    for signal in (signals.worker_process_shutdown, signals.worker_shutdown):
        signal.connect(_close_event_loops, weak=False, dispatch_uid=__name__)
    return celery


def celery_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return Celery's settings for an app's `config`: its `CELERY_*` keys over our defaults."""
    redis_url = check_setting("REDIS_URL", config.get("REDIS_URL") or DEFAULT_REDIS_URL)
    settings: dict[str, Any] = {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "result_expires": DEFAULT_RESULT_EXPIRES,
        "task_track_started": True,
        # Keep retrying the broker at start-up, as Celery 5 does, without its warning.
        "broker_connection_retry_on_startup": True,
        **JSON_ONLY,
    }
    for key, value in config.items():
        if key.startswith(CELERY_PREFIX) and value is not None:
            settings[celery_name(key)] = check_setting(key, value)
    for name, required in JSON_ONLY.items():
        value = settings[name]
        names = {value} if isinstance(value, str) else set(value or ())
        if not names or not names <= _JSON_NAMES:
            key = CELERY_PREFIX + name.upper()
            raise ConfigurationError(key, f"must be {required!r}: only JSON is accepted")
    return settings


def _call_in_app_context(
    app: WebApp, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call a task's body inside `app`'s context, awaiting it if it is a coroutine."""
    context = contextvars.copy_context()
    pop_app_context = _push_app_context(app, context)
    try:
        result = context.run(function, *args, **kwargs)
        if inspect.isawaitable(result):
            result = thread_runner().run(_as_coroutine(result), context=context)
    except BaseException as error:
        pop_app_context(error)
        raise
    pop_app_context(None)
    return result


def _push_app_context(
    app: WebApp, context: contextvars.Context
) -> Callable[[BaseException | None], None]:
    """Push `app`'s context into `context`; return the function that pops it.

    Quart's app context is async-only, so it is pushed and popped on this thread's loop; both
    must happen in the same `contextvars.Context` as the task body for `current_app` to work.
    """
    if isinstance(app, Quart):
        runner = thread_runner()
        quart_context = app.app_context()
        runner.run(quart_context.push(), context=context)
        return lambda error: runner.run(quart_context.pop(error), context=context)
    flask_context = app.app_context()
    context.run(flask_context.push)
    return lambda error: context.run(flask_context.pop, error)


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _drop_connections(instance: Celery) -> None:
    """Forget the broker pools and close the result backends made under earlier settings.

    Celery makes both on first use and never reads its settings again, so after a change of
    broker or backend it would otherwise go on using the old ones. The broker pools belong to
    kombu, which shares them by URL, so they are forgotten here, not closed.
    """
    state = vars(instance)
    state["_pool"] = None
    amqp = state.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    for backend in (state.get("_backend_cache"), getattr(state.get("_local"), "backend", None)):
        client = getattr(backend, "client", None)  # a Redis backend's own connection pool
        if client is not None:
            client.connection_pool.disconnect()
    state["_backend_cache"] = None
    state["_local"] = threading.local()


def _close_event_loops(**_: Any) -> None:
    close_event_loops()


__all__ = ["ContextTask", "celery_settings", "configure_celery"]

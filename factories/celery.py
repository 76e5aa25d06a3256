"""The Celery factory: configure the placeholder from a web app and run tasks in its context.

`quart_app.extensions.celery` is created bare at import time, so tasks can bind to it without
connecting anywhere. `configure_celery(app)` fills in its settings from the app's `CELERY_*`
keys and binds its tasks to the app; every task then runs inside the app's context, so
`current_app` works in tasks as it does in views, for sync and `async def` tasks alike.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, ClassVar, TypeAlias

from celery import Celery, Task, signals, states
from celery.worker import state as worker_state
from celery.worker.request import Request
from flask import Flask
from quart import Quart

from factories.backends import BACKENDS
from factories.configuration import (
    APP_OPTIONS,
    CELERY_PREFIX,
    DEFAULT_REDIS_URL,
    DEFAULT_RESULT_EXPIRES,
    ConfigurationError,
    celery_name,
    check_setting,
    redact,
)
from factories.event_loops import call_outside_loop, close_event_loops, run_coroutine
from factories.transport import TRANSPORT
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

# A broker or backend that does not answer fails a call within seconds: with Celery's defaults
# a publish to an unreachable broker retries for minutes, and one to a host that accepts but
# never answers hangs for good. The web app answers 503 instead.
BOUNDED_WAITS: dict[str, Any] = {
    "broker_connection_timeout": 2,
    "broker_transport_options": {"socket_connect_timeout": 2, "socket_timeout": 2},
    "task_publish_retry_policy": {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 0.2,
    },
    "redis_socket_connect_timeout": 2,
    "redis_socket_timeout": 5,
}

# No accepted task is lost to a worker that dies: a task is acknowledged when it ends, not when
# it starts, so one whose worker is killed runs again (after `CELERY_VISIBILITY_TIMEOUT` with
# Redis as the broker, at once for a killed pool process). A task that must not run twice opts
# out with `@celery.task(acks_late=False)`. Each process takes one task ahead, not four, so
# fewer tasks wait out the timeout behind a dead one.
AT_LEAST_ONCE: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


class ContextTask(Task[Any, Any]):
    """The base of every task: runs the task inside its web app's context.

    An `async def` task is awaited on the calling thread's own event loop (see
    `factories.event_loops`); a sync task runs on the thread itself, outside any loop, so it may
    call `asyncio.run` as usual. Teardown handlers run after every task, with its exception.
    """

    #: The app whose context tasks run in; `configure_celery` sets it.
    web_app: ClassVar[WebApp | None] = None
    #: Set here, not only in the settings: Celery copies a setting onto a task when the task is
    #: first used, which may be before `configure_celery` runs.
    track_started = True
    #: The options this task takes from the settings, not from its own declaration.
    options_from_settings: ClassVar[tuple[str, ...]] = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        app = self.web_app
        if app is None:
            raise RuntimeError(
                f"task {self.name!r} was called before configure_celery(app) bound it to an app"
            )
        request = self.request_stack.top
        return call_outside_loop(partial(self._call_with_request, app, request, args, kwargs))

    @classmethod
    def bind(cls, app: Celery) -> Celery:
        """Bind the task to `app`, noting which options it leaves to the settings.

        Celery copies those settings (`task_acks_late`, ...) onto the task once, when it is
        first used; `take_settings_again` copies them anew after `configure_celery`.
        """
        if "options_from_settings" not in vars(cls):
            cls.options_from_settings = tuple(
                attribute
                for attribute, _ in cls.from_config
                if getattr(cls, attribute, None) is None
            )
        return super().bind(app)

    @classmethod
    def take_settings_again(cls, app: Celery) -> None:
        """Copy `app`'s current settings onto the options the task leaves to them."""
        for attribute in cls.options_from_settings:
            setattr(cls, attribute, None)
        cls.bind(app)

    def _call_with_request(
        self, app: WebApp, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run the body with the caller's request, also when it runs on the helper thread.

        Celery keeps the current request per thread: an eager call from async code, moved to
        the helper thread, must still see its id and retries in `self.request`.
        """
        stack = self.request_stack
        carried = request is not None and stack.top is not request
        if carried:
            stack.push(request)
        try:
            return _call_in_app_context(app, self.run, args, kwargs)
        finally:
            if carried:
                stack.pop()


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
    for task in celery.tasks.values():
        if isinstance(task, ContextTask):
            type(task).take_settings_again(celery)
    task_cls.web_app = app
    app.extensions["celery"] = celery
    for signal in (signals.worker_process_shutdown, signals.worker_shutdown):
        signal.connect(_close_event_loops, weak=False, dispatch_uid=__name__)
    signals.task_received.connect(_skip_if_revoked, weak=False, dispatch_uid=__name__)
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
        # Read by Celery's loader, not a setting: result backends by URL scheme.
        "override_backends": BACKENDS,
        **BOUNDED_WAITS,
        **AT_LEAST_ONCE,
        **JSON_ONLY,
    }
    visibility_timeout = check_setting(
        "CELERY_VISIBILITY_TIMEOUT",
        config.get("CELERY_VISIBILITY_TIMEOUT") or APP_OPTIONS["CELERY_VISIBILITY_TIMEOUT"].default,
    )
    settings["broker_transport_options"] = {
        **settings["broker_transport_options"],
        **redelivery_options(visibility_timeout),
    }
    for key, value in config.items():
        if key == "CELERY_VISIBILITY_TIMEOUT":
            continue
        if key.startswith(CELERY_PREFIX) and value is not None:
            name, value = celery_name(key), check_setting(key, value)
            default = settings.get(name)
            # Options given for a transport add to ours rather than drop them.
            if isinstance(default, dict) and isinstance(value, dict):
                value = {**default, **value}
            settings[name] = value
    if "broker_transport" not in settings and _is_redis(settings["broker_url"]):
        settings["broker_transport"] = TRANSPORT
    for name, required in JSON_ONLY.items():
        value = settings[name]
        names = {value} if isinstance(value, str) else set(value or ())
        if not names or not names <= _JSON_NAMES:
            key = CELERY_PREFIX + name.upper()
            raise ConfigurationError(key, f"must be {required!r}: only JSON is accepted")
    for name in ("broker_url", "result_backend"):
        # Celery reads these two from the environment ahead of its settings.
        key = CELERY_PREFIX + name.upper()
        from_environment = os.environ.get(key)
        if from_environment and from_environment != settings[name]:
            raise ConfigurationError(
                key,
                f"the environment says {redact(from_environment)!r} but the app's config says "
                f"{redact(settings[name])!r}; Celery would take the environment's",
            )
    return settings


def redelivery_options(visibility_timeout: int) -> dict[str, int]:
    """kombu's options for handing out again the tasks of a worker that died.

    A task unacknowledged for `visibility_timeout` seconds goes back to the queue when some
    worker next sweeps for them. kombu sweeps every 10 s but looks only on every tenth sweep,
    so a task came back up to 100 s late; here every sweep looks, every sixth of the timeout
    (1 to 60 s). A sweep is one sorted-set read per worker.
    """
    return {
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": max(1, min(60, visibility_timeout // 6)),
        "unacked_restore_throttle": 1,
    }


def _is_redis(url: str) -> bool:
    """Whether every URL in a (";"-separated) broker URL names a Redis server."""
    return all(one.strip().split("://", 1)[0] in ("redis", "rediss") for one in url.split(";"))


def _call_in_app_context(
    app: WebApp, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call a task's body inside `app`'s context, awaiting it if it is a coroutine."""
    context = contextvars.copy_context()
    pop_app_context = _push_app_context(app, context)
    try:
        result = context.run(function, *args, **kwargs)
        if inspect.isawaitable(result):
            result = run_coroutine(_as_coroutine(result), context)
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
        quart_context = app.app_context()
        run_coroutine(quart_context.push(), context)
        return lambda error: run_coroutine(quart_context.pop(error), context)
    flask_context = app.app_context()
    context.run(flask_context.push)
    return lambda error: context.run(flask_context.pop, error)


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    """Wrap any awaitable a task returned in the coroutine a loop can run."""
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


def _skip_if_revoked(request: Request, **_: Any) -> None:
    """Skip a received task that the result backend says was revoked (a signal receiver).

    Workers keep the revocations they hear in memory only: one that restarted, or started after
    the revoke, would run the task. The web app marks a task it revokes before it starts as
    REVOKED in the result backend; a task the worker counts as revoked is acknowledged and
    recorded as REVOKED, never run.
    """
    if (
        request.id not in worker_state.revoked
        and request.task.backend.get_state(request.id) == states.REVOKED
    ):
        worker_state.revoked.add(request.id)


def _close_event_loops(**_: Any) -> None:
    """Close the worker's event loops when it shuts down (a Celery signal receiver)."""
    close_event_loops()


__all__ = ["ContextTask", "celery_settings", "configure_celery"]

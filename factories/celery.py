"""The Celery factory: configure the placeholder from a web app, whose context tasks run in.

`quart_app.extensions.celery` is created bare at import time, so tasks can bind to it without
connecting anywhere. `configure_celery(app)` fills in its settings from the app's `CELERY_*`
keys, imports the task modules, and binds the tasks to the app: every task then runs inside the
app's context (`quart_app.bridge.app_context.ContextTask`), so `current_app` works in tasks as
it does in views, for sync and `async def` tasks alike.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import Celery

from factories.configuration import (
    APP_OPTIONS,
    CELERY_PREFIX,
    DEFAULT_RESULT_EXPIRES,
    ConfigurationError,
    beat_schedule,
    celery_name,
    check_setting,
    default_beat_state_file,
    redact,
    redis_address,
)
from quart_app.bridge import cancellation, event_loops, records, revocation
from quart_app.bridge.app_context import ContextTask, WebApp
from quart_app.bridge.backends import BACKENDS
from quart_app.bridge.transport import SENTINEL_TRANSPORT, TRANSPORT, Connection
from quart_app.extensions import celery

# Messages and results travel as JSON only: a pickle accepted from the broker runs code.
JSON_ONLY: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "event_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
}
_JSON_NAMES = frozenset({"json", "application/json"})

# The settings the placeholder was last configured with, to tell whether a call changes any:
# Celery's own `conf` cannot, as a setting left out this time reads as its default there.
_applied: dict[str, Any] | None = None

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


def configure_celery(app: WebApp) -> Celery:
    """Configure the placeholder Celery instance from `app`'s config; return that instance.

    Reads `CELERY_BROKER_URL`, `CELERY_RESULT_BACKEND` and any other Celery setting in the
    `CELERY_` namespace (both URLs fall back to `REDIS_URL`), then imports the modules that
    declare tasks (Celery's `include` and `imports`), as a worker does, so that the web app
    knows every task too. Takes a Quart or a Flask app, and may be called again: with the same
    settings nothing changes; with others, connections made under the old ones are dropped.
    """
    settings = celery_settings(app.config)
    task_cls = celery.Task
    if not issubclass(task_cls, ContextTask):
        raise ConfigurationError("task_cls", f"{task_cls!r} must derive from {ContextTask!r}")
    if not isinstance(celery.amqp, records.RecordingAMQP):
        raise ConfigurationError("amqp", f"{celery.amqp!r} must derive from RecordingAMQP")
    # `configured` is public Celery API that celery-types leaves out.
    configured: bool = celery.configured  # type: ignore[attr-defined]
    global _applied
    if configured and settings != _applied:
        _drop_connections(celery)
    celery.config_from_object(settings, force=True)
    _applied = settings
    celery.loader.import_default_modules()
    for task in celery.tasks.values():
        if isinstance(task, ContextTask):
            type(task).take_settings_again(celery)
    task_cls.web_app = app
    app.extensions["celery"] = celery
    celery.amqp.Connection = Connection  # names the transport `redis` in broker URLs
    event_loops.init_celery()
    revocation.init_celery()
    # An app without `REDIS_URL` (a plain Flask app) has no records, and nothing to cancel.
    address = redis_address(app.config) if app.config.get("REDIS_URL") else None
    cancellation.init_celery(address)
    with_messages = address is not None and settings["broker_url"] == address.broker_url
    records.init_celery(address, with_messages, _seconds(settings["result_expires"]))
    return celery


def celery_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return Celery's settings for an app's `config`: its `CELERY_*` keys over our defaults."""
    address = redis_address(config)
    settings: dict[str, Any] = {
        "broker_url": address.broker_url,
        "result_backend": address.broker_url,
        "result_expires": DEFAULT_RESULT_EXPIRES,
        "task_track_started": True,
        # Task events, for Flower and `celery events`: workers send theirs, and every publish
        # its `task-sent` (`CELERY_WORKER_SEND_TASK_EVENTS=false` and
        # `CELERY_TASK_SEND_SENT_EVENT=false` turn them off).
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # One result backend per process, not one per thread: the app's pool threads each made
        # their own, with a Redis connection pool that nothing closed when the thread went
        # (Python 3.13 reported the sockets unclosed). redis-py's client is thread-safe.
        "result_backend_thread_safe": True,
        # Beat's state file: out of the source tree (Celery's default is the working directory).
        "beat_schedule_filename": default_beat_state_file(),
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
        **address.transport_options,  # with Sentinel: the master's name
    }
    if address.transport_options:
        settings["result_backend_transport_options"] = address.transport_options
    if address.tls_options:  # a rediss:// REDIS_URL, with Sentinel
        settings["broker_use_ssl"] = settings["redis_backend_use_ssl"] = address.tls_options
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
    schedule = {
        **beat_schedule("BEAT_SCHEDULE", config.get("BEAT_SCHEDULE") or {}),
        **beat_schedule("CELERY_BEAT_SCHEDULE", settings.get("beat_schedule") or {}),
    }
    if schedule:
        settings["beat_schedule"] = schedule
    if "broker_transport" not in settings:
        scheme = _scheme(settings["broker_url"])
        if scheme in ("redis", "rediss"):
            settings["broker_transport"] = TRANSPORT
        elif scheme == "sentinel":
            settings["broker_transport"] = SENTINEL_TRANSPORT
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


def _scheme(url: str) -> str | None:
    """The scheme of every URL in a (";"-separated) broker URL; None if they differ."""
    schemes = {one.strip().split("://", 1)[0] for one in url.split(";")}
    return schemes.pop() if len(schemes) == 1 else None


def _drop_connections(instance: Celery) -> None:
    """Forget the broker pools, the messaging and the result backends made under earlier
    settings, closing the backends.

    Celery makes them on first use and never reads its settings again, so after a change of
    broker, backend, routes or queues it would otherwise go on using the old ones. The broker
    pools belong to kombu, which shares them by URL, so they are forgotten here, not closed.
    """
    state = vars(instance)
    state["_pool"] = None
    state.pop("amqp", None)  # its router, its queues and its producer pool
    for backend in (state.get("_backend_cache"), getattr(state.get("_local"), "backend", None)):
        client = getattr(backend, "client", None)  # a Redis backend's own connection pool
        if client is not None:
            client.connection_pool.disconnect()
    state["_backend_cache"] = None
    state["_local"] = threading.local()


def _seconds(duration: int | float | timedelta) -> int:
    """A duration Celery takes in seconds or as a timedelta, in whole seconds."""
    return int(duration.total_seconds() if isinstance(duration, timedelta) else duration)


__all__ = ["celery_settings", "configure_celery"]

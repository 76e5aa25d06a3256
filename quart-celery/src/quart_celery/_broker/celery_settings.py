"""Celery's settings for an app: its `CELERY_*` settings over the bridge's defaults.

The defaults keep the promises the bridge makes: JSON only, tasks acknowledged when they end,
waits that end in seconds, the bridge's transport and result backend. `QuartCelery.celery_settings`
hands them to the user's Celery factory, which configures the placeholder with them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from celery import Celery

from quart_celery._broker.address import RedisAddress
from quart_celery._broker.backends import BACKENDS
from quart_celery._broker.transport import SENTINEL_TRANSPORT, TRANSPORT
from quart_celery.settings import CELERY_PREFIX, ConfigurationError, celery_name, redact

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


def celery_settings(app_settings: Mapping[str, Any], app_name: str, root: str) -> dict[str, Any]:
    """Celery's settings for an app: the `CELERY_*` keys of its `app_settings` (as
    `read_settings` gives them) over the bridge's defaults. `app_name` and `root` (the app's
    root path) name beat's state file."""
    address = RedisAddress.of(app_settings)
    settings: dict[str, Any] = {
        "broker_url": address.broker_url,
        "result_backend": address.broker_url,
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
        "beat_schedule_filename": default_beat_state_file(app_name, root),
        # Keep retrying the broker at start-up, as Celery 5 does, without its warning.
        "broker_connection_retry_on_startup": True,
        # Read by Celery's loader, not a setting: result backends by URL scheme.
        "override_backends": BACKENDS,
        **BOUNDED_WAITS,
        **AT_LEAST_ONCE,
        **JSON_ONLY,
    }
    visibility_timeout = int(app_settings["CELERY_VISIBILITY_TIMEOUT"])
    settings["broker_transport_options"] = {
        **settings["broker_transport_options"],
        **redelivery_options(visibility_timeout),
        **address.transport_options,  # with Sentinel: the master's name
    }
    if address.transport_options:
        settings["result_backend_transport_options"] = address.transport_options
    if address.tls_options:  # a rediss:// REDIS_URL, with Sentinel
        settings["broker_use_ssl"] = settings["redis_backend_use_ssl"] = address.tls_options
    for key, value in app_settings.items():
        if key == "CELERY_VISIBILITY_TIMEOUT":
            continue
        if key.startswith(CELERY_PREFIX) and value is not None:
            name = celery_name(key)
            default = settings.get(name)
            # Options given for a transport add to ours rather than drop them.
            if isinstance(default, dict) and isinstance(value, dict):
                value = {**default, **value}
            settings[name] = value
    schedule = {
        **beat_schedule("BEAT_SCHEDULE", app_settings.get("BEAT_SCHEDULE") or {}),
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


def beat_schedule(key: str, entries: Any) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` from `entries` as the settings give them; `ConfigurationError`
    if one is malformed.

    An entry's `schedule` is seconds, `{"crontab": {"minute": "*/5", ...}}` (the arguments of
    `celery.schedules.crontab`), or anything Celery takes (a timedelta, a crontab) where the
    schedule is given in a mapping rather than as JSON.
    """
    from celery.schedules import crontab  # here: importing this module imports no scheduler

    if not isinstance(entries, Mapping):
        raise ConfigurationError(key, f"expected a mapping of named entries, got {entries!r}")
    schedule: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("task"), str):
            raise ConfigurationError(key, f"entry {name!r} needs a task name in 'task'")
        every = entry.get("schedule")
        if isinstance(every, Mapping) and set(every) == {"crontab"}:
            try:
                every = crontab(**every["crontab"])
            except (TypeError, ValueError) as error:
                raise ConfigurationError(key, f"entry {name!r}: bad crontab: {error}") from None
        elif isinstance(every, bool) or not isinstance(every, int | float | timedelta | crontab):
            raise ConfigurationError(
                key, f"entry {name!r}: 'schedule' must be seconds or {{\"crontab\": {{...}}}}"
            )
        elif not isinstance(every, crontab) and _schedule_seconds(every) <= 0:
            raise ConfigurationError(key, f"entry {name!r}: 'schedule' must be over 0 seconds")
        schedule[name] = {**entry, "schedule": every}
    return schedule


def _schedule_seconds(every: int | float | timedelta) -> float:
    return every.total_seconds() if isinstance(every, timedelta) else float(every)


def default_beat_state_file(app_name: str, root: str) -> str:
    """Where beat keeps its state by default: in the system's temporary directory, named after
    the app and where its code is, so that running beat leaves the source tree as it was."""
    digest = hashlib.sha256(root.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"{app_name}-celerybeat-schedule-{digest}")


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


def drop_connections(instance: Celery) -> None:
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


def seconds(duration: int | float | timedelta) -> int:
    """A duration Celery takes in seconds or as a timedelta, in whole seconds."""
    return int(duration.total_seconds() if isinstance(duration, timedelta) else duration)

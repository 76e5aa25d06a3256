"""Settings: defaults, overridden by the environment, checked before anything connects.

A wrong setting must stop start-up with one line that names it, not with a traceback from deep
inside kombu the first time a connection is made. Every value read here is therefore cast and
checked, and every problem is raised as a `ConfigurationError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery.app.backends import BACKEND_ALIASES
from celery.app.defaults import NAMESPACES, Option, flatten
from celery.utils.serialization import strtobool
from kombu.transport import TRANSPORT_ALIASES

if TYPE_CHECKING:
    from quart_app.bridge.redis_address import RedisAddress

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_EXPIRES = 24 * 60 * 60
CELERY_PREFIX = "CELERY_"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

# The app's own settings, typed as Celery types its own (`minimum` defaults to 0).
APP_OPTIONS: dict[str, Option] = {
    # Signs the session cookie, and with it the CSRF token of the HTML form.
    "SECRET_KEY": Option(None, type="string"),
    # The largest request body accepted, in bytes (Quart's own setting).
    "MAX_CONTENT_LENGTH": Option(64 * 1024, type="int", minimum=1),
    # Threads for the blocking Celery calls of the web process (publish, look-up, ping).
    "BLOCKING_POOL_SIZE": Option(16, type="int", minimum=1),
    # Seconds a blocking call may take before the request is answered 503 (under five).
    "BLOCKING_TIMEOUT": Option(4.5, type="float", minimum=0.1),
    # Tasks one websocket may watch at once.
    "WS_MAX_TASKS": Option(1000, type="int", minimum=1),
    # Updates that may wait for one websocket; a socket further behind is closed (1013).
    "WS_QUEUE_SIZE": Option(256, type="int", minimum=1),
    # Redis Sentinel: the sentinels (host:port,host:port,...) and the name of the master they
    # monitor. With both set, every client finds the current master through them, and only
    # the database, credentials and TLS of REDIS_URL are used.
    "REDIS_SENTINELS": Option(None, type="string"),
    "REDIS_SENTINEL_MASTER": Option(None, type="string"),
    # The sentinels' own password (their `requirepass`), where they have one.
    "REDIS_SENTINEL_PASSWORD": Option(None, type="string"),
    # Bearer tokens the JSON API and the websockets require, comma-separated; none: open.
    "API_TOKEN": Option(None, type="string"),
    # Bearer tokens GET /metrics requires, comma-separated; none: open, like /healthz.
    "METRICS_TOKEN": Option(None, type="string"),
    # Submissions one client may make: N/second, N/minute or N/hour; none: no limit.
    "API_RATE_LIMIT": Option(None, type="string"),
    # Origins (scheme://host[:port]) besides the server's own whose pages may open websockets,
    # comma-separated; "*" allows any.
    "WS_ALLOWED_ORIGINS": Option(None, type="string"),
    # Seconds a websocket client may take to take a message; slower is too slow (closed, 1013).
    "WS_SEND_TIMEOUT": Option(10.0, type="float", minimum=0.1),
    # Websockets one server process keeps open at once; more are refused (503).
    "WS_MAX_SOCKETS": Option(5000, type="int", minimum=1),
    # The largest message a client may send on a websocket, in bytes; larger closes it (1009).
    "WS_MAX_MESSAGE_SIZE": Option(16 * 1024, type="int", minimum=1),
    # Websockets one server process sets up at once (handshake to first message); the others
    # wait their turn, so that a burst of them does not hold up other requests.
    "WS_MAX_SETUPS": Option(16, type="int", minimum=1),
    # Seconds a task a worker took may go unacknowledged before Redis gives it to another worker
    # (kombu's `visibility_timeout`): how long a task of a killed worker waits to run again.
    # Longer than any task may run (ten minutes for those the API starts), or a task still
    # running would be handed out twice.
    "CELERY_VISIBILITY_TIMEOUT": Option(3600, type="int", minimum=1),
    # Seconds /readyz waits for a worker to answer a ping (it answers within three of them).
    "READY_TIMEOUT": Option(1.0, type="float", minimum=0.1),
    # What `celery -A worker beat` runs: {"name": {"task": ..., "schedule": seconds or
    # {"crontab": {...}}, "args": [...], "kwargs": {...}, "options": {...}}} (JSON).
    "BEAT_SCHEDULE": Option(None, type="dict"),
}

# Settings whose values are URLs, and the schemes each accepts.
_URL_SETTINGS = {
    "REDIS_URL": REDIS_SCHEMES,
    "CELERY_BROKER_URL": frozenset(TRANSPORT_ALIASES),
    "CELERY_RESULT_BACKEND": frozenset(BACKEND_ALIASES),
}


class ConfigurationError(Exception):
    """A setting is unknown or malformed; the message names the setting and what was wrong."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


def get_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the app's settings: the defaults, overridden by the environment.

    `REDIS_URL` names the Redis server the broker and the result backend share unless
    `CELERY_BROKER_URL` or `CELERY_RESULT_BACKEND` name another one. Any other Celery setting
    can be given as `CELERY_<SETTING>` (e.g. `CELERY_WORKER_PREFETCH_MULTIPLIER=1`); values are
    cast to the setting's type, with JSON for lists and mappings.
    """
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {key: option.default for key, option in APP_OPTIONS.items()}
    config.update(
        REDIS_URL=DEFAULT_REDIS_URL,
        CELERY_BROKER_URL=None,
        CELERY_RESULT_BACKEND=None,
        CELERY_RESULT_EXPIRES=DEFAULT_RESULT_EXPIRES,
    )
    if "CELERY_BEAT_SCHEDULE" in environ:
        raise ConfigurationError(
            "CELERY_BEAT_SCHEDULE",
            "in the environment Celery's command line takes it for the name of beat's state "
            "file (beat --schedule); give the schedule as BEAT_SCHEDULE instead",
        )
    for key, raw in environ.items():
        # Celery's command line reads some CELERY_* variables of its own (CELERY_CONFIG_MODULE,
        # CELERY_RDB_PORT, ...): only the names of settings are ours to read.
        if key in _URL_SETTINGS or key in APP_OPTIONS or is_celery_setting(key):
            config[key] = check_setting(key, raw)
    return config


def is_celery_setting(key: str) -> bool:
    """Whether `key` names one of Celery's settings in the `CELERY_` namespace."""
    return key.startswith(CELERY_PREFIX) and celery_name(key) in celery_options()


def celery_name(key: str) -> str:
    """Celery's name for the app setting `key`: `CELERY_BROKER_URL` is `broker_url`."""
    return key.removeprefix(CELERY_PREFIX).lower()


def check_setting(key: str, value: Any) -> Any:
    """Return `value` cast to the type of setting `key`, or raise `ConfigurationError`."""
    if key in _URL_SETTINGS:
        return None if value is None else check_url(key, value, _URL_SETTINGS[key])
    if key in APP_OPTIONS:
        value = None if value is None else _cast(key, value, APP_OPTIONS[key])
        if key == "API_RATE_LIMIT" and value:
            from quart_app.bridge.rate_limits import parse_limit  # here: no limiter on import

            try:
                parse_limit(value)
            except ValueError as error:
                raise ConfigurationError(key, str(error)) from None
        if key == "REDIS_SENTINELS" and value:
            from quart_app.bridge.redis_address import parse_sentinels  # here: no redis import

            try:
                parse_sentinels(value)
            except ValueError as error:
                raise ConfigurationError(
                    key, f"expected host:port,host:port,...: {error}"
                ) from None
        return value
    if not key.startswith(CELERY_PREFIX):
        return value
    option = celery_options().get(celery_name(key))
    if option is None:
        raise ConfigurationError(key, "is not a Celery setting (see Celery's configuration docs)")
    return _cast(key, value, option)


def redis_address(config: Mapping[str, Any]) -> RedisAddress:
    """Where the app's Redis is: `REDIS_URL`, or the master `REDIS_SENTINELS` know as
    `REDIS_SENTINEL_MASTER`; `ConfigurationError` if the settings do not go together."""
    from quart_app.bridge.redis_address import RedisAddress

    url = check_setting("REDIS_URL", config.get("REDIS_URL") or DEFAULT_REDIS_URL)
    sentinels = check_setting("REDIS_SENTINELS", config.get("REDIS_SENTINELS"))
    master = check_setting("REDIS_SENTINEL_MASTER", config.get("REDIS_SENTINEL_MASTER"))
    if not sentinels:
        if master:
            raise ConfigurationError("REDIS_SENTINEL_MASTER", "needs REDIS_SENTINELS too")
        return RedisAddress(url)
    if not master:
        raise ConfigurationError(
            "REDIS_SENTINELS", "needs REDIS_SENTINEL_MASTER: the name the sentinels monitor"
        )
    if urlsplit(url).scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            "REDIS_URL", "with REDIS_SENTINELS it must be redis:// or rediss:// (for TLS)"
        )
    password = check_setting("REDIS_SENTINEL_PASSWORD", config.get("REDIS_SENTINEL_PASSWORD"))
    return RedisAddress.of(
        {
            "REDIS_URL": url,
            "REDIS_SENTINELS": sentinels,
            "REDIS_SENTINEL_MASTER": master,
            "REDIS_SENTINEL_PASSWORD": password,
        }
    )


def beat_schedule(key: str, entries: Any) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule` from `entries` as the settings give them; `ConfigurationError`
    if one is malformed.

    An entry's `schedule` is seconds, `{"crontab": {"minute": "*/5", ...}}` (the arguments of
    `celery.schedules.crontab`), or anything Celery takes (a timedelta, a crontab) where the
    schedule is given in a mapping rather than as JSON.
    """
    from celery.schedules import crontab  # here: importing the settings imports no scheduler

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
        elif not isinstance(every, crontab) and _seconds(every) <= 0:
            raise ConfigurationError(key, f"entry {name!r}: 'schedule' must be over 0 seconds")
        schedule[name] = {**entry, "schedule": every}
    return schedule


def _seconds(every: int | float | timedelta) -> float:
    return every.total_seconds() if isinstance(every, timedelta) else float(every)


def default_beat_state_file() -> str:
    """Where beat keeps its state by default: in the system's temporary directory, named after
    this checkout, so that running beat leaves the source tree as it was."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256(checkout.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), f"quart_app-celerybeat-schedule-{digest}")


def check_url(key: str, url: Any, schemes: frozenset[str]) -> str:
    """Return `url` if it is a well-formed URL with one of `schemes`; else raise.

    Several URLs joined by ";" (kombu's broker failover list) are checked one by one.
    """
    if not isinstance(url, str):
        raise ConfigurationError(key, f"expected a URL, got {url!r}")
    for one_url in url.split(";"):
        _check_one_url(key, one_url.strip(), schemes)
    return url


def redact(url: str) -> str:
    """`url` with its password, if any, masked: for messages and logs."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return url
    return url.replace(f":{password}@", ":**@") if password else url


def _check_one_url(key: str, url: str, schemes: frozenset[str]) -> None:
    """Raise `ConfigurationError` unless `url` is well-formed with one of `schemes`."""
    parts = urlsplit(url)
    shown = redact(url)
    # The Celery backend scheme "cache+memory" names the backend before the "+".
    scheme = parts.scheme.split("+", 1)[0]
    if "://" not in url or scheme not in schemes:
        expected = ", ".join(f"{name}://" for name in sorted(schemes)[:6])
        raise ConfigurationError(key, f"{shown!r} is not a URL of a known kind ({expected}, ...)")
    try:
        parts.port  # noqa: B018 -- reading the port is what validates it
    except ValueError:
        raise ConfigurationError(key, f"{shown!r} has a port that is not from 0 to 65535") from None
    database = parts.path.strip("/")
    if scheme in REDIS_SCHEMES and scheme != "unix" and database and not database.isdigit():
        raise ConfigurationError(key, f"{shown!r} has a database {database!r} that is not a number")


@cache
def celery_options() -> dict[str, Option]:
    """Celery's own settings, by lowercase name, with their types and defaults."""
    return dict(flatten(NAMESPACES))


def _cast(key: str, value: Any, option: Option) -> Any:
    """Cast a setting to the type Celery declares for it; strings come from the environment."""
    kind: str = option.type or "string"
    try:
        if kind in ("int", "float"):
            if isinstance(value, timedelta):  # Celery takes durations as timedeltas too
                return value
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError
            number = float(value) if kind == "float" else int(value)
            # Every number Celery takes is a count, a size or a duration.
            if not getattr(option, "minimum", 0) <= number < math.inf:
                raise ValueError
            return number
        if not isinstance(value, str) or kind in ("string", "str", "any"):
            return value
        if kind == "bytes":
            return value.encode()
        if kind == "bool":
            return bool(strtobool(value))
        return json.loads(value)
    except (TypeError, ValueError):
        minimum = getattr(option, "minimum", 0)
        expected = {
            "int": f"a whole number from {minimum} up",
            "float": f"a number from {minimum} up",
            "bool": "true or false",
        }
        raise ConfigurationError(
            key, f"expected {expected.get(kind, f'a JSON {kind}')}, got {value!r}"
        ) from None


@contextmanager
def exit_on_configuration_error() -> Iterator[None]:
    """Turn a `ConfigurationError` at start-up into one line on stderr and exit status 1.

    For the entry points: servers and the Celery command line print a full traceback for an
    error raised while importing the app, which buries the one fact the user needs.
    """
    try:
        yield
    except ConfigurationError as error:
        raise SystemExit(f"configuration error: {error}") from None

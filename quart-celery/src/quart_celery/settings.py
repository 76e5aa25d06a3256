"""The bridge's settings: defaults, the environment, and the checks made before anything connects.

Each setting is read from the app's config if it is there, else from the environment, else it
takes its default: so `create_application({...})` (a test's settings) overrides the
environment, which overrides the defaults. `QuartCelery.init_app(app)` writes them into
`app.config`, where views read them; `QuartCelery.celery_settings(app)` reads the same ones for
Celery. Celery's own settings are given as `CELERY_<SETTING>` (`CELERY_TASK_TIME_LIMIT`), read
the same way.

A wrong setting must stop start-up with one line that names it, not with a traceback from deep
inside kombu the first time a connection is made. Every value read here is therefore cast and
checked, and every problem is raised as a `ConfigurationError`; `exit_on_configuration_error`
turns it into that one line.
"""

from __future__ import annotations

import json
import math
import os
import re
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
    from limits import RateLimitItem

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_RESULT_EXPIRES = 24 * 60 * 60
CELERY_PREFIX = "CELERY_"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

#: The bridge's own settings, typed as Celery types its own (`minimum` defaults to 0).
OPTIONS: dict[str, Option] = {
    # The Redis server: the broker and the result backend use it unless set apart, and the
    # bridge keeps its records, idempotency keys and rate limits there.
    "REDIS_URL": Option(DEFAULT_REDIS_URL, type="string"),
    # Redis Sentinel: the sentinels (host:port,host:port,...) and the name of the master they
    # monitor. With both set, every client finds the current master through them, and only
    # the database, credentials and TLS of REDIS_URL are used.
    "REDIS_SENTINELS": Option(None, type="string"),
    "REDIS_SENTINEL_MASTER": Option(None, type="string"),
    # The sentinels' own password (their `requirepass`), where they have one.
    "REDIS_SENTINEL_PASSWORD": Option(None, type="string"),
    # Celery's broker and result backend; None: REDIS_URL.
    "CELERY_BROKER_URL": Option(None, type="string"),
    "CELERY_RESULT_BACKEND": Option(None, type="string"),
    # Seconds a stored result, and the record of its task, is kept.
    "CELERY_RESULT_EXPIRES": Option(DEFAULT_RESULT_EXPIRES, type="float"),
    # Threads for the blocking Celery calls of the web process (publish, look-up, ping).
    "BLOCKING_POOL_SIZE": Option(16, type="int", minimum=1),
    # Seconds a blocking call may take before the request is answered 503 (under five).
    "BLOCKING_TIMEOUT": Option(4.5, type="float", minimum=0.1),
    # Tasks one websocket may watch at once.
    "WS_MAX_TASKS": Option(1000, type="int", minimum=1),
    # Tasks one workflow sent over HTTP may have, and how deep its workflows may nest.
    "WORKFLOW_MAX_TASKS": Option(1000, type="int", minimum=1),
    "WORKFLOW_MAX_DEPTH": Option(8, type="int", minimum=1),
    # Bytes the messages of one workflow may take (a chord's body is copied into each message
    # of its header).
    "WORKFLOW_MAX_BYTES": Option(8 * 1024 * 1024, type="int", minimum=1024),
    # Chunks one run of a task may stream (`send_chunk`); the one after fails the task.
    "STREAM_MAX_CHUNKS": Option(100_000, type="int", minimum=1),
    # Updates that may wait for one websocket; a socket further behind is closed (1013).
    "WS_QUEUE_SIZE": Option(256, type="int", minimum=1),
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
    # Longer than any task may run, or a task still running would be handed out twice.
    "CELERY_VISIBILITY_TIMEOUT": Option(3600, type="int", minimum=1),
    # Seconds /readyz waits for each part to answer (it answers within three of them).
    "READY_TIMEOUT": Option(1.0, type="float", minimum=0.1),
    # What `celery beat` runs: {"name": {"task": ..., "schedule": seconds or
    # {"crontab": {...}}, "args": [...], "kwargs": {...}, "options": {...}}} (JSON).
    "BEAT_SCHEDULE": Option(None, type="dict"),
}

#: The forms `API_RATE_LIMIT` takes.
_RATE_LIMIT_FORM = re.compile(r"\s*([1-9]\d*)\s*/\s*(second|minute|hour)\s*")

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


def read_settings(
    config: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The bridge's settings and Celery's `CELERY_*` ones: each from `config` where it is
    there, else from the environment, else its default; cast and checked.

    `ConfigurationError` for a value that is malformed, or an unknown `CELERY_*` key in
    `config` (a typo would otherwise be ignored). In the environment, `CELERY_*` names that are
    not Celery settings are left to Celery's own command line (`CELERY_CONFIG_MODULE`, ...).
    """
    environ = os.environ if environ is None else environ
    if "CELERY_BEAT_SCHEDULE" in environ:
        raise ConfigurationError(
            "CELERY_BEAT_SCHEDULE",
            "in the environment Celery's command line takes it for the name of beat's state "
            "file (beat --schedule); give the schedule as BEAT_SCHEDULE instead",
        )
    settings: dict[str, Any] = {}
    for key, option in OPTIONS.items():
        if config.get(key) is not None:
            settings[key] = check_setting(key, config[key])
        elif key in environ:
            settings[key] = check_setting(key, environ[key])
        else:
            settings[key] = option.default
    for key, raw in environ.items():
        if key not in settings and is_celery_setting(key):
            settings[key] = check_setting(key, raw)
    for key, value in config.items():
        if key.startswith(CELERY_PREFIX) and key not in OPTIONS and value is not None:
            settings[key] = check_setting(key, value)
    return settings


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
    if key in OPTIONS:
        value = None if value is None else _cast(key, value, OPTIONS[key])
        if key == "API_RATE_LIMIT" and value:
            try:
                parse_rate_limit(value)
            except ValueError as error:
                raise ConfigurationError(key, str(error)) from None
        if key == "REDIS_SENTINELS" and value:
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


def parse_rate_limit(value: str) -> RateLimitItem:
    """`N/second`, `N/minute` or `N/hour` as a limit; `ValueError` for anything else."""
    from limits import parse  # here: importing the settings imports no rate limiter

    found = _RATE_LIMIT_FORM.fullmatch(value)
    if found is None:
        raise ValueError(f"{value!r} is not N/second, N/minute or N/hour")
    return parse(f"{found.group(1)}/{found.group(2)}")


def parse_sentinels(value: str) -> tuple[tuple[str, int], ...]:
    """The sentinels' addresses in `host:port,host:port,...`; ValueError if malformed."""
    sentinels = []
    for one in value.split(","):
        host, colon, port = one.strip().rpartition(":")
        bare_ipv6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
        if not colon or not host or bare_ipv6 or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{one.strip()!r} is not host:port (an IPv6 host in brackets)")
        sentinels.append((host.strip("[]"), int(port)))
    return tuple(sentinels)


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

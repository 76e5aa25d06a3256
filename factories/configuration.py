"""The app's own settings, from defaults and the environment.

The bridge reads its own settings (`REDIS_URL`, `CELERY_*`, `API_TOKEN`, `WS_*`, ...) itself,
from the app's config or else the environment; see docs/configuration.md. Add your app's own
here, cast and checked, so that a wrong one stops start-up with one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from quart_celery import ConfigurationError

#: The app's own settings, and their defaults.
DEFAULTS: dict[str, Any] = {
    # Signs the session cookie, and with it the CSRF token of the HTML form.
    "SECRET_KEY": None,
    # The largest request body accepted, in bytes (Quart's own setting).
    "MAX_CONTENT_LENGTH": 64 * 1024,
}


def get_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the app's own settings: the defaults, overridden by the environment."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    if environ.get("SECRET_KEY"):
        config["SECRET_KEY"] = environ["SECRET_KEY"]
    if "MAX_CONTENT_LENGTH" in environ:
        config["MAX_CONTENT_LENGTH"] = positive_int("MAX_CONTENT_LENGTH", environ)
    return config


def positive_int(key: str, environ: Mapping[str, str]) -> int:
    """The whole number of at least 1 that `key` gives; `ConfigurationError` otherwise."""
    raw = environ[key]
    try:
        number = int(raw)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigurationError(key, f"expected a whole number from 1 up, got {raw!r}")
    return number

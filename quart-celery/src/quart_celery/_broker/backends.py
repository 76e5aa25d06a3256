"""Celery's Redis result backend, without a subscription for every task sent, and with the
time each state was stored.

Celery's backend subscribes to a task's result channel as soon as the task is sent, in case the
sender calls `.get()` later (celery#3808, #6963). A web process that only sends never does, so
each send cost two extra round trips to Redis (SUBSCRIBE, then UNSUBSCRIBE), and subscriptions
piled up for results nobody read. `.get()` still subscribes when it is called, and reads the
stored state after subscribing, so nothing is lost by not subscribing earlier.

Celery dates only a task's final state (`date_done`); the others (STARTED, PROGRESS, your own)
get `date_stored` here, so that the web server can tell how long each took to reach its
socket (the `delivery_seconds` metric).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.backends.redis import SentinelBackend as CelerySentinelBackend


class SendsWithoutSubscribing:
    """A mixin for Celery's Redis backends: no subscription on send; every state dated."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Send without subscribing to the task's result channel."""

    def _get_result_meta(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Celery's meta of a state, with `date_stored` where it has no `date_done`."""
        meta: dict[str, Any] = super()._get_result_meta(*args, **kwargs)  # type: ignore[misc]
        if meta.get("date_done") is None:
            meta["date_stored"] = datetime.now(UTC).isoformat()
        return meta


class RedisBackend(SendsWithoutSubscribing, CeleryRedisBackend):
    """The Redis result backend; subscribes on `.get()`, not on every send."""


class SentinelBackend(SendsWithoutSubscribing, CelerySentinelBackend):
    """The Redis Sentinel result backend; subscribes on `.get()`, not on every send."""


#: Celery's `override_backends` setting: these classes for these URL schemes.
BACKENDS = {
    "redis": f"{__name__}:RedisBackend",
    "rediss": f"{__name__}:RedisBackend",
    "sentinel": f"{__name__}:SentinelBackend",
}

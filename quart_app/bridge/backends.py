"""Celery's Redis result backend, without a subscription for every task sent.

Celery's backend subscribes to a task's result channel as soon as the task is sent, in case the
sender calls `.get()` later (celery#3808, #6963). A web process that only sends never does, so
each send cost two extra round trips to Redis (SUBSCRIBE, then UNSUBSCRIBE), and subscriptions
piled up for results nobody read. `.get()` still subscribes when it is called, and reads the
stored state after subscribing, so nothing is lost by not subscribing earlier.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.backends.redis import SentinelBackend as CelerySentinelBackend


class RedisBackend(CeleryRedisBackend):
    """The Redis result backend; subscribes on `.get()`, not on every send."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Send without subscribing to the task's result channel."""


class SentinelBackend(CelerySentinelBackend):
    """The Redis Sentinel result backend; subscribes on `.get()`, not on every send."""

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Send without subscribing to the task's result channel."""


#: Celery's `override_backends` setting: these classes for these URL schemes.
BACKENDS = {
    "redis": f"{__name__}:RedisBackend",
    "rediss": f"{__name__}:RedisBackend",
    "sentinel": f"{__name__}:SentinelBackend",
}

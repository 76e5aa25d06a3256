"""Celery's Redis result backend, without a subscription for every task sent, and with the
time each state was stored.

Celery's backend subscribes to a task's result channel as soon as the task is sent, in case the
sender calls `.get()` later (celery#3808, #6963). A web process that only sends never does, so
each send cost two extra round trips to Redis (SUBSCRIBE, then UNSUBSCRIBE), and subscriptions
piled up for results nobody read. `.get()` still subscribes when it is called, and reads the
stored state after subscribing, so nothing is lost by not subscribing earlier.

Celery reads a task's stored state before storing a new one, so as never to overwrite SUCCESS
(a task delivered twice): a round trip more for every state stored, two of the few a task
costs a worker. Here the read, the write and the publish are one script, one round trip, and
no other write can come between the read and the write.

Celery dates only a task's final state (`date_done`); the others (STARTED, PROGRESS, your own)
get `date_stored` here, so that the web server can tell how long each took to reach its
socket (the `delivery_seconds` metric).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.backends.redis import SentinelBackend as CelerySentinelBackend
from celery.exceptions import TaskRevokedError
from kombu.utils.encoding import bytes_to_str
from redis.commands.core import Script

from quart_celery._broker import canvas
from quart_celery._broker.chunks import stream_key
from quart_celery._broker.round_trips import cooperative_sleep, shares_round_trips, sharing
from quart_celery._broker.workflow_records import COUNT_MEMBER, membership_key

#: Store (with an expiry in seconds, 0 for none) and publish a state, unless the key holds
#: SUCCESS already: Celery's rule, as one step. With ARGV[3] "1", only over a state of a task
#: that has not started (none, PENDING or RETRY): how the web app revokes. The task's stream of
#: chunks (KEYS[3], `_broker.chunks`) is kept as long as the state. Then, if the task is a member
#: of a workflow, count it there (`workflow_records.COUNT_MEMBER`).
STORE_UNLESS_SUCCEEDED = (
    """
local current = redis.call('GET', KEYS[1])
if current then
    local decoded, meta = pcall(cjson.decode, current)
    if decoded and type(meta) == 'table' then
        local status = meta['status']
        if status == 'SUCCESS' then return 0 end
        if ARGV[3] == '1' and status ~= 'PENDING' and status ~= 'RETRY' then return 0 end
    end
end
if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[3], ARGV[2]) end
"""
    + COUNT_MEMBER
)


class SendsWithoutSubscribing:
    """A mixin for Celery's Redis backends: no subscription on send; a state stored in one
    round trip; every state dated."""

    _store_script: Script | None = None
    expires: Any

    def _create_client(self, **params: Any) -> Any:
        """Celery's client, whose round trips from the async pool's tracers are shared
        (`quart_celery._broker.round_trips`)."""
        return shares_round_trips(super()._create_client(**params))  # type: ignore[misc]

    def store_result(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's `store_result`, its round trips shared with the other tracers' on the async
        pool (a SET and a PUBLISH, or a read, holding nothing: `_broker.round_trips`)."""
        with sharing():
            return super().store_result(*args, **kwargs)  # type: ignore[misc]

    def _sleep(self, amount: float) -> None:
        """Celery's backoff before it retries a call to Redis: on the async pool's tracer
        thread, the other tracers run meanwhile (each task's retries are its own)."""
        cooperative_sleep(amount)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Send without subscribing to the task's result channel."""

    def add_pending_result(self, result: Any, weak: bool = False) -> Any:
        """Celery's, but nothing while a workflow is captured: a group subscribes to each
        member's channel as it sends it, in case its caller waits (`GroupResult.get()`), which
        a workflow sent by the bridge is not (it is followed through its own channel)."""
        if canvas.capturing() is not None:
            return result
        return super().add_pending_result(result, weak=weak)  # type: ignore[misc]

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's `_store_result`, without reading the state first (`_set` does)."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        key = self.get_key_for_task(task_id)  # type: ignore[attr-defined]
        self._set_with_state(key, self.encode(meta), state)  # type: ignore[attr-defined]
        return result

    def _set(self, key: str | bytes, value: Any, expires: Any = None) -> None:
        """Store and publish `value` at `key`, unless it holds SUCCESS (one round trip); count
        a workflow's member in its workflow."""
        self._store(key, value, expires, only_unstarted=False)

    def revoke_unless_started(self, task_id: str) -> bool:
        """Store REVOKED for the task only if it has not started (nothing stored, PENDING or
        RETRY); whether it was stored. The read and the write are one step: a task that starts,
        or ends, meanwhile keeps its state, where Celery's own `mark_as_revoked` would
        overwrite it. A task of a workflow is counted there, as for any state stored."""
        meta = {
            "status": states.REVOKED,
            "result": self.prepare_exception(TaskRevokedError("revoked")),  # type: ignore[attr-defined]
            "traceback": None,
            "children": [],
            "date_done": datetime.now(UTC).isoformat(),
            "task_id": task_id,
        }
        key = self.get_key_for_task(task_id)  # type: ignore[attr-defined]
        return self._store(key, self.encode(meta), None, only_unstarted=True)  # type: ignore[attr-defined]

    def _store(self, key: str | bytes, value: Any, expires: Any, *, only_unstarted: bool) -> bool:
        if expires is None:
            expires = self.expires
        script = self._store_script
        if script is None:
            script = self._store_script = self.client.register_script(STORE_UNLESS_SUCCEEDED)
        stored = script(
            keys=[key, membership_key(key), stream_key(key)],
            args=[value, int(expires or 0), "1" if only_unstarted else "0"],
            client=self.client,
        )
        return bool(stored)

    @property
    def client(self) -> Any:
        """Celery's client; while a workflow's messages are captured (`_broker.canvas`), a
        pipeline that keeps the writes Celery makes for it, to be sent with its messages."""
        captured = canvas.capturing()
        if captured is not None:
            return captured.backend_writes(super().client)  # type: ignore[misc]
        return super().client  # type: ignore[misc]

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

"""The names the bridge gives its own keys and channels in Redis, each under the app's name.

Every name starts with the name of the app the bridge serves (`app.name`): two apps that share
one Redis keep their records, marks and counts apart, and an app renamed starts afresh. The web
app and its workers build the same app, so they agree on every name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys and channels of one app's bridge in Redis."""

    #: The app's name, which begins every key.
    namespace: str

    def task(self, task_id: str) -> str:
        """The record of a published task: its name, for as long as its result is kept."""
        return f"{self.namespace}:task:{task_id}"

    def workflow(self, workflow_id: str) -> str:
        """The record of a workflow, the prefix of its counters, and its channel."""
        return f"{self.namespace}:workflow:{workflow_id}"

    def cancel_mark(self, task_id: str) -> str:
        """The mark that asks the worker running `task_id` to stop it."""
        return f"{self.namespace}:cancel:{task_id}"

    def cancel_channel(self, database: int) -> str:
        """The channel every worker process hears cancel requests on (pub/sub ignores the
        database number, so it is part of the name)."""
        return f"{self.namespace}:{database}:cancel"

    def idempotency(self, scope: str, key: str) -> str:
        """The claim of an `Idempotency-Key` of one client (`scope`)."""
        return f"{self.namespace}:idempotency:{scope}:{key}"

    @property
    def rate_limits(self) -> str:
        """The prefix of the windows of `API_RATE_LIMIT`."""
        return f"{self.namespace}:rate"

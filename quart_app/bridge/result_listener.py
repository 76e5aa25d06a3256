"""One Redis pub/sub connection per server process, fanning result updates out to websockets.

Celery's Redis result backend publishes every state it stores on `celery-task-meta-<id>`. The
listener subscribes once, to the pattern, so a follower (`quart_app.bridge.queue.Follower`)
starts hearing of a task by adding itself to a dict: no round trip, no thread, and nothing
published after that is missed. The follower then reads the stored state (subscribe first,
then read: no update falls in between).

If Redis goes away the listener reconnects with backoff, and once subscribed again it tells
every follower to read its tasks' state anew: an update published meanwhile is not lost.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from quart import Quart
from redis.asyncio import Redis
from redis.exceptions import RedisError

from quart_app.extensions import celery

EXTENSION = "result_listener"
CHANNEL_PREFIX = "celery-task-meta-"
MAX_BACKOFF = 5.0
READ_TIMEOUT = 0.1


@dataclass(frozen=True)
class Update:
    """News of a task: the meta it published, or None for "read its stored state again"."""

    task_id: str
    meta: dict[str, Any] | None = None


class Recipient(Protocol):
    """What the listener hands a task's updates to: a follower's inbox."""

    def deliver(self, update: Update) -> None:
        """Take an update, without waiting."""


class ResultListener:
    """Listens for every result publish on one connection and hands each to its recipients."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: The name its Redis connection goes by (CLIENT LIST), one per listener.
        self.client_name = f"quart_app-results-{os.getpid()}-{id(self):x}"
        self.recipients: defaultdict[str, set[Recipient]] = defaultdict(set)
        #: Set while subscribed: updates published now reach the recipients.
        self.subscribed = asyncio.Event()
        #: Set to stop listening (within `READ_TIMEOUT`).
        self.stopping = asyncio.Event()

    def subscribe(self, task_id: str, recipient: Recipient) -> None:
        """Deliver the task's updates to `recipient` from now on."""
        self.recipients[task_id].add(recipient)

    def unsubscribe(self, task_id: str, recipient: Recipient) -> None:
        """Stop delivering the task's updates to `recipient`; forget the task if none is left."""
        recipients = self.recipients.get(task_id)
        if recipients is not None:
            recipients.discard(recipient)
            if not recipients:
                del self.recipients[task_id]

    async def run(self) -> None:
        """Listen until `stopping` is set, reconnecting with backoff whenever Redis goes away.

        It reads with a timeout rather than waiting to be cancelled: a redis-py pub/sub read
        cancelled at the wrong moment was seen to swallow the cancellation and hang shutdown.
        """
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                client = Redis.from_url(
                    self.url, socket_connect_timeout=2, client_name=self.client_name
                )
                async with client, client.pubsub() as pubsub:
                    await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                    while not self.stopping.is_set():
                        message = await pubsub.get_message(timeout=READ_TIMEOUT)
                        if message is not None:
                            self.handle(message)
                            backoff = 0.1
            except (RedisError, OSError):
                self.subscribed.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
        self.subscribed.clear()

    def handle(self, message: dict[str, Any]) -> None:
        """Hand a published meta to the task's recipients; on (re)subscribing, ask all to
        read their tasks' stored state again."""
        if message["type"] == "psubscribe":
            self.subscribed.set()
            for followed_id, everyone in self.recipients.items():
                for recipient in everyone:
                    recipient.deliver(Update(followed_id))
            return
        if message["type"] != "pmessage":
            return
        task_id = message["channel"].decode().removeprefix(CHANNEL_PREFIX)
        recipients = self.recipients.get(task_id)
        if not recipients:
            return
        try:
            meta = json.loads(message["data"])
        except ValueError:
            return
        if not isinstance(meta, dict):
            return
        for recipient in list(recipients):
            recipient.deliver(Update(task_id, meta))


def init_app(app: Quart) -> None:
    """Run the listener while the app serves."""

    @app.while_serving
    async def listener() -> AsyncGenerator[None, None]:
        # Celery publishes on the result backend's Redis.
        url = str(celery.conf.result_backend)
        if not url.startswith(("redis://", "rediss://")):
            url = app.config["REDIS_URL"]
        result_listener = app.extensions[EXTENSION] = ResultListener(url)
        running = asyncio.create_task(result_listener.run())
        yield
        result_listener.stopping.set()
        await running
        del app.extensions[EXTENSION]

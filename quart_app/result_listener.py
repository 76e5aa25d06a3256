"""One Redis pub/sub connection per server process, fanning result updates out to websockets.

Celery's Redis result backend publishes every state it stores on `celery-task-meta-<id>`. The
listener subscribes once, to the pattern, so a socket starts watching a task by adding itself
to a dict: no round trip, no thread, and nothing published after that is missed. A socket
then reads the stored state (subscribe first, then read: no update falls in between).

If Redis goes away the listener reconnects with backoff, and once subscribed again it tells
every watcher to read its tasks' state anew: an update published meanwhile is not lost.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import AsyncGenerator
from contextlib import suppress
from typing import Any

from quart import Quart
from redis.asyncio import Redis
from redis.exceptions import RedisError

from quart_app.extensions import celery

EXTENSION = "result_listener"
CHANNEL_PREFIX = "celery-task-meta-"
MAX_BACKOFF = 5.0
READ_TIMEOUT = 0.1

#: An update for a socket: a task's id, and its published meta, or None for "read it again".
Update = tuple[str, dict[str, Any] | None]


class Inbox:
    """The updates waiting for one socket, at most `size` of them."""

    def __init__(self, size: int) -> None:
        self.updates: asyncio.Queue[Update] = asyncio.Queue(size)
        #: Set when the socket fell so far behind that updates had to be dropped.
        self.overflowed = asyncio.Event()

    def deliver(self, update: Update) -> None:
        """Queue an update, or mark the inbox overflowed if the socket can't keep up."""
        try:
            self.updates.put_nowait(update)
        except asyncio.QueueFull:
            self.overflowed.set()


class ResultListener:
    """Listens for every result publish on one connection and hands each to its watchers."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: The name its Redis connection goes by (CLIENT LIST), one per listener.
        self.client_name = f"quart_app-results-{os.getpid()}-{id(self):x}"
        self.watchers: defaultdict[str, set[Inbox]] = defaultdict(set)
        #: Set while subscribed: updates published now reach the watchers.
        self.subscribed = asyncio.Event()
        #: Set to stop listening (within `READ_TIMEOUT`).
        self.stopping = asyncio.Event()

    def watch(self, task_id: str, inbox: Inbox) -> None:
        """Deliver the task's updates to `inbox` from now on."""
        self.watchers[task_id].add(inbox)

    def unwatch(self, task_id: str, inbox: Inbox) -> None:
        """Stop delivering the task's updates to `inbox`; forget the task if none watches."""
        inboxes = self.watchers.get(task_id)
        if inboxes is not None:
            inboxes.discard(inbox)
            if not inboxes:
                del self.watchers[task_id]

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
        """Hand a published meta to the task's watchers; on (re)subscribing, ask all to re-read."""
        if message["type"] == "psubscribe":
            self.subscribed.set()
            for task_id, watching in self.watchers.items():
                for inbox in watching:
                    inbox.deliver((task_id, None))
            return
        if message["type"] != "pmessage":
            return
        task_id = message["channel"].decode().removeprefix(CHANNEL_PREFIX)
        inboxes = self.watchers.get(task_id)
        if not inboxes:
            return
        try:
            meta = json.loads(message["data"])
        except ValueError:
            return
        for inbox in list(inboxes):
            inbox.deliver((task_id, meta))


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

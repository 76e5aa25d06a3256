"""Following tasks: their snapshot, then each change of it, as the result listener hears it.

A `Follower` is what one consumer follows: a websocket follows many tasks with one follower,
`queue.follow()` one task. Updates come from the process's pub/sub listener
(`quart_celery._client.listener`) into one `Inbox`; only reading a stored state (on following,
and after the listener reconnects) uses the thread pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from quart import current_app

from quart_celery._broker.task_ids import parse_task_id
from quart_celery._client import listener
from quart_celery._client.current import current_celery
from quart_celery._client.listener import ResultListener, Update
from quart_celery._client.reader import task_reader
from quart_celery._client.snapshots import decoded, snapshot_from_meta
from quart_celery._observability import metrics
from quart_celery.errors import APIError, FellBehind, ResultTimeout, TaskNotFound
from quart_celery.schemas import TaskSnapshot
from quart_celery.states import FINAL_STATES

logger = logging.getLogger(__name__)
Change = TypeVar("Change")


@dataclass(frozen=True)
class Unfollowed:
    """The follower stopped following this task: nothing more of it comes after this."""

    task_id: str


@dataclass(frozen=True)
class TaskError:
    """A followed task could not be served (its state could not be read): it is dropped."""

    task_id: str
    error: APIError


class Inbox:
    """The updates waiting for one follower, at most `size` of them.

    Not an `asyncio.Queue`: a server holds one per waiting socket, and a queue is four deques
    and an event (3.8 KiB) where this is a list and, only while its follower waits, a future.
    """

    __slots__ = ("_waiter", "broken", "size", "updates")

    def __init__(self, size: int) -> None:
        self.size = size
        self.updates: list[Update | Unfollowed] = []
        #: Why the follower can read no more (it fell behind, the server is going away).
        self.broken: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, update: Update | Unfollowed) -> None:
        """Queue an update, or mark the follower fallen behind if it can't keep up."""
        if len(self.updates) < self.size:
            self.updates.append(update)
        elif self.broken is None:
            self.broken = FellBehind(f"more than {self.size} updates waited")
        self._wake()

    def interrupt(self, reason: Exception) -> None:
        """End the follower's reading: `get()` raises `reason` from now on."""
        if self.broken is None:
            self.broken = reason
        self._wake()

    async def get(self) -> Update | Unfollowed:
        """The next update, when there is one; what broke the inbox, if something did."""
        while self.broken is None and not self.updates:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.broken is not None:
            raise self.broken
        return self.updates.pop(0)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@dataclass(slots=True)
class Followed:
    """A task a follower follows, and the last snapshot it gave of it (as JSON)."""

    name: str
    last: str | None = None


class Follower:
    """The tasks one consumer follows, and their changes, in the order they came.

    A websocket follows many tasks with one follower; `follow()` one task. Updates come from
    the process's pub/sub listener into one inbox; only reading a stored state (on following,
    and after the listener reconnects) uses the thread pool. A snapshot equal to the last one
    given for its task is not given again; after a task's final state it is no longer followed.
    """

    def __init__(self) -> None:
        self.listener: ResultListener = current_app.extensions[listener.EXTENSION]
        self.inbox = Inbox(current_app.config["WS_QUEUE_SIZE"])
        self.followed: dict[str, Followed] = {}
        self.debug = current_app.debug
        self.metrics = metrics.current()
        self.reader = task_reader()
        # A key-value backend's (Redis's), whose `decode` the stubs leave out of `Backend`.
        self.backend: Any = current_celery().backend

    async def follow(self, task_id: object) -> str:
        """Follow a published task from now on; its id in the usual form.

        `TaskNotFound` if no task was published as `task_id`. Its stored state comes first,
        read once Redis has confirmed the subscription to its channel, and behind any update
        that arrives meanwhile: none falls in between.
        """
        normal = parse_task_id(task_id)
        if normal is None:
            raise TaskNotFound(task_id)
        if normal not in self.followed:
            name = (await self.reader.read(normal, name=True)).name
            if name is None:
                raise TaskNotFound(task_id)
            self.followed[normal] = Followed(name)
            await self.listener.subscribe(normal, self.inbox)
            self.inbox.deliver(Update(normal))
        return normal

    def unfollow(self, task_id: str) -> None:
        """Stop following a task; `Unfollowed` comes out after everything queued before it."""
        self._drop(task_id)
        self.inbox.deliver(Unfollowed(task_id))

    def waiting(self) -> int:
        """How many updates wait in the inbox now."""
        return len(self.inbox.updates)

    def close(self) -> None:
        """Stop following every task: the consumer is gone, and leaves nothing behind."""
        for task_id in list(self.followed):
            self._drop(task_id)

    async def next_event(self) -> TaskSnapshot | Unfollowed | TaskError:
        """The next change of a followed task, an unfollowed task's notice, or a task's error.

        `FellBehind` if the inbox overflowed.
        """
        while True:
            update = await self.inbox.get()
            if isinstance(update, Unfollowed):
                return update
            followed = self.followed.get(update.task_id)
            if followed is None:  # unfollowed meanwhile
                continue
            try:
                snapshot = await self._snapshot(update, followed.name)
            except APIError as error:
                self._drop(update.task_id)
                return TaskError(update.task_id, error)
            except Exception:
                logger.exception("could not serve the state of task %s", update.task_id)
                self._drop(update.task_id)
                failed = APIError(500, "internal_error", "The server failed to read this task.")
                return TaskError(update.task_id, failed)
            text = snapshot.model_dump_json()
            if self.followed.get(update.task_id) is not followed or text == followed.last:
                continue  # unfollowed while it was read, or nothing new
            followed.last = text
            if snapshot.state in FINAL_STATES:
                self._drop(update.task_id)
            if update.meta is not None and self.metrics is not None:
                self.metrics.observe_delivery(update.meta)  # pushed, as it is handed on
            return snapshot

    async def _snapshot(self, update: Update, name: str) -> TaskSnapshot:
        """The snapshot an update stands for: the meta it carries, or the stored one."""
        meta = update.meta
        if meta is None:
            meta = decoded(
                self.backend, (await self.reader.read(update.task_id, stored=True)).stored
            )
        return snapshot_from_meta(update.task_id, name, meta, self.debug)

    def _drop(self, task_id: str) -> None:
        """Forget a task, and stop hearing of it."""
        self.followed.pop(task_id, None)
        self.listener.unsubscribe(task_id, self.inbox)


async def last_change(
    changes: AsyncGenerator[Change, None], followed_id: str, timeout: float | None
) -> Change:
    """The last of `changes` (a follow, which ends after the final state), waited for at most
    `timeout` seconds (None: as long as it takes); `ResultTimeout` (504) past it."""
    last: Change | None = None
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline, aclosing(changes) as following:
            async for change in following:
                last = change
    except TimeoutError:
        if timeout is None or not deadline.expired():
            raise
        raise ResultTimeout(followed_id, timeout) from None
    assert last is not None
    return last

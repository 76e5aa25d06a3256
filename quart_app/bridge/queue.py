"""The task queue from async code: submit a task, look one up, follow one, wait for its result.

For your own views and websocket handlers, in place of Celery's blocking calls (`delay()`,
`AsyncResult.get()`), which would stall the event loop; Celery itself has no awaitable result
(celery/celery#6603). Call these while the app serves, in its context:

    task_id = await queue.submit(send_report, report_id=7)
    snapshot = await queue.look_up(task_id)
    async for snapshot in queue.follow(task_id):
        ...
    report = await queue.result(task_id, timeout=30)

Submitting goes through the app's submitter, in batches; a look-up through its thread pool;
following and waiting through the process's one pub/sub listener, so a follower costs no
thread and no polling. The JSON API and the websockets are built on these same calls.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from celery import Signature, Task
from quart import current_app

from quart_app.bridge import metrics, records, result_listener
from quart_app.bridge.errors import APIError, ServiceUnavailable, TaskNotFound
from quart_app.bridge.lookups import look_ups
from quart_app.bridge.result_listener import ResultListener, Update
from quart_app.bridge.schemas import TaskSnapshot
from quart_app.bridge.snapshots import decoded, snapshot_from_meta
from quart_app.bridge.states import FINAL_STATES, TaskState
from quart_app.bridge.submitter import Submission, submitter
from quart_app.extensions import celery

logger = logging.getLogger(__name__)


class TaskFailed(Exception):
    """The task raised an exception: its snapshot says which (`snapshot.error`)."""

    def __init__(self, snapshot: TaskSnapshot) -> None:
        error = snapshot.error
        cause = f"{error.type}: {error.message}" if error else "no error was stored"
        super().__init__(f"task {snapshot.id} ({snapshot.name}) failed: {cause}")
        self.snapshot = snapshot


class TaskRevoked(Exception):
    """The task was revoked: it has no result."""

    def __init__(self, snapshot: TaskSnapshot) -> None:
        super().__init__(f"task {snapshot.id} ({snapshot.name}) was revoked")
        self.snapshot = snapshot


class FellBehind(Exception):
    """More updates waited for a follower than `WS_QUEUE_SIZE`: some had to be dropped."""


async def submit(task: Task[Any, Any] | Signature[Any], /, *args: Any, **kwargs: Any) -> str:
    """Send a run of `task` with these arguments; its id, once the broker has it.

    For Celery's options, pass a signature instead: `submit(report.s(7).set(countdown=60))`
    (with `task_id` among them, the task gets that id).
    `ServiceUnavailable` (503) if the broker does not take it within `BLOCKING_TIMEOUT`: it was
    not sent then, and it will not be.
    """
    if isinstance(task, Signature):
        if args or kwargs:
            raise TypeError("submit(signature) takes no more arguments: put them in the signature")
        signature = task
        if signature.task is None:
            raise TypeError(f"{signature!r} names no task")
        task = celery.tasks[signature.task]
        args, kwargs = tuple(signature.args), dict(signature.kwargs)
        options = dict(signature.options)
    else:
        options = {}
    task_id = str(options.pop("task_id", None) or uuid.uuid4())
    submission = Submission(task, args, kwargs, options, task_id=task_id)
    try:
        await submitter().submit(submission)
    except ServiceUnavailable:
        metrics.count_submission(task.name, "unavailable")
        raise
    metrics.count_submission(task.name, "accepted")
    return submission.task_id


async def look_up(task_id: str) -> TaskSnapshot:
    """The task's snapshot now; `TaskNotFound` (404) if no task was published as `task_id`."""
    normal = records.parse_id(task_id)
    if normal is None:
        raise TaskNotFound(task_id)
    found = await look_ups().read(normal, name=True, stored=True)
    if found.name is None:
        raise TaskNotFound(task_id)
    return snapshot_from_meta(normal, found.name, decoded(found.stored), current_app.debug)


async def follow(task_id: str) -> AsyncGenerator[TaskSnapshot, None]:
    """The task's snapshot, then each change of it as it happens, ending after its final state.

    `TaskNotFound` if no task was published as `task_id`; `FellBehind` if more than
    `WS_QUEUE_SIZE` changes wait for you. Stopping early, wrap it in `contextlib.aclosing` to
    stop following at once rather than when the iterator is collected.
    """
    follower = Follower()
    try:
        await follower.follow(task_id)
        while True:
            event = await follower.next_event()
            if isinstance(event, TaskError):
                raise event.error
            if isinstance(event, TaskSnapshot):
                yield event
                if event.state in FINAL_STATES:
                    return
    finally:
        follower.close()


async def result(task_id: str, timeout: float | None = None) -> Any:
    """Wait for the task's result, for at most `timeout` seconds (None: for as long as it takes).

    `TaskFailed` if it failed, `TaskRevoked` if it was revoked, `TimeoutError` if it has not
    ended in time (it goes on running), `TaskNotFound` if no task was published as `task_id`.
    """
    last: TaskSnapshot | None = None
    async with asyncio.timeout(timeout), aclosing(follow(task_id)) as changes:
        async for snapshot in changes:
            last = snapshot
    assert last is not None and last.state in FINAL_STATES
    if last.state == TaskState.SUCCESS:
        return last.result
    if last.state == TaskState.FAILURE:
        raise TaskFailed(last)
    raise TaskRevoked(last)


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
        self.listener: ResultListener = current_app.extensions[result_listener.EXTENSION]
        self.inbox = Inbox(current_app.config["WS_QUEUE_SIZE"])
        self.followed: dict[str, Followed] = {}
        self.debug = current_app.debug
        self.metrics = metrics.current()

    async def follow(self, task_id: object) -> str:
        """Follow a published task from now on; its id in the usual form.

        `TaskNotFound` if no task was published as `task_id`. Its stored state comes first,
        read once Redis has confirmed the subscription to its channel, and behind any update
        that arrives meanwhile: none falls in between.
        """
        normal = records.parse_id(task_id)
        if normal is None:
            raise TaskNotFound(task_id)
        if normal not in self.followed:
            name = (await look_ups().read(normal, name=True)).name
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
            meta = decoded((await look_ups().read(update.task_id, stored=True)).stored)
        return snapshot_from_meta(update.task_id, name, meta, self.debug)

    def _drop(self, task_id: str) -> None:
        """Forget a task, and stop hearing of it."""
        self.followed.pop(task_id, None)
        self.listener.unsubscribe(task_id, self.inbox)

"""Cancelling a task that is running: the worker's half (`quart_celery._broker.cancel_requests`
is the request).

Celery can only kill a running task's pool process (`revoke(terminate=True)`), which the
threads pool cannot do and which, with late acknowledgement, hands the task to the next worker.
Here cancelling is cooperative, like Celery's own `AbortableTask` and arq's `abort`:

- the web app asks (`request_cancel`): a mark in Redis, and a message on a channel that every
  worker process listens to (`Listener`, one per process);
- an `async def` task is cancelled on its event loop at once: `CancelledError` is raised where
  it awaits, so its `finally` blocks run, and the app context's teardown after them;
- a sync task stops at its next `checkpoint()`, a call a long task makes between steps
  (`progress_task` makes one after each); one that never calls it runs to its end;
- either way the task ends REVOKED, its message is acknowledged (so late acknowledgement
  never brings it back), and the REVOKED state is published as every state is: both
  websockets push it.

A task that catches the cancellation (`TaskCancelled`, `CancelledError`) and goes on is not
stopped. Each worker process listens once it runs its first task, and reads the mark when a
task starts, so a request made just before that is not missed.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import signals
from redis.exceptions import RedisError

from quart_celery._broker import address as redis_address
from quart_celery._broker.address import RedisAddress
from quart_celery._broker.cancel_requests import database_of
from quart_celery._broker.keys import Keys
from quart_celery._broker.round_trips import shares_round_trips, sharing

logger = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT = 2.0
READ_TIMEOUT = 0.5
MAX_BACKOFF = 5.0


class TaskCancelled(BaseException):
    """The running task was asked to stop (raised by `checkpoint`).

    A `BaseException`, as `asyncio.CancelledError` is, so that a task's `except Exception`
    does not swallow it by accident.
    """


@dataclass(eq=False)
class Running:
    """A task running in this process, and how to stop it."""

    task_id: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: Where an `async def` task runs: its loop and its asyncio task.
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None

    def cancel(self) -> None:
        """Stop it: mark it, and cancel its asyncio task where it has one."""
        self.cancelled.set()
        loop, task = self.loop, self.task
        if loop is not None and task is not None and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    async def run(self, coroutine: Any) -> Any:
        """Await an `async def` task's coroutine, cancellable from another thread."""
        self.loop, self.task = asyncio.get_running_loop(), asyncio.current_task()
        try:
            if self.cancelled.is_set():
                if inspect.iscoroutine(coroutine):  # never started: closed, not left to warn
                    coroutine.close()  # "never awaited" as it is collected
                raise asyncio.CancelledError
            return await coroutine
        finally:
            self.loop = self.task = None


class Listener:
    """This process's subscription to the cancel requests, and the tasks running in it."""

    def __init__(self, address: RedisAddress, keys: Keys) -> None:
        self.redis = shares_round_trips(address.client(socket_connect_timeout=2, socket_timeout=2))
        self.keys = keys
        self.channel = keys.cancel_channel(database_of(self.redis))
        self.running: dict[str, Running] = {}
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.stopping = threading.Event()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._listen, name="cancel-listener", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop listening: the thread closes its connection and ends within `READ_TIMEOUT`
        (not waited for: a worker shutting down has better things to do)."""
        self.stopping.set()

    @contextmanager
    def watching(self, task_id: str) -> Iterator[Running]:
        """Make `task_id` cancellable while the block runs it."""
        running = Running(task_id)
        with self.lock:
            self.running[task_id] = running
        try:
            self.subscribed.wait(SUBSCRIBE_TIMEOUT)
            try:
                with sharing():  # one read, holding nothing (`_broker.round_trips`)
                    marked = self.redis.exists(self.keys.cancel_mark(task_id))
                if marked:
                    running.cancelled.set()
            except RedisError:
                logger.warning("could not read whether task %s was cancelled", task_id)
            yield running
        finally:
            with self.lock:
                self.running.pop(task_id, None)

    def _listen(self) -> None:
        """Hear cancel requests until stopped, reconnecting with backoff if need be."""
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
                with pubsub:
                    pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    backoff = 0.1
                    self._read_marks()  # of what was asked while it was not listening
                    while not self.stopping.is_set():
                        message = pubsub.get_message(timeout=READ_TIMEOUT)
                        if message is not None and message["type"] == "message":
                            self._cancel(message["data"].decode(errors="replace"))
            except Exception as error:
                if not isinstance(error, RedisError | OSError):
                    logger.exception("the cancel listener failed; it listens again")
                self.subscribed.clear()
                self.stopping.wait(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
        redis_address.close(self.redis)

    def _read_marks(self) -> None:
        """Stop the running tasks whose cancel mark was set (while not subscribed)."""
        with self.lock:
            running = list(self.running.values())
        for each in running:
            if self.redis.exists(self.keys.cancel_mark(each.task_id)):
                each.cancel()

    def _cancel(self, task_id: str) -> None:
        with self.lock:
            running = self.running.get(task_id)
        if running is not None:
            running.cancel()


_listener: Listener | None = None
#: Where this process hears cancel requests: the app's Redis, and its keys there.
_where: tuple[RedisAddress, Keys] | None = None
_lock = threading.Lock()


def init_celery(address: RedisAddress | None, keys: Keys) -> None:
    """Hear cancel requests on the app's Redis at `address` (None: nowhere), once tasks run;
    stop when the worker (or its pool process) shuts down."""
    global _where
    where = None if address is None else (address, keys)
    with _lock:
        if where != _where:
            _where = where
            _stop_listener()
    for signal in (signals.worker_process_shutdown, signals.worker_shutdown):
        signal.connect(_on_shutdown, weak=False, dispatch_uid=__name__)


def _on_shutdown(**_: Any) -> None:
    """A Celery signal receiver: stop this process's listener."""
    with _lock:
        _stop_listener()


def _stop_listener() -> None:
    """Stop the listener of this process, if it has one (the caller holds `_lock`)."""
    global _listener
    if _listener is not None and _listener.pid == os.getpid():
        _listener.stop()
    _listener = None


def listener() -> Listener | None:
    """This process's listener, started on first use (again in a forked child)."""
    global _listener
    with _lock:
        if _where is None:
            return None
        if _listener is None or _listener.pid != os.getpid():
            _listener = Listener(*_where)
        return _listener


#: The task running here: per thread, per greenlet of the async pool, per coroutine.
_current: contextvars.ContextVar[Running | None] = contextvars.ContextVar(
    "quart_celery_running", default=None
)


@contextmanager
def cancellable(task_id: str | None) -> Iterator[Running | None]:
    """Run a task's body as cancellable (where its id is known and a listener can run)."""
    found = listener() if task_id else None
    if found is None or task_id is None:
        yield None
        return
    with found.watching(task_id) as running:
        token = _current.set(running)
        try:
            yield running
        finally:
            _current.reset(token)


def checkpoint() -> None:
    """Stop here if this task was asked to stop: raises `TaskCancelled`.

    Call it between the steps of a long sync task; it costs a look at a flag. In an `async def`
    task it is not needed (the task is cancelled where it awaits), but harmless.
    """
    running = _current.get()
    if running is not None and running.cancelled.is_set():
        raise TaskCancelled(f"task {running.task_id} was cancelled")

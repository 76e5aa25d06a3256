"""Reading tasks' records and stored states, in batches (the `TaskReader` of a serving app).

Every look-up blocks on Redis, so it runs in the app's thread pool. One trip to the pool per
look-up let a burst starve everyone: 1,000 websockets connecting at once queued 2,000 reads
ahead of any `GET /api/tasks/<id>` (its p99 was 295 ms). So the look-ups waiting at the same
moment go together, as submissions do: one trip to the pool, one MGET of the records and one
of the stored states, for the whole batch. `GET`s, websocket subscriptions and the snapshots a
follower reads again all go through here. An idle server reads a lone look-up at once.

What is read comes back raw (the record's name, the stored bytes): the caller decodes it, so
that a stored state that cannot be decoded costs only its own task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from quart import Quart, current_app
from redis import Redis

from quart_celery._broker import records
from quart_celery._broker.chunks import PAGE, StoredPage, entry_id, parse_page, stream_key
from quart_celery._broker.keys import Keys
from quart_celery._client.availability import as_api_error
from quart_celery._client.blocking import run_blocking
from quart_celery._client.connections import blocking_redis
from quart_celery._client.current import celery_of, current_keys
from quart_celery.errors import ServiceUnavailable

EXTENSION = "quart_celery.reader"
#: Look-ups answered in one turn of the event loop. Answering a whole batch at once woke all
#: its callers in the same turn: for 1,000 sockets reading their snapshots, a `GET` waited
#: 0.7 to 1.3 s behind them (`bench/lookups.py`).
SETTLED_AT_ONCE = 32


@dataclass(slots=True)
class Found:
    """What was read of a task: the name it was published under, and its stored state."""

    #: None: no task was published under this id (or it was not asked for).
    name: str | None
    #: The stored meta, as Celery's backend stored it; None: nothing is stored (or not asked).
    stored: bytes | None
    #: Its stored chunks from the offset asked for (or from before it), a page at most
    #: (`_broker.chunks.PAGE` entries), read after its state; None: not asked for.
    chunks: StoredPage | None = None


@dataclass(slots=True)
class Wanted:
    """A look-up waiting for the next batch: what it wants read, and where the answer goes."""

    task_id: str
    name: bool
    stored: bool
    chunks_from: int | None
    found: asyncio.Future[Found] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class TaskReader:
    """Reads what the look-ups on one event loop want, a batch at a time."""

    def __init__(self, redis: Redis, backend: Any, keys: Keys) -> None:
        """A reader of the records in `redis` (under `keys`) and of the states stored by
        Celery's Redis result `backend`."""
        self.redis = redis
        self.backend = backend
        self.keys = keys
        self.waiting: list[Wanted] = []
        self.reading: asyncio.Task[None] | None = None

    async def read(
        self,
        task_id: str,
        *,
        name: bool = False,
        stored: bool = False,
        chunks_from: int | None = None,
    ) -> Found:
        """Read the task's record (`name`), its stored state (`stored`) and a page of its
        chunks from offset `chunks_from`, with the look-ups waiting now. 503 if Redis cannot
        be reached in time."""
        wanted = Wanted(task_id, name, stored, chunks_from)
        self.waiting.append(wanted)
        if self.reading is None:
            self.reading = asyncio.create_task(self.read_waiting())
        return await wanted.found

    async def read_waiting(self) -> None:
        """Read batches until none waits; if cancelled (serving stops), answer the rest 503."""
        batch: list[Wanted] = []
        try:
            while self.waiting:
                batch, self.waiting = self.waiting, []
                await self.read_batch(batch)
        finally:
            self.reading = None
            unanswered, self.waiting = batch + self.waiting, []
            for wanted in unanswered:
                if not wanted.found.done():
                    wanted.found.set_exception(ServiceUnavailable("The server is shutting down."))

    async def read_batch(self, batch: list[Wanted]) -> None:
        """One trip to the pool for the batch; settle each look-up's future."""
        asked = [
            Asked(wanted.task_id, wanted.name, wanted.stored, wanted.chunks_from)
            for wanted in batch
        ]
        try:
            found = await run_blocking("Redis", read, self.redis, self.backend, self.keys, asked)
        except Exception as error:
            failure = as_api_error("Redis", error)
            for wanted in batch:
                if not wanted.found.done():
                    wanted.found.set_exception(failure)
            return
        for start in range(0, len(batch), SETTLED_AT_ONCE):
            if start:
                await asyncio.sleep(0)  # let the loop come round: the others' turn
            for wanted, one in zip(
                batch[start : start + SETTLED_AT_ONCE],
                found[start : start + SETTLED_AT_ONCE],
                strict=True,
            ):
                if not wanted.found.done():  # its caller was cancelled meanwhile
                    wanted.found.set_result(one)

    async def close(self) -> None:
        """Stop reading: cancel the batch in hand, answering its look-ups 503."""
        if self.reading is not None:
            self.reading.cancel()
            with suppress(asyncio.CancelledError):
                await self.reading


@dataclass(frozen=True, slots=True)
class Asked:
    """What one look-up of a batch asks read (`TaskReader.read`)."""

    task_id: str
    name: bool = False
    stored: bool = False
    chunks_from: int | None = None


def read(redis: Redis, backend: Any, keys: Keys, asked: list[Asked]) -> list[Found]:
    """Each task's record, stored state and chunks, as asked: one MGET of the records, and
    one of the stored states, with the chunks' reads behind it in one pipeline (a state read
    first: if it is final, every chunk before it is in the stream). In the thread pool.

    A page of chunks is read for each task and offset asked, once however many ask it: two
    followers of one task in one batch may want it from different offsets."""
    record_ids = [one.task_id for one in asked if one.name]
    stored_ids = [one.task_id for one in asked if one.stored]
    pages = list(
        dict.fromkeys(
            (one.task_id, one.chunks_from) for one in asked if one.chunks_from is not None
        )
    )
    names = dict(zip(record_ids, records.names_of(redis, keys, record_ids), strict=True))
    stored: dict[str, bytes | None] = {}
    chunks: dict[tuple[str, int | None], StoredPage] = {}
    stored_keys = [backend.get_key_for_task(task_id) for task_id in stored_ids]
    if pages:
        pipe = backend.client.pipeline(transaction=False)
        if stored_keys:
            pipe.mget(stored_keys)
        for task_id, start in pages:
            key = stream_key(backend.get_key_for_task(task_id))
            pipe.xrange(key, entry_id(start or 0), "+", count=PAGE)
        replies = pipe.execute()
        if stored_keys:
            stored = dict(zip(stored_ids, replies.pop(0), strict=True))
        for page, entries in zip(pages, replies, strict=True):
            chunks[page] = parse_page(entries)
    elif stored_keys:
        stored = dict(zip(stored_ids, backend.client.mget(stored_keys), strict=True))
    return [
        Found(
            names.get(one.task_id),
            stored.get(one.task_id),
            chunks.get((one.task_id, one.chunks_from)),
        )
        for one in asked
    ]


def init_app(app: Quart) -> None:
    """Make the app's reader when serving starts; stop it when serving stops."""

    @app.while_serving
    async def task_reader() -> AsyncGenerator[None, None]:
        # A key-value backend's (Redis's) methods, which the stubs leave out of `Backend`.
        backend: Any = celery_of(app).backend
        app.extensions[EXTENSION] = TaskReader(blocking_redis(), backend, current_keys())
        yield
        await app.extensions.pop(EXTENSION).close()


def task_reader() -> TaskReader:
    """The serving app's reader."""
    found: TaskReader = current_app.extensions[EXTENSION]
    return found

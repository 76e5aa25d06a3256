"""Following tasks: their snapshot, then each change of it, as the result listener hears it.

A `Follower` is what one consumer follows: a websocket follows many tasks with one follower,
`queue.follow()` one task. Updates come from the process's pub/sub listener
(`quart_celery._client.listener`) into one `Inbox`; only reading a stored state (on following,
and after the listener reconnects) uses the thread pool.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeAlias, TypeVar

import orjson
from quart import current_app

from quart_celery._broker.chunks import StoredChunk, StoredPage
from quart_celery._broker.task_ids import parse_task_id
from quart_celery._client import listener
from quart_celery._client.current import current_celery
from quart_celery._client.listener import Chunks, ResultListener, Update, batch_message
from quart_celery._client.reader import task_reader
from quart_celery._client.snapshots import decoded, snapshot_from_meta
from quart_celery._observability import metrics
from quart_celery.errors import APIError, FellBehind, ResultTimeout, TaskNotFound
from quart_celery.schemas import TaskSnapshot
from quart_celery.states import FINAL_STATES

logger = logging.getLogger(__name__)
#: The most characters of chunks one message carries, taking chunks in batches (a batch as the
#: worker wrote it goes whole): as many as the bytes of one of the worker's own batches at most
#: (`quart_celery._worker.streams.BATCH_BYTES`).
BATCH_SIZE = 256 * 1024
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

    __slots__ = ("_waiter", "broken", "express", "missed", "size", "updates", "wants_chunks")

    def __init__(self, size: int) -> None:
        self.size = size
        self.updates: list[Update | Chunks | Unfollowed | Written] = []
        #: Why the follower can read no more (it fell behind, the server is going away).
        self.broken: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: Whether chunks are delivered: only to a follower that follows some task's chunks.
        self.wants_chunks = False
        #: Tasks a batch of whose chunks found the inbox full: read from their streams instead.
        self.missed: set[str] | None = None
        #: Where published states and batches of chunks may go straight on, while the follower
        #: waits with nothing before them (`Follower.write_with`): whether it took one.
        self.express: Callable[[Update | Chunks], bool] | None = None

    def deliver(self, update: Update | Chunks | Unfollowed | Written) -> None:
        """Queue an update, or mark the follower fallen behind if it can't keep up (a batch of
        chunks that does not fit is read again from its task's stream, later)."""
        if isinstance(update, Chunks) and not self.wants_chunks:
            return
        if (
            self.express is not None
            and isinstance(update, Update | Chunks)
            and self._idle()
            and self.express(update)
        ):
            return
        if isinstance(update, Chunks) and len(self.updates) >= self.size:
            if self.missed is None:
                self.missed = set()
            self.missed.add(update.task_id)
            return
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

    def next_chunks(self, task_id: str) -> Chunks | None:
        """The next update, without waiting, if it is a batch of chunks of the task."""
        if self.broken is not None or not self.updates:
            return None
        update = self.updates[0]
        if not isinstance(update, Chunks) or update.task_id != task_id:
            return None
        del self.updates[0]
        return update

    async def get(self) -> Update | Chunks | Unfollowed | Written:
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

    def _idle(self) -> bool:
        """Whether the follower waits for its next update, with none waiting or on its way."""
        waiter = self._waiter
        return (
            waiter is not None
            and not waiter.done()
            and not self.updates
            and self.broken is None
            and not self.missed
        )


@dataclass(frozen=True, slots=True)
class StreamedChunk:
    """A chunk a followed task streamed: its offset (0, 1, 2, ...) and the chunk as JSON."""

    task_id: str
    offset: int
    json: str

    @property
    def value(self) -> Any:
        """The chunk, as the task sent it."""
        return orjson.loads(self.json)

    def message(self) -> str:
        """The chunk as the websocket sends it: `{"id", "offset", "chunk"}`."""
        task_id = orjson.dumps(self.task_id).decode()
        return f'{{"id":{task_id},"offset":{self.offset},"chunk":{self.json}}}'


@dataclass(frozen=True, slots=True)
class StreamedBatch:
    """Consecutive chunks of a followed task, given as one (to a follower that takes chunks in
    batches): the offset of the first, how many there are, and the chunks (each as JSON,
    comma-separated); with the websocket message that carries them, where it is made once for
    every follower (a batch as it was published)."""

    task_id: str
    offset: int
    count: int
    body: str
    text: str | None = None

    def message(self) -> str:
        """The chunks as the websocket sends them: `{"id", "offset", "chunks": [...]}`."""
        if self.text is not None:
            return self.text
        return batch_message(self.task_id, self.offset, self.body)


@dataclass(frozen=True, slots=True)
class Changed:
    """A followed task's new snapshot, and its JSON as a websocket sends it: made once, by the
    first of the task's followers to take a published state. Dumped again at each socket's
    send, the JSON was a tenth of what a server spends sending a state to 100 sockets of one
    task (`bench/followers.py`)."""

    snapshot: TaskSnapshot
    json: str

    @property
    def state(self) -> str:
        return self.snapshot.state


@dataclass(frozen=True, slots=True)
class Written:
    """A task's final snapshot, written to the socket already, straight from the listener
    (`Follower.write_with`): what is left is what follows sending it."""

    changed: Changed

    @property
    def state(self) -> str:
        return self.changed.state


@dataclass(slots=True)
class Followed:
    """A task a follower follows, the last snapshot it gave of it (as JSON), and, where its
    chunks are followed too, the offset of the next one to give."""

    name: str
    last: str | None = None
    #: None: its chunks are not followed.
    next_offset: int | None = None
    #: Its final snapshot, held until the chunks stored before it have been given.
    held: Changed | None = None
    #: Whether its stored state has been read: what was published before that read is no
    #: newer than what it gives (a final state published first would pass over the chunks
    #: stored before the follower subscribed).
    read: bool = False


Event: TypeAlias = Changed | Written | StreamedChunk | StreamedBatch | Unfollowed | TaskError


class Ready:
    """Events made and not yet given, first in first out.

    Not a `deque`: a server holds a follower per waiting socket, and an empty deque is 600
    bytes where this is a hundred; a list taken from the front by an index, emptied once
    all is taken.
    """

    __slots__ = ("events", "taken")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.taken = 0

    def __len__(self) -> int:
        return len(self.events) - self.taken

    def append(self, event: Event) -> None:
        self.events.append(event)

    def extend(self, events: Iterable[Event]) -> None:
        self.events.extend(events)

    def first(self) -> Event:
        """The next event, left in place."""
        return self.events[self.taken]

    def popleft(self) -> Event:
        event = self.events[self.taken]
        self.taken += 1
        if self.taken == len(self.events):
            self.events, self.taken = [], 0
        return event


class Follower:
    """The tasks one consumer follows, and their changes (and chunks), in the order they came.

    A websocket follows many tasks with one follower; `follow()` one task. Updates come from
    the process's pub/sub listener into one inbox; only reading a stored state (on following,
    and after the listener reconnects) uses the thread pool. A snapshot equal to the last one
    given for its task is not given again; after a task's final state it is no longer followed.

    Chunks, where followed, come in order from the offset asked for, each once: those stored
    before the follower began (and any it missed, the listener having reconnected) are read
    from the task's stream, a page at a time, and a published batch that overlaps them is
    given from where they end. A task's final snapshot comes after its last chunk.

    A follower made `batched` gives chunks as they came, a published batch (or a page read
    from the stream) at a time (`StreamedBatch`): its message is made once for every socket.
    """

    def __init__(self, batched: bool = False) -> None:
        self.batched = batched
        self.listener: ResultListener = current_app.extensions[listener.EXTENSION]
        self.inbox = Inbox(current_app.config["WS_QUEUE_SIZE"])
        self.followed: dict[str, Followed] = {}
        self.debug = current_app.debug
        self.metrics = metrics.current()
        self.reader = task_reader()
        # A key-value backend's (Redis's), whose `decode` the stubs leave out of `Backend`.
        self.backend: Any = current_celery().backend
        #: Events made and not yet given (a batch of chunks gives many).
        self.ready = Ready()
        #: Tasks whose stored chunks are still being read, a page at a time, in order.
        self.behind: dict[str, None] = {}

    async def follow(self, task_id: object, chunks_from: int | None = None) -> str:
        """Follow a published task from now on (and its chunks from offset `chunks_from`,
        unless None); its id in the usual form.

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
            self.followed[normal] = Followed(name, next_offset=chunks_from)
            if chunks_from is not None:
                self.inbox.wants_chunks = True
            await self.listener.subscribe(normal, self.inbox)
            self.inbox.deliver(Update(normal))
        return normal

    def write_with(self, write: Callable[[str], bool]) -> None:
        """Have each state published for a followed task, and each batch of its chunks (taking
        chunks in batches), go to `write` at once, as its message, from the listener, where it
        is the next to give and the follower waits with nothing before it; `write` says
        whether it took the message (if not, it is given the usual way). A final state taken
        comes out as `Written`, for what follows it.

        For a socket: its server writes the message's frame, made once for every socket,
        without waking the socket's handler (`_web.frames`).
        """
        self.inbox.express = partial(self._express, write)

    def _express(self, write: Callable[[str], bool], update: Update | Chunks) -> bool:
        followed = self.followed.get(update.task_id)
        if followed is None or not followed.read or self.ready or update.task_id in self.behind:
            return False
        if isinstance(update, Chunks):
            if not self.batched or followed.next_offset != update.offset:
                return False
            if not write(update.message()):
                return False
            followed.next_offset = update.offset + update.count()
            return True
        if update.meta is None:
            return False
        changed = published_change(update, followed.name, self.debug)
        if changed.json == followed.last:
            return True  # nothing new, as `_take_update` finds it
        if not write(changed.json):
            return False
        followed.last = changed.json
        if self.metrics is not None:
            self.metrics.observe_delivery(update.meta)
        if changed.state in FINAL_STATES:
            self._drop(update.task_id)
            self.inbox.deliver(Written(changed))
        return True

    def unfollow(self, task_id: str) -> None:
        """Stop following a task; `Unfollowed` comes out after everything queued before it."""
        self._drop(task_id)
        self.inbox.deliver(Unfollowed(task_id))

    def joined(self, batch: StreamedBatch, most: int = BATCH_SIZE) -> StreamedBatch:
        """`batch`, with the batches of its task that are ready to follow it (and those that
        wait in the inbox), as one of at most `most` characters (or `batch` alone), without
        waiting.

        A server busy sending one batch to each of many sockets has the next few ready for
        each by the time it comes round again: one message each, rather than one a batch,
        is what lets it catch up (`bench/streams.py`).
        """
        bodies, size = [batch.body], len(batch.body)
        end = batch.offset + batch.count
        while True:
            if not self.ready:
                self._take_waiting_chunks(batch.task_id)
                if not self.ready:
                    break
            following = self.ready.first()
            if (
                not isinstance(following, StreamedBatch)
                or following.task_id != batch.task_id
                or following.offset != end
                or size + 1 + len(following.body) > most
            ):
                break
            self.ready.popleft()
            bodies.append(following.body)
            size += 1 + len(following.body)
            end += following.count
        if len(bodies) == 1:
            return batch
        return StreamedBatch(batch.task_id, batch.offset, end - batch.offset, ",".join(bodies))

    def _take_waiting_chunks(self, task_id: str) -> None:
        """Take the inbox's next update, without waiting, where it is a batch of the task's
        chunks that `next_event` would give next (its stored state read, none missed)."""
        followed = self.followed.get(task_id)
        if followed is None or not followed.read or self.inbox.missed or self.behind:
            return
        update = self.inbox.next_chunks(task_id)
        if update is not None:
            self._take_published(update, followed)

    def ready_chunks(self, limit: int) -> list[StreamedChunk]:
        """Up to `limit` chunks made and not yet given that come next, without waiting: a
        batch published gives many at once."""
        taken: list[StreamedChunk] = []
        while self.ready and len(taken) < limit and isinstance(self.ready.first(), StreamedChunk):
            taken.append(self.ready.popleft())  # type: ignore[arg-type]
        return taken

    def waiting(self) -> int:
        """How many updates wait in the inbox now."""
        return len(self.inbox.updates) + len(self.ready)

    def close(self) -> None:
        """Stop following every task: the consumer is gone, and leaves nothing behind."""
        for task_id in list(self.followed):
            self._drop(task_id)

    async def next_event(self) -> Event:
        """The next change or chunk of a followed task, an unfollowed task's notice, or a
        task's error.

        `FellBehind` if the inbox overflowed.
        """
        while not self.ready:
            if self.inbox.missed:
                missed, self.inbox.missed = self.inbox.missed, None
                self.behind.update(dict.fromkeys(missed & self.followed.keys()))
            if self.behind:
                await self._guarded(next(iter(self.behind)), self._catch_up)
                continue
            update = await self.inbox.get()
            if isinstance(update, Unfollowed | Written):
                return update
            followed = self.followed.get(update.task_id)
            if followed is None:  # unfollowed meanwhile
                continue
            if isinstance(update, Chunks):
                if followed.read:
                    self._take_published(update, followed)
            elif followed.read or update.meta is None:
                await self._guarded(update.task_id, partial(self._take_update, update, followed))
        return self.ready.popleft()

    async def _guarded(self, task_id: str, taking: Callable[[str], Awaitable[None]]) -> None:
        """Take an update of a task; a task that cannot be served is dropped, with its error."""
        try:
            await taking(task_id)
        except APIError as error:
            self._drop(task_id)
            self.ready.append(TaskError(task_id, error))
        except Exception:
            logger.exception("could not serve the state of task %s", task_id)
            self._drop(task_id)
            failed = APIError(500, "internal_error", "The server failed to read this task.")
            self.ready.append(TaskError(task_id, failed))

    async def _take_update(self, update: Update, followed: Followed, task_id: str) -> None:
        """A state published, or the stored one to read (with the chunks stored since)."""
        chunks: Sequence[StreamedChunk | StreamedBatch] = []
        if update.meta is None:
            found = await self.reader.read(task_id, stored=True, chunks_from=followed.next_offset)
            followed.read = True
            meta = decoded(self.backend, found.stored)
            if found.chunks is not None:
                chunks = self._take_stored(task_id, followed, found.chunks)
            if self.followed.get(task_id) is not followed:
                return  # unfollowed while it was read
            snapshot = snapshot_from_meta(task_id, followed.name, meta, self.debug)
            changed = Changed(snapshot, snapshot.model_dump_json())
        else:
            changed = published_change(update, followed.name, self.debug)
        if changed.json == followed.last:
            self.ready.extend(chunks)
            return  # nothing new
        followed.last = changed.json
        if update.meta is not None and self.metrics is not None:
            self.metrics.observe_delivery(update.meta)  # pushed, as it is handed on
        if changed.state not in FINAL_STATES:
            self.ready.append(changed)
            self.ready.extend(chunks)
            return
        self.ready.extend(chunks)
        if task_id in self.behind:
            followed.held = changed  # after the chunks still to be read
        else:
            self._give_final(task_id, changed)

    async def _catch_up(self, task_id: str) -> None:
        """Read the next page of a task's stored chunks; after the last, its final snapshot,
        if it was held for them."""
        followed = self.followed.get(task_id)
        if followed is None or followed.next_offset is None:
            self.behind.pop(task_id, None)
            return
        found = await self.reader.read(task_id, chunks_from=followed.next_offset)
        if self.followed.get(task_id) is not followed:
            return
        self.ready.extend(
            self._take_stored(task_id, followed, found.chunks or StoredPage([], more=False))
        )
        if task_id not in self.behind and followed.held is not None:
            self._give_final(task_id, followed.held)

    def _take_stored(
        self, task_id: str, followed: Followed, stored: StoredPage
    ) -> Sequence[StreamedChunk | StreamedBatch]:
        """Chunks read from the stream, from the next one due; the task is behind (its next
        page is read) while a page comes back full."""
        assert followed.next_offset is not None
        start = followed.next_offset
        if stored.more:
            self.behind[task_id] = None
        else:
            self.behind.pop(task_id, None)
        fresh = [chunk for chunk in stored.chunks if chunk.offset >= start]
        if not fresh:
            return []
        if fresh[0].offset != start:
            # The stream lacks the next chunk due (Redis lost it): never a gap unseen.
            logger.error("task %s: its chunks from %d on are not stored", task_id, start)
            raise APIError(
                500,
                "chunks_missing",
                f"Chunks {start} to {fresh[0].offset - 1} of this task are not stored: "
                "the stream cannot go on without a gap.",
            )
        followed.next_offset = fresh[-1].offset + 1
        if self.batched:
            return stored_batches(task_id, fresh)
        return [StreamedChunk(task_id, chunk.offset, chunk.json.decode()) for chunk in fresh]

    def _take_published(self, update: Chunks, followed: Followed) -> None:
        """A batch published: the chunks of it not given yet. One that begins past the next
        chunk due (some were missed) has them read from the stream instead."""
        start = followed.next_offset
        if start is None or update.task_id in self.behind:
            return
        if update.offset > start:
            self.behind[update.task_id] = None
            return
        given = start - update.offset  # of the batch, already
        count = update.count() - given
        if count <= 0:
            return
        followed.next_offset = start + count
        if self.batched:
            if not given:  # one text for every follower
                batch = StreamedBatch(update.task_id, start, count, update.body(), update.message())
            else:
                batch = StreamedBatch(update.task_id, start, count, ",".join(update.each()[given:]))
            self.ready.append(batch)
            return
        self.ready.extend(
            StreamedChunk(update.task_id, start + index, chunk)
            for index, chunk in enumerate(update.each()[given:])
        )

    def _give_final(self, task_id: str, changed: Changed) -> None:
        self.ready.append(changed)
        self._drop(task_id)

    def _drop(self, task_id: str) -> None:
        """Forget a task, and stop hearing of it."""
        self.followed.pop(task_id, None)
        self.behind.pop(task_id, None)
        self.listener.unsubscribe(task_id, self.inbox)


def published_change(update: Update, name: str, debug: bool) -> Changed:
    """The snapshot of a task that a published update makes, with its JSON: made by the first
    of the task's followers, reused by the others (a snapshot is frozen). Made by each, it was
    a seventh of what a server spends sending a state to 100 sockets of one task
    (`bench/followers.py`)."""
    made = update.made
    if made is None or made[0] != name or made[1] != debug:
        assert update.meta is not None
        snapshot = snapshot_from_meta(update.task_id, name, update.meta, debug)
        made = update.made = (name, debug, Changed(snapshot, snapshot.model_dump_json()))
    changed: Changed = made[2]
    return changed


def stored_batches(task_id: str, chunks: list[StoredChunk]) -> list[StreamedBatch]:
    """Chunks read from a task's stream as batches of `BATCH_SIZE` characters at most (or one
    chunk): a page holds many of the worker's batches."""
    batches: list[StreamedBatch] = []
    texts: list[str] = []
    size = 0
    for chunk in chunks:
        text = chunk.json.decode()
        if texts and size + 1 + len(text) > BATCH_SIZE:
            first = chunk.offset - len(texts)
            batches.append(StreamedBatch(task_id, first, len(texts), ",".join(texts)))
            texts, size = [], 0
        texts.append(text)
        size += 1 + len(text)
    if texts:
        first = chunks[-1].offset + 1 - len(texts)
        batches.append(StreamedBatch(task_id, first, len(texts), ",".join(texts)))
    return batches


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

"""Streaming a task's output: `send_chunk`, and the thread that writes the chunks to Redis.

A task's body calls `send_chunk(value)` (sync or `async def` alike), or, as an async generator,
yields its chunks. Sending does not wait for Redis: the chunk is encoded (so it is kept as it was
sent) and queued, and one writer thread per worker process writes what has queued in one
script call (`_broker.chunks.APPEND_CHUNKS`): while one batch is written, the next gathers. A
task's chunks are written in the order they were sent, and before anything the task stores
after them: `update_state` from a streaming task is queued behind its chunks, and the body's
end waits for the last of them, so its final state comes after its last chunk.

On the async pool a state a coroutine stores is made on the pool's tracer thread, in order
with its result (`asyncio_pool.on_tracer_thread`); a stream opened there first waits for that
thread to have made the states stored before it, so no chunk overtakes them. A task the pool
ends from outside (its hard time limit, `revoke(terminate=True)`) has its stream abandoned
first: nothing it queued lands after the end the worker stores.

Written by hand: no library batches writes from many threads and coroutines into one ordered
Redis stream per task; Celery's own `update_state` waits for each write.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from redis.exceptions import RedisError

from quart_celery._broker.chunks import APPEND_CHUNKS, append_chunks, run_key, stream_key
from quart_celery._worker import asyncio_pool
from quart_celery.errors import ChunksNotWritten, TooManyChunks

logger = logging.getLogger(__name__)

DEFAULT_MAX_CHUNKS = 100_000
#: The largest chunk (as JSON) a task may send: each is published to every follower whole.
MAX_CHUNK_BYTES = 1024 * 1024
#: Chunks written in one script call at most, and their bytes (a longer call blocks Redis, and
#: one published message is read whole by every server's listener); a larger chunk goes alone.
BATCH, BATCH_BYTES = 1000, 256 * 1024
#: Seconds a task's end waits for its chunks while none is written (Redis down) before it
#: fails; a long stream being written takes as long as it takes.
WRITE_TIMEOUT = 10.0
#: Seconds the writer waits before it tries a failed write again, at first and at most.
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 1.0
#: Seconds a stream opened on the async pool's loop waits for the tracer thread, at most, and
#: each time the writer looks (between them, it writes other tasks' chunks).
TRACER_TIMEOUT, TRACER_LOOK = 5.0, 0.002

_current: contextvars.ContextVar[StreamSlot | None] = contextvars.ContextVar(
    "quart_celery_stream", default=None
)
_opening = threading.Lock()


def send_chunk(chunk: Any) -> None:
    """Stream `chunk` (any JSON value) to the clients following the running task.

    Call it from a task's body, sync or `async def` (or a task or thread the body started).
    It does not wait for Redis: chunks are written in batches, in the order sent, and all of
    them before the task's final state. `TooManyChunks` past `STREAM_MAX_CHUNKS`; `TypeError`
    if `chunk` is not JSON, `ValueError` if it is larger than 1 MiB as JSON. Called as a plain
    function (not by a worker), it does nothing.
    """
    slot = _current.get()
    if slot is None:
        raise RuntimeError("send_chunk() is called from a task's body, as a worker runs it")
    if slot.task_id is None:
        return
    encoded = orjson.dumps(chunk)
    if len(encoded) > MAX_CHUNK_BYTES:
        raise ValueError(
            f"a chunk of {len(encoded)} bytes as JSON is larger than {MAX_CHUNK_BYTES} "
            "(1 MiB), the most one chunk may be: send it in pieces"
        )
    stream = slot.stream or slot.open()
    if stream is not None:
        stream.send(encoded)


@dataclass(slots=True)
class StreamSlot:
    """Where the chunks of one run of a task's body go; its stream is opened by its first."""

    #: None: the body is called directly, not run by a worker, or has ended: its chunks go
    #: nowhere.
    task_id: str | None
    backend: Any
    limit: int = DEFAULT_MAX_CHUNKS
    stream: TaskStream | None = None

    def open(self) -> TaskStream | None:
        """The run's stream, opened now unless another thread just did (None: the run has
        ended meanwhile)."""
        with _opening:
            if self.stream is not None or self.task_id is None:
                return self.stream
            stream = TaskStream(self.task_id, self.backend, self.limit, ChunkWriter.running())
            if asyncio_pool.current_job_on_loop() is not None:
                tracer_done = threading.Event()
                if asyncio_pool.on_tracer_thread(tracer_done.set):
                    stream.after(tracer_done)
            self.stream = stream
            return stream

    def finish(self, ended_well: bool) -> None:
        """The body has ended: wait for its chunks to be written; `ChunksNotWritten` if they
        could not be (where the body itself ended well: else its own error stands). Chunks
        sent after this (by a helper the body left running) go nowhere.

        A wait cut short (a soft time limit) leaves the stream in place, for the wait of the
        body's failure: a task's final state never overtakes its chunks."""
        stream = self.stream
        failure = None if stream is None else stream.wait_written()
        self._close(failure, ended_well)

    async def finish_on_loop(self, ended_well: bool) -> None:
        """`finish`, awaited on an event loop."""
        stream = self.stream
        failure = None if stream is None else await stream.wait_written_on_loop()
        self._close(failure, ended_well)

    def abandon(self) -> None:
        """The task was ended from outside (a hard time limit, terminated): drop what its
        stream still has queued, chunks and states, and whatever it sends from now on."""
        with _opening:
            stream, self.stream, self.task_id = self.stream, None, None
        if stream is not None:
            stream.abandon()

    def _close(self, failure: ChunksNotWritten | None, ended_well: bool) -> None:
        stream, self.stream, self.task_id = self.stream, None, None
        if stream is None:
            return
        if failure is None:
            stream.forget_run()
            return
        logger.error("task %s ended with chunks not written: %s", stream.task_id, failure)
        if ended_well:
            raise failure


def current_stream() -> TaskStream | None:
    """The stream of the task body running here, if it has sent a chunk."""
    slot = _current.get()
    return None if slot is None else slot.stream


def enter(slot: StreamSlot, context: contextvars.Context) -> None:
    """Send the chunks of the body that runs in `context` to `slot`."""
    context.run(_current.set, slot)


def drain_generator(produced: Iterator[Any]) -> None:
    """Stream what a generator task yields."""
    for chunk in produced:
        send_chunk(chunk)


async def drain_async_generator(produced: AsyncIterator[Any]) -> None:
    """Stream what an async generator task yields."""
    async for chunk in produced:
        send_chunk(chunk)


@dataclass(slots=True)
class _Gate:
    """Where a stream's writing waits for another thread (the tracer's) to have done its part,
    for `TRACER_TIMEOUT` seconds at most."""

    opened: threading.Event
    deadline: float = field(default_factory=lambda: time.monotonic() + TRACER_TIMEOUT)


class TaskStream:
    """The chunks of one run of a task, and the states it stores after them, waiting to be
    written in order by the process's writer."""

    def __init__(self, task_id: str, backend: Any, limit: int, writer: ChunkWriter) -> None:
        self.task_id = task_id
        self.limit = limit
        self.writer = writer
        self.client = backend.client
        meta_key = backend.get_key_for_task(task_id)
        stream = stream_key(meta_key)
        self.keys = [stream, meta_key, run_key(stream, uuid.uuid4().hex)]
        self.expires = int(backend.expires or 0)
        self.script = self.client.register_script(APPEND_CHUNKS)
        self.lock = threading.Lock()
        #: Chunks (encoded), calls (states stored) and gates, in the order they were made.
        self.items: deque[bytes | Callable[[], object] | _Gate] = deque()
        self.sent = 0
        #: The batches of this run written so far, and their chunks (the run's count of chunks
        #: sent before the next batch's first: `append_chunks` skips those written already).
        self.batches = 0
        self.written = 0
        #: Whether the writer has the stream in hand: it is written until its items run out.
        self.busy = False
        #: When the writer last got something of it done (waits give up without progress).
        self.progressed = time.monotonic()
        self.idle = threading.Condition(self.lock)
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        #: Why the last write failed, while it is being tried again.
        self.failure: Exception | None = None
        #: Given up: what is still queued is dropped, and what is sent from now on.
        self.abandoned = False
        #: Why no more of its chunks can be written (Redis lost its stream, the writer failed).
        self.lost: ChunksNotWritten | None = None

    def send(self, chunk: bytes) -> None:
        with self.lock:
            if self.lost is not None:
                raise self.lost
            if self.sent >= self.limit:
                raise TooManyChunks(
                    f"task {self.task_id} sent more than {self.limit} chunks "
                    "(STREAM_MAX_CHUNKS); the rest were refused"
                )
            self.sent += 1
            self._queue(chunk)

    def then(self, call: Callable[[], object]) -> None:
        """Make `call` (storing a state) once the chunks sent so far are written."""
        with self.lock:
            self._queue(call)

    def after(self, opened: threading.Event) -> None:
        """Write what comes next once `opened` is set (or `TRACER_TIMEOUT` has passed)."""
        with self.lock:
            self._queue(_Gate(opened))

    def _queue(self, item: bytes | Callable[[], object] | _Gate) -> None:
        if self.abandoned:
            return
        self.items.append(item)
        if not self.busy:
            self.busy = True
            self.progressed = time.monotonic()
            self.writer.hand(self)

    def wait(self) -> None:
        """Wait until everything queued is written, or nothing is for `WRITE_TIMEOUT` s."""
        with self.lock:
            while self.busy:
                left = self.progressed + WRITE_TIMEOUT - time.monotonic()
                if left <= 0:
                    return
                self.idle.wait(left)

    def wait_written(self) -> ChunksNotWritten | None:
        """Wait until everything queued is written; why it could not be, if it could not."""
        self.wait()
        return self._check()

    async def wait_written_on_loop(self) -> ChunksNotWritten | None:
        """`wait_written`, awaited on an event loop."""
        loop = asyncio.get_running_loop()
        while True:
            with self.lock:
                left = self.progressed + WRITE_TIMEOUT - time.monotonic()
                if not self.busy or left <= 0:
                    break
                waiting = loop.create_future()
                self.waiters.append((loop, waiting))
            try:
                async with asyncio.timeout(left):
                    await asyncio.shield(waiting)
            except TimeoutError:
                pass  # progress since? then it waits on
        return self._check()

    def _check(self) -> ChunksNotWritten | None:
        with self.lock:
            if self.lost is not None or not self.busy or self.abandoned:
                return self.lost
            self.abandoned = True
            failure = self.failure
        return ChunksNotWritten(
            f"the chunks of task {self.task_id} could not be written: none was for "
            f"{WRITE_TIMEOUT:g} s ({failure or 'Redis did not answer'})"
        )

    def abandon(self) -> None:
        with self.lock:
            self.abandoned = True
            self.items.clear()

    def forget_run(self) -> None:
        """Delete the run's record once its last batch is written (it has ended)."""
        with self.lock:
            if self.written == 0 or self.abandoned:
                return
        self.then(partial(self.client.delete, self.keys[2]))

    def write_some(self) -> bool:
        """Write the next batch of chunks, or make the next call; whether any is left.

        In the writer's thread. A write that fails is kept, to be tried again.
        """
        with self.lock:
            if self.abandoned:
                self.items.clear()
            if not self.items:
                self._become_idle()
                return False
            head = self.items[0]
            batch: list[bytes] = []
            if isinstance(head, bytes):
                size = 0
                while self.items and len(batch) < BATCH:
                    chunk = self.items[0]
                    if not isinstance(chunk, bytes) or (batch and size + len(chunk) > BATCH_BYTES):
                        break
                    batch.append(chunk)
                    size += len(chunk)
                    self.items.popleft()
            elif not isinstance(head, _Gate):
                self.items.popleft()
        if isinstance(head, _Gate):
            if head.opened.wait(TRACER_LOOK) or time.monotonic() >= head.deadline:
                with self.lock:
                    if self.items and self.items[0] is head:
                        self.items.popleft()
            return True  # not yet: the other streams take their turn meanwhile
        if not batch:
            try:
                head()  # type: ignore[operator]
            except Exception:
                logger.exception("a state of task %s could not be stored", self.task_id)
            self.progressed = time.monotonic()
            return True
        try:
            written = append_chunks(
                self.script, self.keys, self.expires, self.written, self.task_id, batch
            )
        except (RedisError, OSError) as error:
            with self.lock:
                self.items.extendleft(reversed(batch))
                self.failure = error
            raise
        with self.lock:
            self.progressed = time.monotonic()
            if written < 0:
                self.lost = ChunksNotWritten(
                    f"the stream of task {self.task_id} lost chunks already written (Redis "
                    "lost them); no more can be streamed"
                )
                self.abandoned = True
                return True
            self.batches += 1
            self.written += len(batch)
            self.failure = None
        return True

    def _become_idle(self) -> None:
        self.busy = False
        self.idle.notify_all()
        waiters, self.waiters = self.waiters, []
        for loop, waiting in waiters:
            # A loop that has closed raises: no one waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, waiting)


def _settle(waiting: asyncio.Future[None]) -> None:
    if not waiting.done():
        waiting.set_result(None)


class ChunkWriter:
    """The thread of one worker process that writes its tasks' chunks, a batch at a time,
    taking turns between the tasks that stream."""

    _running: ChunkWriter | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.streams: queue.SimpleQueue[TaskStream] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="chunk-writer", daemon=True)
        self.thread.start()

    @classmethod
    def running(cls) -> ChunkWriter:
        """The process's writer, started by the first stream (also in a forked child)."""
        with cls._lock:
            writer = cls._running
            if writer is None or not writer.thread.is_alive():
                writer = cls._running = cls()
            return writer

    def hand(self, stream: TaskStream) -> None:
        self.streams.put(stream)

    def _run(self) -> None:
        backoff = FIRST_BACKOFF
        while True:
            stream = self.streams.get()
            try:
                more = stream.write_some()
            except (RedisError, OSError) as error:
                logger.warning("could not write chunks of task %s: %s", stream.task_id, error)
                time.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
                more = True
            except Exception as error:
                logger.exception("the chunk writer failed on task %s", stream.task_id)
                with stream.lock:  # the task fails for it, rather than end with a gap unseen
                    stream.lost = ChunksNotWritten(
                        f"the chunks of task {stream.task_id} could not be written: {error!r}"
                    )
                    stream.abandoned = True
                more = True
            else:
                backoff = FIRST_BACKOFF
            if more:
                self.streams.put(stream)  # behind the other streams: each takes its turn

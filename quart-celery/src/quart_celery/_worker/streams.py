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
thread to have made the states stored before it, so no chunk overtakes them.

Written by hand: no library batches writes from many threads and coroutines into one ordered
Redis stream per task; Celery's own `update_state` waits for each write.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from quart_celery._broker.chunks import APPEND_CHUNKS, stream_key
from quart_celery._worker import asyncio_pool
from quart_celery.errors import ChunksNotWritten, TooManyChunks

logger = logging.getLogger(__name__)

DEFAULT_MAX_CHUNKS = 100_000
#: Chunks written in one script call at most.
BATCH = 1000
#: Seconds a task's end waits for its chunks to be written (Redis down) before it fails.
WRITE_TIMEOUT = 10.0
#: Seconds the writer waits before it tries a failed write again, at first and at most.
FIRST_BACKOFF, MAX_BACKOFF = 0.05, 1.0
#: Seconds a stream opened on the async pool's loop waits for the tracer thread.
TRACER_TIMEOUT = 5.0

_current: contextvars.ContextVar[StreamSlot | None] = contextvars.ContextVar(
    "quart_celery_stream", default=None
)


def send_chunk(chunk: Any) -> None:
    """Stream `chunk` (any JSON value) to the clients following the running task.

    Call it from a task's body, sync or `async def` (or a task the body's coroutine started).
    It does not wait for Redis: chunks are written in batches, in the order sent, and all of
    them before the task's final state. `TooManyChunks` past `STREAM_MAX_CHUNKS`; `TypeError`
    if `chunk` is not JSON. Called as a plain function (not by a worker), it does nothing.
    """
    slot = _current.get()
    if slot is None:
        raise RuntimeError("send_chunk() is called from a task's body, as a worker runs it")
    if slot.task_id is None:
        return
    encoded = orjson.dumps(chunk)
    stream = slot.stream
    if stream is None:
        stream = slot.open()
    stream.send(encoded)


@dataclass(slots=True)
class StreamSlot:
    """Where the chunks of one run of a task's body go; its stream is opened by its first."""

    #: None: the body is called directly, not run by a worker: its chunks go nowhere.
    task_id: str | None
    backend: Any
    limit: int = DEFAULT_MAX_CHUNKS
    stream: TaskStream | None = None

    def open(self) -> TaskStream:
        assert self.task_id is not None
        self.stream = TaskStream(self.task_id, self.backend, self.limit, ChunkWriter.running())
        if asyncio_pool.current_job_on_loop() is not None:
            tracer_done = threading.Event()
            if asyncio_pool.on_tracer_thread(tracer_done.set):
                self.stream.then(lambda: tracer_done.wait(TRACER_TIMEOUT))
        return self.stream

    def finish(self, ended_well: bool) -> None:
        """The body has ended: wait for its chunks to be written; `ChunksNotWritten` if they
        could not be (where the body itself ended well: else its own error stands). Chunks
        sent after this (by a helper the body left running) go nowhere."""
        stream, self.stream, self.task_id = self.stream, None, None
        if stream is not None:
            stream.finish(ended_well)

    async def finish_on_loop(self, ended_well: bool) -> None:
        """`finish`, awaited on an event loop."""
        stream, self.stream, self.task_id = self.stream, None, None
        if stream is not None:
            await stream.finish_on_loop(ended_well)


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


class TaskStream:
    """The chunks of one run of a task, and the states it stores after them, waiting to be
    written in order by the process's writer."""

    def __init__(self, task_id: str, backend: Any, limit: int, writer: ChunkWriter) -> None:
        self.task_id = task_id
        self.limit = limit
        self.writer = writer
        meta_key = backend.get_key_for_task(task_id)
        self.keys = [stream_key(meta_key), meta_key]
        self.expires = int(backend.expires or 0)
        self.script = backend.client.register_script(APPEND_CHUNKS)
        self.lock = threading.Lock()
        #: Chunks (encoded) and calls (states stored), in the order they were made.
        self.items: deque[bytes | Callable[[], object]] = deque()
        self.sent = 0
        #: This run's chunks written so far, and the offset of its first (-1: none yet).
        self.written = 0
        self.first = -1
        #: Whether the writer has the stream in hand: it is written until its items run out.
        self.busy = False
        self.idle = threading.Condition(self.lock)
        self.waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        #: Why the last write failed, while it is being tried again.
        self.failure: Exception | None = None
        #: Given up at the body's end: what is still queued is dropped.
        self.abandoned = False
        #: Why no more of its chunks can be written (Redis lost its stream), if none can.
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

    def _queue(self, item: bytes | Callable[[], object]) -> None:
        self.items.append(item)
        if not self.busy:
            self.busy = True
            self.writer.hand(self)

    def wait(self) -> None:
        """Wait until everything queued is written (at most `WRITE_TIMEOUT` seconds)."""
        with self.lock:
            self.idle.wait_for(lambda: not self.busy, WRITE_TIMEOUT)

    def finish(self, ended_well: bool) -> None:
        """Wait until everything queued is written; see `StreamSlot.finish`."""
        self.wait()
        self._check(ended_well)

    async def finish_on_loop(self, ended_well: bool) -> None:
        with self.lock:
            waiting: asyncio.Future[None] | None = None
            if self.busy:
                loop = asyncio.get_running_loop()
                waiting = loop.create_future()
                self.waiters.append((loop, waiting))
        if waiting is not None:
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await asyncio.shield(waiting)
            except TimeoutError:
                pass
        self._check(ended_well)

    def _check(self, ended_well: bool) -> None:
        with self.lock:
            lost = self.lost
            if lost is None and not self.busy:
                return
            self.abandoned = True
            failure = self.failure
        if lost is None:
            lost = ChunksNotWritten(
                f"the chunks of task {self.task_id} could not be written within "
                f"{WRITE_TIMEOUT:g} s: {failure or 'Redis did not answer'}"
            )
        logger.error("task %s ended with chunks not written: %s", self.task_id, lost)
        if ended_well:
            raise lost

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
            if callable(head):
                self.items.popleft()
                batch: list[bytes] = []
            else:
                batch = []
                while self.items and len(batch) < BATCH and not callable(self.items[0]):
                    batch.append(self.items.popleft())  # type: ignore[arg-type]
            expected = self.first + self.written if self.first >= 0 else -1
        if not batch:
            try:
                head()  # type: ignore[operator]
            except Exception:
                logger.exception("a state of task %s could not be stored", self.task_id)
            return True
        args: list[Any] = [self.expires, expected, self.task_id, *batch]
        try:
            length = int(self.script(keys=self.keys, args=args))
        except (RedisError, OSError) as error:
            with self.lock:
                self.items.extendleft(reversed(batch))
                self.failure = error
            raise
        with self.lock:
            if length < 0:
                self.lost = ChunksNotWritten(
                    f"the stream of task {self.task_id} lost the chunks before offset "
                    f"{expected} (Redis lost them); no more can be streamed"
                )
                self.abandoned = True
                return True
            if self.first < 0:
                self.first = length - len(batch)
            self.written += len(batch)
            self.failure = None
        return True

    def _become_idle(self) -> None:
        self.busy = False
        self.idle.notify_all()
        for loop, waiting in self.waiters:
            loop.call_soon_threadsafe(_settle, waiting)
        self.waiters.clear()


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
            except Exception:
                logger.exception("the chunk writer failed on task %s", stream.task_id)
                with stream.lock:
                    stream.abandoned = True
                more = True
            else:
                backoff = FIRST_BACKOFF
            if more:
                self.streams.put(stream)  # behind the other streams: each takes its turn

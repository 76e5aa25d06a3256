"""A task's chunks in Redis, as the worker writes them: a real Redis and a real worker."""

from __future__ import annotations

import contextvars
import threading
import uuid
from functools import partial
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from celery.exceptions import TimeLimitExceeded
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery import ChunksNotWritten, send_chunk
from quart_celery._broker.chunks import append_chunks, read_chunks, stream_key
from quart_celery._worker.streams import (
    BATCH_BYTES,
    MAX_CHUNK_BYTES,
    ChunkWriter,
    StreamSlot,
    TaskStream,
    enter,
)
from quart_celery.testing import ThreadWorker, finished, submit, wait_for
from tests.worker_tasks import stream_words, streams_past_its_time_limit


def stored(celery: Celery, task_id: str) -> list[tuple[int, Any]]:
    """The chunks in the task's stream, as (offset, JSON)."""
    backend: Any = celery.backend  # Redis's, whose methods the stubs leave out
    key = stream_key(backend.get_key_for_task(task_id))
    return [(chunk.offset, chunk.json.decode()) for chunk in read_chunks(backend.client, key, 0)]


async def test_chunks_are_kept_in_order_as_long_as_the_result(
    client: Client, celery: Celery, thread_worker: ThreadWorker, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.stream_words", text="a b c"))["id"]
    with thread_worker(celery):
        await finished(client, task_id)
    assert stored(celery, task_id) == [(0, '"a"'), (1, '"b"'), (2, '"c"')]
    backend: Any = celery.backend
    meta_key = backend.get_key_for_task(task_id)
    stream_ttl, result_ttl = redis_client.ttl(stream_key(meta_key)), redis_client.ttl(meta_key)
    assert 0 < result_ttl - 1 <= stream_ttl <= result_ttl


async def test_what_is_not_json_is_refused_where_it_is_sent(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    result = celery.signature("tests.stream_not_json").apply_async()
    with thread_worker(celery):
        assert (await finished(client, result.id))["result"] == "TypeError"
    assert stored(celery, result.id) == []


async def test_a_retry_streams_on_after_the_first_run(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    result = celery.signature("tests.stream_and_retry").apply_async()
    with thread_worker(celery):
        assert (await finished(client, result.id))["result"] == 1
    assert [chunk for _, chunk in stored(celery, result.id)] == [
        '"run 0 a"',
        '"run 0 b"',
        '"run 1 a"',
        '"run 1 b"',
    ]


def test_called_as_a_function_a_task_streams_nowhere(app: Quart, celery: Celery) -> None:
    assert stream_words("not streamed") == "not streamed"
    applied = stream_words.apply(kwargs={"text": "eager words"})
    assert applied.get() == "eager words"
    assert [chunk for _, chunk in stored(celery, applied.id)] == ['"eager"', '"words"']


def test_send_chunk_outside_a_task_says_so() -> None:
    with pytest.raises(RuntimeError, match="task's body"):
        send_chunk("nowhere")


def test_a_stream_that_redis_lost_fails_the_task_not_silently(
    celery: Celery, redis_client: redis.Redis
) -> None:
    task_id = str(uuid.uuid4())
    stream = TaskStream(task_id, celery.backend, 100, ChunkWriter.running())
    stream.send(b'"first"')
    stream.wait()
    backend: Any = celery.backend
    redis_client.delete(stream_key(backend.get_key_for_task(task_id)))
    stream.send(b'"second"')
    stream.wait()
    with pytest.raises(ChunksNotWritten, match="lost"):
        stream.send(b'"third"')
    assert isinstance(stream.wait_written(), ChunksNotWritten)
    assert stored(celery, task_id) == []  # nothing written at offsets another chunk had


def test_a_batch_written_twice_its_reply_lost_is_kept_once(celery: Celery) -> None:
    task_id = str(uuid.uuid4())
    stream = TaskStream(task_id, celery.backend, 100, ChunkWriter.running())
    assert append_chunks(stream.script, stream.keys, 0, 0, task_id, [b'"once"']) == 1
    # Sent again: already there.
    assert append_chunks(stream.script, stream.keys, 0, 0, task_id, [b'"once"']) == 0
    assert stored(celery, task_id) == [(0, '"once"')]


def test_a_batch_sent_again_grown_meanwhile_keeps_each_chunk_once(celery: Celery) -> None:
    # Its first try was written as Redis stopped, the reply lost; the chunks sent during the
    # outage joined it for the next try (its first chunk is skipped, as written).
    task_id = str(uuid.uuid4())
    stream = TaskStream(task_id, celery.backend, 100, ChunkWriter.running())
    append = partial(append_chunks, stream.script, stream.keys, 0)
    assert append(0, task_id, [b'"a"']) == 1
    # The script alone says how many of the run's chunks are written already.
    grown = [0, 0, task_id, 3, b'"a","b","c"']
    assert stream.script(keys=stream.keys, args=grown) == [1]
    assert append(0, task_id, [b'"a"', b'"b"', b'"c"']) == 1
    assert stored(celery, task_id) == [(0, '"a"'), (1, '"b"'), (2, '"c"')]
    # A batch past chunks the run never wrote is refused: a gap would pass unseen.
    assert append(4, task_id, [b'"e"']) == -1


def test_a_writer_that_fails_fails_the_task_rather_than_leave_a_gap(
    celery: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = TaskStream(str(uuid.uuid4()), celery.backend, 100, ChunkWriter.running())

    def broken(**_: Any) -> int:
        raise KeyError("a bug in the writer")

    monkeypatch.setattr(stream, "script", broken)
    stream.send(b'"dropped"')
    assert isinstance(stream.wait_written(), ChunksNotWritten)
    with pytest.raises(ChunksNotWritten, match="a bug in the writer"):
        stream.send(b'"refused"')


def test_two_runs_of_one_task_at_once_each_keep_every_chunk(celery: Celery) -> None:
    task_id = str(uuid.uuid4())
    first, second = (TaskStream(task_id, celery.backend, 100, ChunkWriter.running()) for _ in "12")
    for stream, chunk in [(first, b'"1a"'), (second, b'"2a"'), (first, b'"1b"')]:
        stream.send(chunk)
        stream.wait()
    assert stored(celery, task_id) == [(0, '"1a"'), (1, '"2a"'), (2, '"1b"')]


def test_a_chunk_over_a_mebibyte_is_refused_where_it_is_sent(celery: Celery) -> None:
    task_id = str(uuid.uuid4())
    slot, context = StreamSlot(task_id, celery.backend), contextvars.copy_context()
    enter(slot, context)
    with pytest.raises(ValueError, match="1 MiB"):
        context.run(send_chunk, "x" * MAX_CHUNK_BYTES)
    context.run(send_chunk, "fits")
    slot.finish(ended_well=True)
    assert stored(celery, task_id) == [(0, '"fits"')]


def test_large_chunks_are_written_in_batches_of_a_bounded_size(celery: Celery) -> None:
    task_id = str(uuid.uuid4())
    stream = TaskStream(task_id, celery.backend, 100, ChunkWriter.running())
    chunk = orjson.dumps("x" * 64 * 1024)
    for _ in range(40):
        stream.send(chunk)
    assert stream.wait_written() is None
    assert len(stored(celery, task_id)) == 40
    assert stream.batches >= 40 * len(chunk) // BATCH_BYTES


def test_a_runs_record_goes_once_it_ends(celery: Celery, redis_client: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    slot, context = StreamSlot(task_id, celery.backend), contextvars.copy_context()
    enter(slot, context)
    context.run(send_chunk, "a")
    assert slot.stream is not None
    record = slot.stream.keys[2]
    slot.finish(ended_well=True)
    wait_for(lambda: not redis_client.exists(record), 10, "the run's record to be deleted")
    assert stored(celery, task_id) == [(0, '"a"')]


def test_a_task_past_its_hard_time_limit_streams_and_stores_nothing_more(
    app: Quart, celery: Celery, thread_worker: ThreadWorker
) -> None:
    torn_down = threading.Event()

    @app.teardown_appcontext
    async def record(error: BaseException | None) -> None:
        torn_down.set()

    run = streams_past_its_time_limit.apply_async(time_limit=1)
    with thread_worker(celery):
        with pytest.raises(TimeLimitExceeded):
            run.get(timeout=20)
        # Torn down once its cancelled body has ended, and its stream with it.
        assert torn_down.wait(20)
    assert stored(celery, run.id) == [(0, '"before its limit"')]
    assert run.state == "FAILURE"

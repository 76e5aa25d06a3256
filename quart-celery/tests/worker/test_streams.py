"""A task's chunks in Redis, as the worker writes them: a real Redis and a real worker."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery import ChunksNotWritten, send_chunk
from quart_celery._broker.chunks import read_chunks, stream_key
from quart_celery._worker.streams import ChunkWriter, TaskStream
from quart_celery.testing import ThreadWorker, finished, submit
from tests.worker_tasks import stream_words


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
    with pytest.raises(ChunksNotWritten):
        stream.finish(ended_well=True)
    assert stored(celery, task_id) == []  # nothing written at offsets another chunk had

"""A task's stream as Redis keeps it: a batch an entry, read from any offset, page after page,
and the streams written a chunk an entry before read the same way."""

from __future__ import annotations

import orjson
import pytest
import redis

from quart_celery._broker.chunks import APPEND_CHUNKS, PAGE, append_chunks, read_chunks

STREAM, META, RUN = b"meta-key.chunks", b"meta-key", b"meta-key.chunks.run.r"


def append(client: redis.Redis, written: int, chunks: list[object]) -> int:
    """Write a batch of the run's chunks, the run having written `written` before it."""
    script = client.register_script(APPEND_CHUNKS)
    encoded = [orjson.dumps(chunk) for chunk in chunks]
    return append_chunks(script, [STREAM, META, RUN], 0, written, "a-task", encoded)


def values(client: redis.Redis, start: int) -> list[tuple[int, object]]:
    return [
        (chunk.offset, orjson.loads(chunk.json)) for chunk in read_chunks(client, STREAM, start)
    ]


@pytest.mark.parametrize("start", [0, 1, 59, 118, 119, 120])
def test_many_batches_read_from_any_offset_page_after_page(
    redis_client: redis.Redis, start: int
) -> None:
    batches = 40  # more than a page of entries
    assert batches > PAGE
    for n in range(batches):
        assert append(redis_client, 3 * n, [3 * n, {"n": 3 * n + 1}, [3 * n + 2]]) == 1
    assert redis_client.xlen(STREAM) == batches  # an entry a batch
    expected = [(n, [n // 3 * 3, {"n": n}, [n]][n % 3]) for n in range(120)]
    assert values(redis_client, start) == expected[start:]


def test_a_stream_written_a_chunk_an_entry_reads_the_same_and_takes_more(
    redis_client: redis.Redis,
) -> None:
    # As the worker wrote them before: entry 0-<N+1> holds chunk N, in the field `c`.
    for offset, chunk in enumerate(["a", "b", "c"]):
        redis_client.xadd(STREAM, {"c": orjson.dumps(chunk)}, id=f"0-{offset + 1}")
    assert append(redis_client, 0, ["d", "e"]) == 1
    assert values(redis_client, 0) == [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]
    assert values(redis_client, 4) == [(4, "e")]

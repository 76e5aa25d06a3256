"""Streamed output through Quart's test client, with a real worker and the real listener: the
websocket's chunks, server-sent events and `queue.stream`."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from typing import Any

import pytest
import redis
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery import TaskFailed, queue
from quart_celery._broker.chunks import stream_key
from quart_celery.testing import (
    TIMEOUT,
    ThreadWorker,
    error_of,
    finished,
    messages_until_closed,
    submit,
    wait_for_async,
)

NEVER_SENT = "3b241101-e2bb-4255-8caf-4136c566a962"


def chunks_of(received: list[dict[str, Any]]) -> list[Any]:
    """The chunks among a socket's messages, checked to come at offsets 0, 1, 2, ... once."""
    chunks = [message for message in received if "offset" in message]
    assert all("state" not in message for message in chunks)
    offsets = [message["offset"] for message in chunks]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets))) if offsets else True
    return [message["chunk"] for message in chunks]


def parse_events(body: str) -> list[dict[str, str]]:
    """Server-sent events, each as its fields."""
    events = []
    for block in body.split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            events.append(fields)
    return events


async def test_the_socket_gives_the_chunks_then_the_final_state(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = (await submit(client, "tests.stream_words", text="one two three", delay=0.02))["id"]
    with thread_worker(celery):
        async with client.websocket(f"/ws/tasks/{task_id}") as socket:
            received, code = await messages_until_closed(socket)
    assert code == 1000
    assert chunks_of(received) == ["one", "two", "three"]
    assert received[-1]["state"] == "SUCCESS"
    assert received[-1]["result"] == "one two three"
    assert all(message["id"] == task_id for message in received)


@pytest.mark.parametrize("pool", ["asyncio", "threads"])
async def test_states_and_chunks_come_in_the_order_they_happened(
    app: Quart, client: Client, celery: Celery, thread_worker: ThreadWorker, pool: str
) -> None:
    name = "tests.stream_with_progress_async" if pool == "asyncio" else "tests.stream_with_progress"
    signature = celery.signature(name, kwargs={"steps": 20})
    async with client.websocket("/ws/tasks") as socket:
        task_id = await _submit_in(app, signature)
        await socket.send(json.dumps({"subscribe": [task_id]}))
        async with asyncio.timeout(TIMEOUT):  # following from before it starts
            assert json.loads(await socket.receive())["state"] == "PENDING"
        with thread_worker(celery, pool=pool):
            received: list[dict[str, Any]] = []
            while not received or received[-1].get("state") != "SUCCESS":
                async with asyncio.timeout(TIMEOUT):
                    received.append(json.loads(await socket.receive()))
    # Each PROGRESS comes after its step's chunk, and before the next step's.
    steps = [
        ("chunk", message["offset"]) if "offset" in message else ("state", message["progress"])
        for message in received
        if "offset" in message or message["state"] == "PROGRESS"
    ]
    expected = []
    for step in range(20):
        expected += [("chunk", step), ("state", {"current": step + 1, "total": 20})]
    assert steps == expected
    assert chunks_of(received) == [f"chunk {step}" for step in range(20)]


async def test_a_late_socket_gets_every_chunk_from_the_start(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = (await submit(client, "tests.stream_count", count=300))["id"]
    with thread_worker(celery):
        await finished(client, task_id)
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 1000
    assert chunks_of(received) == list(range(300))
    # The final state comes once, after the last chunk.
    assert [message.get("state") for message in received if "state" in message] == ["SUCCESS"]
    assert received[-1]["result"] == 300


async def test_a_socket_joining_mid_stream_misses_nothing_and_repeats_nothing(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    # 2,500 chunks: the ones before the socket came are read a page (1,000) at a time.
    task_id = (await submit(client, "tests.stream_count", count=2500, delay=0.001))["id"]
    with thread_worker(celery):
        await wait_for_async(
            lambda: _has_chunks(client, task_id), TIMEOUT, "the task to start streaming"
        )
        async with client.websocket(f"/ws/tasks/{task_id}") as socket:
            received, code = await messages_until_closed(socket)
    assert code == 1000
    assert chunks_of(received) == list(range(2500))
    assert received[-1]["state"] == "SUCCESS"


async def _has_chunks(client: Client, task_id: str) -> bool:
    response = await client.get(f"/api/tasks/{task_id}/stream?from=5")
    # Past `from=5` there is a sixth chunk: a stream well begun (and read here to its end).
    return response.status_code == 200 and "id: 5" in (await response.get_data(as_text=True))


async def test_from_starts_at_an_offset(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = (await submit(client, "tests.stream_count", count=10))["id"]
    with thread_worker(celery):
        await finished(client, task_id)
    async with client.websocket(f"/ws/tasks/{task_id}?from=7") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 1000
    assert [(m["offset"], m["chunk"]) for m in received if "offset" in m] == [
        (7, 7),
        (8, 8),
        (9, 9),
    ]
    async with client.websocket(f"/ws/tasks/{task_id}?from=10") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 1000
    assert [message["state"] for message in received] == ["SUCCESS"]


@pytest.mark.parametrize("start", ["-1", "x", "1.5", "", "9" * 16, "%D9%A1", "1e3"])
async def test_a_bad_from_is_a_clear_error(
    client: Client, celery: Celery, thread_worker: ThreadWorker, start: str
) -> None:
    task_id = (await submit(client, "tests.stream_count", count=1))["id"]
    async with client.websocket(f"/ws/tasks/{task_id}?from={start}") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 4400
    assert received == [
        {"error": {"code": "invalid_offset", "message": received[0]["error"]["message"]}}
    ]
    response = await client.get(f"/api/tasks/{task_id}/stream?from={start}")
    assert response.status_code == 400
    assert (await error_of(response))["code"] == "invalid_offset"
    response = await client.get(
        f"/api/tasks/{task_id}/stream", headers={"Last-Event-ID": start or "x"}
    )
    assert response.status_code == 400
    # Nothing was lost: the task is still there, and runs.
    with thread_worker(celery):
        assert (await finished(client, task_id))["state"] == "SUCCESS"


async def test_many_tasks_on_one_socket_each_from_its_own_offset(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    first, second = await _two_ended_streams(client, celery, thread_worker)
    async with client.websocket("/ws/tasks") as socket:
        received = await _both_from_offset_3_of_the_first(socket, first, second)
        bad_starts: list[Any] = [-1, 1.5, True, None, "x", "-1", " 1", [], {}, 10**20, "9" * 16]
        bad_messages: list[Any] = [
            {"subscribe": [first], "from": {first: start}} for start in bad_starts
        ]
        bad_messages += [{"from": {first: 1}}, {"subscribe": [first], "from": [first]}]
        for bad in bad_messages:
            await socket.send(json.dumps(bad))
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await socket.receive())["error"]["code"] == "invalid_message"
    assert chunks_of([m for m in received if m["id"] == first]) == [3, 4]
    assert chunks_of([m for m in received if m["id"] == second]) == ["a", "b", "c"]


async def _two_ended_streams(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> tuple[str, str]:
    """Two tasks that have streamed and ended: one counted to 5, one the words "a b c"."""
    first = (await submit(client, "tests.stream_count", count=5))["id"]
    second = (await submit(client, "tests.stream_words", text="a b c"))["id"]
    with thread_worker(celery):
        await finished(client, first)
        await finished(client, second)
    return first, second


async def _both_from_offset_3_of_the_first(
    socket: Any, first: str, second: str
) -> list[dict[str, Any]]:
    """Subscribe a `/ws/tasks` socket to both tasks, the first's chunks from offset 3; every
    message until both have ended."""
    await socket.send(json.dumps({"subscribe": [first, second], "from": {first: 3}}))
    received: list[dict[str, Any]] = []
    while sum(message.get("state") == "SUCCESS" for message in received) < 2:
        async with asyncio.timeout(TIMEOUT):
            received.append(json.loads(await socket.receive()))
    return received


def batched_chunks_of(received: list[dict[str, Any]], start: int = 0) -> list[Any]:
    """The chunks of a socket that takes them in batches, checked to come in order, once,
    from `start`: each batch begins where the one before it ended."""
    batches = [message for message in received if "offset" in message]
    assert all("state" not in batch and "chunk" not in batch for batch in batches)
    chunks: list[Any] = []
    for batch in batches:
        assert batch["offset"] == start + len(chunks)
        chunks += batch["chunks"]
    return chunks


@pytest.mark.parametrize("start", [0, 1200])
async def test_chunks_in_batches_come_many_to_a_message_in_order_from_any_offset(
    client: Client, celery: Celery, thread_worker: ThreadWorker, start: int
) -> None:
    task_id = (await submit(client, "tests.stream_count", count=2500, delay=0.001))["id"]
    with thread_worker(celery):
        await wait_for_async(
            lambda: _has_chunks(client, task_id), TIMEOUT, "the task to start streaming"
        )
        url = f"/ws/tasks/{task_id}?chunks=batched&from={start}"
        async with client.websocket(url) as socket:
            received, code = await messages_until_closed(socket)
    assert code == 1000
    assert batched_chunks_of(received, start) == list(range(start, 2500))
    # The stored ones a page to a message, the live ones as written: far fewer messages.
    assert len(received) < (2500 - start) / 2
    assert received[-1]["state"] == "SUCCESS"
    assert all(message["id"] == task_id for message in received)


async def test_many_tasks_on_one_socket_in_batches(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    first, second = await _two_ended_streams(client, celery, thread_worker)
    async with client.websocket("/ws/tasks?chunks=batched") as socket:
        received = await _both_from_offset_3_of_the_first(socket, first, second)
    assert batched_chunks_of([m for m in received if m["id"] == first], 3) == [3, 4]
    assert batched_chunks_of([m for m in received if m["id"] == second]) == ["a", "b", "c"]


@pytest.mark.parametrize("url", ["/ws/tasks/{}?chunks=all", "/ws/tasks?chunks="])
async def test_a_bad_way_to_take_chunks_is_a_clear_error(
    client: Client, celery: Celery, thread_worker: ThreadWorker, url: str
) -> None:
    task_id = (await submit(client, "tests.stream_count", count=1))["id"]
    async with client.websocket(url.format(task_id)) as socket:
        received, code = await messages_until_closed(socket)
    assert code == 4400
    assert received[0]["error"]["code"] == "invalid_chunks"
    assert "batched" in received[0]["error"]["message"]
    with thread_worker(celery):
        assert (await finished(client, task_id))["state"] == "SUCCESS"


async def test_server_sent_events_give_each_chunk_then_the_end(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = (await submit(client, "tests.stream_words", text="alpha beta gamma"))["id"]
    with thread_worker(celery):
        response = await client.get(f"/api/tasks/{task_id}/stream")
        body = await response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = parse_events(body)
    chunks = [event for event in events if "id" in event]
    assert [(event["id"], json.loads(event["data"])) for event in chunks] == [
        ("0", "alpha"),
        ("1", "beta"),
        ("2", "gamma"),
    ]
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"])["result"] == "alpha beta gamma"
    # Resumed after offset 1, as a browser's EventSource does.
    response = await client.get(f"/api/tasks/{task_id}/stream", headers={"Last-Event-ID": "1"})
    events = parse_events(await response.get_data(as_text=True))
    assert [event.get("id") for event in events] == ["2", None]
    assert events[-1]["event"] == "end"


async def test_an_unknown_task_is_404_before_the_stream(client: Client) -> None:
    response = await client.get(f"/api/tasks/{NEVER_SENT}/stream")
    assert response.status_code == 404
    assert (await error_of(response))["code"] == "task_not_found"
    assert response.mimetype == "application/json"


async def test_queue_stream_gives_the_chunks_and_raises_a_failure(
    app: Quart, client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    async with app.app_context():
        words = await queue.submit(celery.signature("tests.stream_words", kwargs={"text": "x y z"}))
        failing = await queue.submit(celery.signature("tests.stream_then_fail", args=(3,)))
        yielded = await queue.submit(celery.signature("tests.stream_yielded", args=(4,)))
        with thread_worker(celery):
            assert [chunk async for chunk in queue.stream(words)] == ["x", "y", "z"]
            assert [chunk async for chunk in queue.stream(words, start=2)] == ["z"]
            got: list[Any] = []
            with pytest.raises(TaskFailed):
                async with aclosing(queue.stream(failing)) as chunks:
                    async for chunk in chunks:
                        got.append(chunk)
            assert got == [0, 1, 2]
            assert [chunk async for chunk in queue.stream(yielded)] == [{"n": n} for n in range(4)]


@pytest.mark.parametrize("taking", ["each", "batched"])
async def test_ten_followers_of_a_5000_chunk_stream_each_get_every_chunk(
    client: Client, celery: Celery, thread_worker: ThreadWorker, taking: str
) -> None:
    # Batched, a socket whose handler finds several batches waiting sends them joined.
    task_id = (await submit(client, "tests.stream_count", count=5000))["id"]

    async def follow() -> list[dict[str, Any]]:
        async with client.websocket(f"/ws/tasks/{task_id}?chunks={taking}") as socket:
            received, code = await messages_until_closed(socket)
        assert code == 1000
        return received

    with thread_worker(celery):
        followers = [asyncio.create_task(follow()) for _ in range(10)]
        results = await asyncio.gather(*followers)
    for received in results:
        got = chunks_of(received) if taking == "each" else batched_chunks_of(received)
        assert got == list(range(5000))
        assert received[-1]["state"] == "SUCCESS"


@pytest.mark.parametrize("taking", ["each", "batched"])
async def test_followers_of_one_task_from_different_offsets_at_once_each_get_theirs(
    client: Client, celery: Celery, thread_worker: ThreadWorker, taking: str
) -> None:
    # Their look-ups go in one trip: each reads its own page. (They shared the last one's,
    # and the socket from 0 got the chunks from about 2,500 on, with no error.)
    task_id = (await submit(client, "tests.stream_count", count=3000))["id"]
    with thread_worker(celery):
        await finished(client, task_id)

    async def follow(start: int) -> list[Any]:
        url = f"/ws/tasks/{task_id}?chunks={taking}&from={start}"
        async with client.websocket(url) as socket:
            received, code = await messages_until_closed(socket)
        assert code == 1000 and received[-1]["state"] == "SUCCESS"
        if taking == "each":
            return chunks_of(received)
        return batched_chunks_of(received, start)

    starts = [0, 2500, 1200, 0, 2999]
    results = await asyncio.gather(*(follow(start) for start in starts))
    assert results == [list(range(start, 3000)) for start in starts]


async def test_a_stream_that_lost_the_chunks_asked_for_ends_in_an_error_not_a_gap(
    client: Client, celery: Celery, thread_worker: ThreadWorker, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.stream_count", count=3000))["id"]
    with thread_worker(celery):
        await finished(client, task_id)
    backend: Any = celery.backend
    key = stream_key(backend.get_key_for_task(task_id))
    entries: Any = redis_client.xrange(key, count=1)
    redis_client.xdel(key, entries[0][0])  # as if Redis had lost it
    async with client.websocket(f"/ws/tasks/{task_id}?chunks=batched") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 1011
    assert received[-1]["error"]["code"] == "chunks_missing", received[-1]
    assert all("chunks" not in message for message in received)


@pytest.mark.settings(STREAM_MAX_CHUNKS=5)
async def test_a_task_past_the_cap_is_told(
    app: Quart, client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = await _submit_in(app, celery.signature("tests.stream_past_the_cap"))
    with thread_worker(celery):
        snapshot = await finished(client, task_id)
    assert snapshot["result"] == 5
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        received, _ = await messages_until_closed(socket)
    assert chunks_of(received) == [0, 1, 2, 3, 4]


async def _submit_in(app: Quart, signature: Any) -> str:
    async with app.app_context():
        return await queue.submit(signature)

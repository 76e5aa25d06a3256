"""Following tasks: what a follower's inbox takes, and the order a follower gives things in.

The inbox's rules are plain data; the follower's order is checked against a real Redis and a
real worker, its updates handed to it in the order that is rare on a live server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery._broker.chunks import StoredChunk
from quart_celery._client.following import (
    BATCH_SIZE,
    Changed,
    Followed,
    Follower,
    Inbox,
    StreamedBatch,
    StreamedChunk,
    Written,
    stored_batches,
)
from quart_celery._client.listener import Chunks, Update
from quart_celery.errors import FellBehind
from quart_celery.testing import ThreadWorker, finished, submit

TASK = "a-task"


def test_chunks_go_only_to_an_inbox_that_follows_chunks() -> None:
    inbox = Inbox(4)
    inbox.deliver(Chunks(TASK, 0, ['"a"']))
    assert inbox.updates == []
    inbox.wants_chunks = True
    inbox.deliver(Chunks(TASK, 0, ['"a"']))
    assert inbox.updates == [Chunks(TASK, 0, ['"a"'])]


def test_chunks_that_find_the_inbox_full_are_missed_not_fatal() -> None:
    inbox = Inbox(1)
    inbox.wants_chunks = True
    inbox.deliver(Update(TASK))
    inbox.deliver(Chunks(TASK, 0, ['"a"']))
    assert (inbox.broken, inbox.missed) == (None, {TASK})
    inbox.deliver(Update(TASK))  # a state cannot be read again later: that is falling behind
    assert isinstance(inbox.broken, FellBehind)


@pytest.mark.parametrize("missed", [False, True], ids=["final-heard-first", "chunks-missed"])
async def test_a_final_state_comes_after_every_chunk_stored_before_it(
    app: Quart, client: Client, celery: Celery, thread_worker: ThreadWorker, missed: bool
) -> None:
    task_id = (await submit(client, "tests.stream_words", text="a b c"))["id"]
    with thread_worker(celery):
        await finished(client, task_id)
    backend: Any = celery.backend
    published = backend.get_task_meta(task_id)  # as it was published: JSON's types
    async with app.app_context():
        follower = Follower()
        follower.followed[task_id] = Followed("tests.stream_words", next_offset=0)
        if missed:
            # Its stored state read, then its chunks missed (the inbox was full), then the
            # final state heard: the chunks are read from the stream before it is given.
            follower.followed[task_id].read = True
            follower.inbox.missed = {task_id}
        else:
            # The final state published after the subscription, before the stored state is
            # read: that read, with its chunks, comes first.
            follower.inbox.deliver(Update(task_id, published))
            follower.inbox.deliver(Update(task_id))
        follower.inbox.deliver(Update(task_id, published))
        events = [await follower.next_event() for _ in range(4)]
    chunks = [event.value for event in events if isinstance(event, StreamedChunk)]
    assert chunks == ["a", "b", "c"]
    assert isinstance(events[-1], Changed) and events[-1].state == "SUCCESS"


async def test_a_published_batch_is_one_message_made_once_for_every_batched_follower(
    app: Quart, client: Client
) -> None:
    batch = Chunks(TASK, 10, ['"a"', '"b"', '"c"'])
    async with app.app_context():
        followers = [Follower(batched=True) for _ in range(3)]
        for follower, start in zip(followers, [10, 10, 11], strict=True):
            follower.followed[TASK] = Followed("tests.stream_words", next_offset=start, read=True)
            follower.inbox.wants_chunks = True
            follower.inbox.deliver(batch)
        first, second, late = [await follower.next_event() for follower in followers]
    assert isinstance(first, StreamedBatch) and isinstance(second, StreamedBatch)
    assert first.message() is second.message()  # one text, however many sockets take it
    assert json.loads(first.message()) == {"id": TASK, "offset": 10, "chunks": ["a", "b", "c"]}
    assert isinstance(late, StreamedBatch)
    assert json.loads(late.message()) == {"id": TASK, "offset": 11, "chunks": ["b", "c"]}


async def test_a_published_state_is_one_snapshot_made_once_for_every_follower_of_its_task(
    app: Quart, client: Client
) -> None:
    update = Update(TASK, {"status": "PROGRESS", "result": {"current": 1, "total": 2}})
    async with app.app_context():
        followers = [Follower() for _ in range(3)]
        for follower, name in zip(followers, ["tests.add", "tests.add", "other.name"], strict=True):
            follower.followed[TASK] = Followed(name, read=True)
            follower.inbox.deliver(update)
        first, second, named_otherwise = [await follower.next_event() for follower in followers]
    assert isinstance(first, Changed) and first.snapshot.progress is not None
    assert first is second  # made once, its JSON too, however many sockets take it
    assert json.loads(first.json) == first.snapshot.model_dump(mode="json")
    assert isinstance(named_otherwise, Changed) and named_otherwise.snapshot.name == "other.name"
    with pytest.raises(ValueError, match="frozen"):  # so that no follower changes another's
        first.snapshot.state = "SUCCESS"


async def test_batches_ready_together_are_joined_into_one_up_to_a_size(
    app: Quart, client: Client
) -> None:
    # Four batches of one task waiting, then a state, then a fifth: the first three are
    # joined (the fourth would pass the size), and none across the state.
    words = [['"a"', '"b"'], ['"c"'], ['"d"', '"e"'], ['"fff"'], ['"g"']]
    async with app.app_context():
        follower = Follower(batched=True)
        follower.followed[TASK] = Followed("tests.stream_words", next_offset=0, read=True)
        follower.inbox.wants_chunks = True
        offset = 0
        for batch in words[:4]:
            follower.inbox.deliver(Chunks(TASK, offset, batch))
            offset += len(batch)
        follower.inbox.deliver(Update(TASK, {"status": "PROGRESS", "result": {}}))
        follower.inbox.deliver(Chunks(TASK, offset, words[4]))
        first = await follower.next_event()
        assert isinstance(first, StreamedBatch)
        joined = follower.joined(first, most=len('"a","b","c","d","e"'))
        fourth = follower.joined(await follower.next_event(), most=1000)  # type: ignore[arg-type]
        state = await follower.next_event()
        fifth = await follower.next_event()
    assert json.loads(joined.message()) == {
        "id": TASK,
        "offset": 0,
        "chunks": ["a", "b", "c", "d", "e"],
    }
    assert (joined.offset, joined.count) == (0, 5)
    assert json.loads(fourth.message())["chunks"] == ["fff"]
    assert isinstance(state, Changed)
    assert isinstance(fifth, StreamedBatch) and json.loads(fifth.message())["offset"] == 6


def test_stored_chunks_go_in_batches_of_a_size_at_most() -> None:
    # A page read from the stream holds many of the worker's batches: a batched socket gets
    # them in messages of BATCH_SIZE characters at most (a larger chunk alone).
    texts = ["x" * 100_000, "y" * 100_000, "z" * 100_000, "w" * 300_000, "v"]
    stored = [StoredChunk(10 + n, json.dumps(text).encode()) for n, text in enumerate(texts)]
    batches = stored_batches(TASK, stored)
    assert [(batch.offset, batch.count) for batch in batches] == [
        (10, 2),
        (12, 1),
        (13, 1),
        (14, 1),
    ]
    assert all(len(batch.body) <= BATCH_SIZE for batch in batches if batch.count > 1)
    given = [chunk for batch in batches for chunk in json.loads(batch.message())["chunks"]]
    assert given == texts


async def test_a_batch_goes_straight_to_the_writer_while_the_follower_waits_with_nothing_before(
    app: Quart, client: Client
) -> None:
    # Written straight on: the next batch due, the follower waiting. Given the usual way: one
    # the writer declines, and one with an update waiting before it.
    written: list[int] = []
    declining = False

    def write(text: str) -> bool:
        if declining:
            return False
        written.append(json.loads(text)["offset"])
        return True

    async with app.app_context():
        follower = Follower(batched=True)
        follower.followed[TASK] = Followed("tests.stream_words", next_offset=0, read=True)
        follower.inbox.wants_chunks = True
        follower.write_with(write)
        waiting = asyncio.ensure_future(follower.next_event())
        await asyncio.sleep(0)  # it waits
        follower.inbox.deliver(Chunks(TASK, 0, ['"a"', '"b"']))
        follower.inbox.deliver(Chunks(TASK, 2, ['"c"']))
        assert written == [0, 2] and not waiting.done()
        assert follower.followed[TASK].next_offset == 3
        declining = True
        follower.inbox.deliver(Chunks(TASK, 3, ['"d"']))
        declining = False
        follower.inbox.deliver(Chunks(TASK, 4, ['"e"']))  # one waits before it
        given = await waiting
        joined = follower.joined(given)  # type: ignore[arg-type]
    assert written == [0, 2]
    assert json.loads(joined.message()) == {"id": TASK, "offset": 3, "chunks": ["d", "e"]}


async def test_states_go_straight_to_the_writer_and_the_final_one_ends_the_following(
    app: Quart, client: Client
) -> None:
    # A state written straight is not given again; the final one comes out as `Written`, and
    # the task is no longer followed. One equal to the last written is dropped.
    written: list[str] = []

    def write(text: str) -> bool:
        written.append(json.loads(text)["state"])
        return True

    progress = Update(TASK, {"status": "PROGRESS", "result": {"current": 1, "total": 2}})
    async with app.app_context():
        follower = Follower()
        follower.followed[TASK] = Followed("tests.add", read=True)
        follower.write_with(write)
        waiting = asyncio.ensure_future(follower.next_event())
        await asyncio.sleep(0)
        follower.inbox.deliver(progress)
        follower.inbox.deliver(Update(TASK, dict(progress.meta or {})))  # the same again
        assert not waiting.done()
        follower.inbox.deliver(Update(TASK, {"status": "SUCCESS", "result": 3}))
        ended = await waiting
    assert written == ["PROGRESS", "SUCCESS"]
    assert isinstance(ended, Written) and ended.state == "SUCCESS"
    assert TASK not in follower.followed


async def test_nothing_goes_straight_on_before_the_stored_state_is_read(
    app: Quart, client: Client
) -> None:
    written: list[str] = []

    def write(text: str) -> bool:
        written.append(text)
        return True

    async with app.app_context():
        follower = Follower(batched=True)
        follower.followed[TASK] = Followed("tests.stream_words", next_offset=0)  # not read
        follower.inbox.wants_chunks = True
        follower.write_with(write)
        waiting = asyncio.ensure_future(follower.next_event())
        await asyncio.sleep(0)
        follower.inbox.deliver(Chunks(TASK, 0, ['"a"']))  # to the follower, which drops it
        follower.inbox.deliver(Update(TASK, {"status": "STARTED", "result": None}))
        await asyncio.sleep(0)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert written == []

"""Look-ups waiting at the same moment go together: one trip to the pool, one MGET of the
records and one of the stored states, for `GET`s and websockets alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from quart import Quart

from quart_celery import queue
from quart_celery._broker.keys import Keys
from quart_celery._client import reader
from quart_celery._client.following import Follower
from quart_celery._client.reader import Asked, Found
from tests.worker_tasks import echo


@pytest.fixture
async def serving(app: Quart, redis_client: redis.Redis) -> AsyncIterator[Quart]:
    """The app serving, its context pushed."""
    async with app.test_app(), app.app_context():
        yield app


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[list[Asked]]:
    """What each trip to the pool asked for, as it happens."""
    asked: list[list[Asked]] = []
    read = reader.read

    def counted(client: redis.Redis, backend: Any, keys: Keys, batch: list[Asked]) -> list[Found]:
        asked.append(batch)
        return read(client, backend, keys, batch)

    monkeypatch.setattr(reader, "read", counted)
    return asked


async def test_look_ups_at_once_share_a_trip(serving: Quart, trips: list[list[Asked]]) -> None:
    task_ids = [await queue.submit(echo, str(n)) for n in range(200)]
    trips.clear()
    snapshots = await asyncio.gather(*(queue.look_up(task_id) for task_id in task_ids))
    assert [snapshot.id for snapshot in snapshots] == task_ids
    assert {snapshot.state for snapshot in snapshots} == {"PENDING"}
    # The reading starts once the loop comes round, when all 200 wait: one trip for them all.
    assert [len(batch) for batch in trips] == [200]


async def test_websockets_and_gets_share_the_batches(
    serving: Quart, trips: list[list[Asked]]
) -> None:
    task_ids = [await queue.submit(echo, str(n)) for n in range(50)]
    followers = [Follower() for _ in task_ids]
    trips.clear()
    await asyncio.gather(
        *(follower.follow(task_id) for follower, task_id in zip(followers, task_ids, strict=True)),
        *(queue.look_up(task_id) for task_id in task_ids),
    )
    first_changes = await asyncio.gather(*(follower.next_event() for follower in followers))
    assert {getattr(change, "state", None) for change in first_changes} == {"PENDING"}
    # A subscription reads the record (name, not state); its first snapshot the stored state.
    wanted = {(one.name, one.stored) for batch in trips for one in batch}
    assert wanted == {(True, False), (True, True), (False, True)}
    assert len(trips) <= 4
    for follower in followers:
        follower.close()

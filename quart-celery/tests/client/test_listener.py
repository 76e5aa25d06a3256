"""The listener subscribes to the channels of the tasks followed in its process, and to no more.

Pub/sub ignores database numbers: the subscriptions counted here are each test's own tasks'.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from quart import Quart
from quart.typing import TestClientProtocol as Client
from redis.asyncio.client import PubSub

from quart_celery import queue
from quart_celery._client.following import Follower
from quart_celery._client.listener import CHANNEL_PREFIX, ResultListener, published_chunks
from quart_celery._client.reader import SETTLED_AT_ONCE
from quart_celery.testing import submit, wait_for_async
from tests.worker_tasks import echo

TIMEOUT = 10.0


@pytest.fixture
async def serving(app: Quart, redis_client: redis.Redis) -> AsyncIterator[Quart]:
    """The app serving, its context pushed."""
    async with app.test_app(), app.app_context():
        yield app


def subscribers(client: redis.Redis, task_id: str) -> int:
    """How many connections subscribe to the task's channel (PUBSUB NUMSUB)."""
    ((_, count),) = client.pubsub_numsub(CHANNEL_PREFIX + task_id)
    return int(count)


def patterns_of(client: redis.Redis, listener: ResultListener) -> int:
    """The pattern subscriptions of the listener's connection (CLIENT LIST's `psub`)."""
    (connection,) = [c for c in client.client_list() if c["name"] == listener.client_name]
    return int(connection["psub"])


async def test_a_task_followed_by_two_sockets_is_one_subscription_gone_after_the_last(
    app: Quart, client: Client, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.echo", message="watched"))["id"]
    listener = app.extensions["quart_celery.result_listener"]
    assert subscribers(redis_client, task_id) == 0
    async with client.websocket(f"/ws/tasks/{task_id}") as first:
        assert (await first.receive_json())["state"] == "PENDING"
        assert subscribers(redis_client, task_id) == 1
        async with client.websocket("/ws/tasks") as second:
            await second.send_json({"subscribe": [task_id]})
            assert (await second.receive_json())["state"] == "PENDING"
            assert subscribers(redis_client, task_id) == 1  # one per process, not per socket
        assert subscribers(redis_client, task_id) == 1
        assert patterns_of(redis_client, listener) == 0

    async def unsubscribed() -> bool:
        return subscribers(redis_client, task_id) == 0

    await wait_for_async(unsubscribed, TIMEOUT, "the listener to unsubscribe")
    assert not listener.recipients and not listener.asked


async def test_subscriptions_asked_for_at_once_go_in_one_command(
    serving: Quart, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_ids = [await queue.submit(echo, str(n)) for n in range(100)]
    commands: list[int] = []
    subscribe = PubSub.subscribe

    async def counted(self: PubSub, *channels: str) -> None:
        commands.append(len(channels))
        await subscribe(self, *channels)

    monkeypatch.setattr(PubSub, "subscribe", counted)
    followers = [Follower() for _ in task_ids]
    await asyncio.gather(*(f.follow(t) for f, t in zip(followers, task_ids, strict=True)))
    # The followers learn their tasks exist SETTLED_AT_ONCE at a time, a turn of the loop each:
    # the subscriptions asked for in one turn go in one command.
    assert sum(commands) == 100, commands
    assert len(commands) <= math.ceil(100 / SETTLED_AT_ONCE) + 1, commands
    assert [subscribers(redis_client, task_id) for task_id in task_ids] == [1] * 100
    for follower in followers:
        follower.close()


async def test_an_update_published_once_following_has_begun_is_not_missed(
    serving: Quart, redis_client: redis.Redis
) -> None:
    task_id = await queue.submit(echo, "raced")
    follower = Follower()
    await follower.follow(task_id)
    # Published, not stored: only the subscription, confirmed before `follow` returned, hears it.
    meta = {"status": "PROGRESS", "result": {"current": 1, "total": 2}, "task_id": task_id}
    redis_client.publish(CHANNEL_PREFIX + task_id, json.dumps(meta))
    async with asyncio.timeout(TIMEOUT):
        first, second = await follower.next_event(), await follower.next_event()
    assert [getattr(event, "state", None) for event in (first, second)] == ["PENDING", "PROGRESS"]
    follower.close()


async def test_a_subscription_sent_as_the_connection_goes_counts_as_losing_it(
    serving: Quart, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py's pub/sub reconnects inside get_message; a SUBSCRIBE sent at that moment found
    # the stream gone, and the listener died of the AttributeError (seen under a failover).
    failed: list[tuple[object, ...]] = []
    subscribe = PubSub.subscribe

    async def subscribe_the_first_time_into_a_closed_stream(
        pubsub: PubSub, *channels: str, **more: Any
    ) -> None:
        if not failed:
            failed.append(channels)
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        await subscribe(pubsub, *channels, **more)

    monkeypatch.setattr(PubSub, "subscribe", subscribe_the_first_time_into_a_closed_stream)
    task_id = await queue.submit(echo, "raced")
    follower = Follower()
    async with asyncio.timeout(TIMEOUT):
        await follower.follow(task_id)  # confirmed on the connection made after
        first = await follower.next_event()
    assert failed
    assert getattr(first, "state", None) == "PENDING"
    follower.close()


def test_a_batch_as_the_worker_publishes_it_keeps_its_chunks_as_they_were_encoded() -> None:
    # The worker's script: `{"status", "task_id", "offset", "chunks": [...]}`, the chunks last.
    task = '"quoted","chunks":[task'  # an id's quotes come escaped: no false start of the list
    data = (
        b'{"status":"STREAMING","task_id":'
        + json.dumps(task).encode()
        + b',"offset":7,"chunks":[{"a":1.5},"x \\" ]",[1,2]]}'
    )
    batch = published_chunks(task, data)
    assert batch is not None and (batch.offset, batch.count()) == (7, 3)
    assert batch.body() == '{"a":1.5},"x \\" ]",[1,2]'  # as it came, not encoded again
    assert [json.loads(chunk) for chunk in batch.each()] == [{"a": 1.5}, 'x " ]', [1, 2]]
    assert json.loads(batch.message())["chunks"] == [{"a": 1.5}, 'x " ]', [1, 2]]


@pytest.mark.parametrize(
    "data",
    [
        b'{"status":"STREAMING","task_id":"t","offset":"seven","chunks":[1]}',
        b'{"status":"STREAMING","task_id":"t","offset":7}',
        b'{"status":"STREAMING","task_id":"t","offset":7,"chunks":{}}',
        b'{"status":"STREAMING","task_id":"t","offset":7,"chunks":[1',
        b'{"status":"STREAMING",NaN}',
    ],
)
def test_a_malformed_batch_is_no_batch(data: bytes) -> None:
    assert published_chunks("t", data) is None

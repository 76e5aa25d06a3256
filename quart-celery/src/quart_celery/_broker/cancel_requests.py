"""Asking the worker that runs a task to stop it: a mark in Redis, and a message on a channel
that every worker process hears (`quart_celery._worker.cancellation` is the worker's half).

The mark is for a worker that was not listening when the message went (it reads the mark when
the task starts, and again after it reconnects); the message is for the one running it now.
"""

from __future__ import annotations

from redis import Redis

from quart_celery._broker.keys import Keys


def database_of(redis: Redis) -> int:
    """The database number a blocking client of `RedisAddress`'s uses."""
    return int(redis.connection_pool.connection_kwargs.get("db", 0))


def request_cancel(redis: Redis, keys: Keys, task_id: str, expires: int) -> None:
    """Ask the worker running `task_id` to stop it (blocks: the web app runs it in its pool)."""
    request_cancels(redis, keys, [task_id], expires)


def request_cancels(redis: Redis, keys: Keys, task_ids: list[str], expires: int) -> None:
    """Ask the workers running each of `task_ids` to stop it, in one round trip."""
    channel = keys.cancel_channel(database_of(redis))
    with redis.pipeline(transaction=False) as pipeline:
        for task_id in task_ids:
            pipeline.set(keys.cancel_mark(task_id), 1, ex=expires)
            pipeline.publish(channel, task_id)
        pipeline.execute()

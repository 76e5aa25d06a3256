"""The record of every task the app publishes: each id, with its task's name.

Celery reports PENDING for any id it has never seen, so by itself it cannot tell a task still
in the queue from an id nobody ever published. Every task published by any part of the app is
recorded when it is published, for as long as results are kept, and the API answers 404 for
the other ids. Who writes the records:

- the web app's own submissions, a whole batch in one round trip
  (`quart_celery._client.submitter`, `quart_celery._broker.batches`);
- anything else that publishes through the configured Celery (a worker starting a subtask or
  the next link of a chain, `celery beat`, `send_task` from a shell):
  `quart_celery._broker.recording`.

The functions here block: the web app runs them in its thread pool.
"""

from __future__ import annotations

from redis import Redis

from quart_celery._broker.keys import Keys


def remember(redis: Redis, keys: Keys, tasks: list[tuple[str, str]], expires: int) -> None:
    """Record that each task (id, name) was published, for `expires` seconds."""
    with redis.pipeline(transaction=False) as pipeline:
        for task_id, name in tasks:
            pipeline.set(keys.task(task_id), name, ex=expires)
        pipeline.execute()


def forget(redis: Redis, keys: Keys, task_ids: list[str]) -> None:
    """Drop the records of tasks that could not be sent after all."""
    redis.delete(*(keys.task(task_id) for task_id in task_ids))


def name_of(redis: Redis, keys: Keys, task_id: str) -> str | None:
    """The name of the task published as `task_id`, or None if none was."""
    name = redis.get(keys.task(task_id))
    return name.decode() if isinstance(name, bytes) else None


def names_of(redis: Redis, keys: Keys, task_ids: list[str]) -> list[str | None]:
    """The names of the tasks published under `task_ids` (None where none was), in one MGET."""
    if not task_ids:
        return []
    names = redis.mget([keys.task(task_id) for task_id in task_ids])
    return [name.decode() if isinstance(name, bytes) else None for name in names]

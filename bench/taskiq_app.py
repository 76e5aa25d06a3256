"""taskiq's side of `bench/async_tasks.py`, run in a virtual environment of its own (taskiq and
taskiq-redis): the broker and the task for `taskiq worker bench.taskiq_app:broker`, and, run as
a script, the client that sends the tasks and waits for their results.

    REDIS_URL=... python bench/taskiq_app.py TASKS SECONDS   # prints {"last_send", "done"}
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from redis.asyncio import Redis
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
PREFIX = "taskiq-result"

broker = ListQueueBroker(REDIS_URL).with_result_backend(
    RedisAsyncResultBackend(REDIS_URL, prefix_str=PREFIX, result_ex_time=600)
)


@broker.task(task_name="bench.sleep")  # type: ignore[untyped-decorator]  # no taskiq here
async def sleep(seconds: float) -> None:
    """Wait on nothing for `seconds`."""
    await asyncio.sleep(seconds)


async def send_and_wait(tasks: int, seconds: float) -> dict[str, float]:
    """Send `tasks` sleeps, one after another; wait until every result is stored."""
    await broker.startup()
    warm_up = await sleep.kiq(0)
    await warm_up.wait_result(timeout=60)
    sent = [await sleep.kiq(seconds) for _ in range(tasks)]
    last_send = time.time()
    keys = [f"{PREFIX}:{task.task_id}" for task in sent]
    client = Redis.from_url(REDIS_URL)
    while await client.exists(*keys) < len(keys):
        await asyncio.sleep(0.005)
    done = time.time()
    await client.aclose()
    await broker.shutdown()
    return {"last_send": last_send, "done": done}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(send_and_wait(int(sys.argv[1]), float(sys.argv[2])))))

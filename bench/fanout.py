"""Fan-out: what one server spends on updates that only another server's sockets watch.

    .venv/bin/python bench/fanout.py [--sockets 100] [--rate 2000] [--seconds 10]

Two `hypercorn asgi:app` processes share one Redis. The second one's clients follow `sockets`
tasks over websockets; the benchmark publishes `rate` updates a second on those tasks'
channels, as workers publish the states they store, for `seconds` seconds. The first server
has no socket at all. Reported: the CPU seconds each server's process used meanwhile, and the
updates the clients received. Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0),
database 15, flushed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import post
from submit import cpu_seconds, flush
from waiters import serving

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
CHANNEL = "celery-task-meta-"


def main() -> None:
    """Serve twice, follow on the second, publish, and print what each server spent."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--rate", type=int, default=2000, help="updates a second, in all")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    flush(redis_url)
    try:
        with serving(redis_url) as (_, idle), serving(redis_url) as (busy_port, busy):
            idle_cpu, busy_cpu, received = asyncio.run(
                follow_and_publish(busy_port, redis_url, idle, busy, args)
            )
        published = int(args.rate * args.seconds)
        print(
            f"{published} updates published in {args.seconds:g} s on {args.sockets} tasks; "
            f"{received} received by the sockets of the second server\n"
            f"  server without sockets: {idle_cpu:5.2f} CPU s\n"
            f"  server with the sockets: {busy_cpu:5.2f} CPU s"
        )
    finally:
        flush(redis_url)


async def follow_and_publish(
    port: int, redis_url: str, idle: int, busy: int, args: argparse.Namespace
) -> tuple[float, float, int]:
    """Follow the tasks on the busy server, publish, and measure both servers' CPU."""
    task_ids = [
        (await post(port, {"name": "simple_task", "kwargs": {"message": "x"}}))["id"]
        for _ in range(args.sockets)
    ]
    received = 0
    sockets = [
        await websockets.connect(f"ws://127.0.0.1:{port}/ws/tasks/{t}", compression=None)
        for t in task_ids
    ]
    for socket in sockets:
        await socket.recv()  # the snapshot: PENDING

    async def read(socket: websockets.ClientConnection) -> None:
        nonlocal received
        async for _ in socket:
            received += 1

    reading = [asyncio.create_task(read(socket)) for socket in sockets]
    publisher = aioredis.Redis.from_url(redis_url)
    idle_before, busy_before = cpu_seconds(idle), cpu_seconds(busy)
    ticks, per_tick = int(args.seconds * 100), args.rate // 100
    started = time.perf_counter()
    for tick in range(ticks):
        async with publisher.pipeline(transaction=False) as pipeline:
            for n in range(per_tick):
                task_id = task_ids[(tick * per_tick + n) % len(task_ids)]
                meta = {
                    "status": "PROGRESS",
                    "result": {"current": tick * per_tick + n, "total": 10**9},
                    "traceback": None,
                    "children": [],
                    "date_done": None,
                    "task_id": task_id,
                }
                pipeline.publish(CHANNEL + task_id, json.dumps(meta))
            await pipeline.execute()
        await asyncio.sleep(max(0.0, started + (tick + 1) / 100 - time.perf_counter()))
    await asyncio.sleep(0.5)  # what is on its way arrives
    idle_cpu, busy_cpu = cpu_seconds(idle) - idle_before, cpu_seconds(busy) - busy_before
    for socket in sockets:
        await socket.close()
    for task in reading:
        task.cancel()
    await asyncio.gather(*reading, return_exceptions=True)
    await publisher.aclose()
    return idle_cpu, busy_cpu, received


if __name__ == "__main__":
    main()

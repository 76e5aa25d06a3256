"""Many followers of one task: what one server spends sending each state of a task to each of
the many sockets that watch it, against the bare relay under the same hypercorn.

    .venv/bin/python bench/followers.py [--sockets 100] [--updates 500] [--rate 50] [--rounds 2]

A task on a page many people have open, or the `STARTED` that goes to every follower of a
stream before its first chunk (`bench/streams.py`). One `hypercorn asgi:app` and no worker: one
task is submitted, `--sockets` websockets (the light client of `bench/streams.py`, declining
compression) follow it, and the benchmark publishes `--updates` `PROGRESS` states on its
channel, `--rate` a second, each unlike the last, as a worker publishes the states it stores;
then `SUCCESS`. Every socket must get every state, then the close (1000). Reported: the server
process's CPU time (user and system) from the first publish to the last close, a state a socket
(the `SUCCESS` and the socket's end counted as one state more: with `--updates 0`, what a
task's end costs a socket that follows it); then the same through `bench/bare_relay.py` (which
sends `{"state": ...}` where the app sends the task's snapshot), and the app's over the
relay's. Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0), database 15, flushed
before and after.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import post
from streams import record
from submit import cpu_seconds, flush
from waiters import serving

DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
CHANNEL = "celery-task-meta-"


def main() -> None:
    """Follow one task on the app, then on the bare relay, each round; print the CPU times."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument(
        "--updates", type=int, default=500, help="PROGRESS states published before SUCCESS"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="states a second")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    for number in range(1, args.rounds + 1):
        print(
            f"round {number}: {args.updates} states, {args.rate:g} a second, then SUCCESS, to "
            f"each of {args.sockets} sockets following one task"
        )
        costs = {}
        for label, server in (("the app", "asgi:app"), ("bare relay", "bare_relay:app")):
            costs[label] = run_round(server, redis_url, args.sockets, args.updates, args.rate)
            print(
                f"  {label:10} (hypercorn {server}): {costs[label]:6.1f} µs of CPU a state a socket"
            )
        print(f"  the app ÷ the bare relay: {costs['the app'] / costs['bare relay']:.2f}")


def run_round(server: str, redis_url: str, sockets: int, updates: int, rate: float) -> float:
    """One hypercorn serving `server`, fresh, on a flushed database: its CPU time a state a
    socket, in µs."""
    flush(redis_url)
    try:
        with serving(redis_url, server) as (port, pid):
            used = asyncio.run(follow_and_publish(port, redis_url, pid, sockets, updates, rate))
    finally:
        flush(redis_url)
    return 1e6 * used / ((updates + 1) * sockets)


async def follow_and_publish(
    port: int, redis_url: str, pid: int, sockets: int, updates: int, rate: float
) -> float:
    """Follow one task from `sockets` sockets, publish its states; the CPU seconds the
    server's process used from the first publish to the last close."""
    task_id = (await post(port, {"name": "simple_task", "kwargs": {"message": "x"}}))["id"]
    followers = [await record(f"ws://127.0.0.1:{port}/ws/tasks/{task_id}") for _ in range(sockets)]
    for follower in followers:
        await follower.first_message  # the snapshot: PENDING
    publisher = aioredis.Redis.from_url(redis_url)
    before = cpu_seconds(pid)
    started = time.perf_counter()
    for number in range(updates):
        result = {"current": number, "total": updates}
        await publisher.publish(CHANNEL + task_id, meta(task_id, "PROGRESS", result))
        await asyncio.sleep(max(0.0, started + (number + 1) / rate - time.perf_counter()))
    final = meta(task_id, "SUCCESS", "done", date_done="2026-12-04T00:00:00+00:00")
    await publisher.set(CHANNEL + task_id, final)
    await publisher.publish(CHANNEL + task_id, final)
    for follower in followers:
        await follower.closed
    used = cpu_seconds(pid) - before
    await publisher.aclose()
    for follower in followers:
        states = [json.loads(text)["state"] for _, text in follower.messages()]
        assert states == ["PENDING", *["PROGRESS"] * updates, "SUCCESS"], states[-3:]
        assert follower.close_code == 1000, follower.close_code
    return used


def meta(task_id: str, state: str, result: object, date_done: str | None = None) -> str:
    """A state as Celery's Redis backend publishes it."""
    return json.dumps(
        {
            "status": state,
            "result": result,
            "traceback": None,
            "children": [],
            "date_done": date_done,
            "task_id": task_id,
        }
    )


if __name__ == "__main__":
    main()

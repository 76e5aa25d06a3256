"""Delivery latency: from the worker storing a task's final state to a client receiving it.

    .venv/bin/python bench/latency.py [--rounds 3] [--tasks 200] [--concurrency 25] [--warm-up 25]

Each task is watched at once by a websocket client and by a client polling
`GET /api/tasks/<id>` every 100 ms, against one `hypercorn asgi:app` and one worker. As a
floor, a Redis pub/sub subscriber in the benchmark's own event loop hears the worker's
publishes directly: the websocket's latency less this one is what the server adds. The
websocket client and the subscriber are light ones of the benchmark's own (`streams.Recorder`,
`Subscriber`), which note when each read came and parse what came after the run: a websocket
library and redis-py parse each message in coroutines of the loop the 25 sockets and 25
pollers share, and their turns of it counted as the server's delay (the floor's own p99 was 14
to 27 ms with them, 8 ms without, in one sitting on 2026-12-04). The websocket declines
compression, as `bench/streams.py`'s do. Then, in
the same run, the same against `bench/bare_relay.py` under the same hypercorn (the app's
`/ws/tasks/<id>` replaced by a bare relay of Redis pub/sub to the socket): what one more
process hop costs with no framework at all.
The two take turns, `--rounds` times (the app first, then the bare relay first, and so on),
each round `--tasks` tasks on each, and the percentiles are of all of a side's tasks: run one
after the other once, 20 s each, the bare relay's own p50 moved between 1.2 and 2.7 ms from
run to run in one sitting on 2026-12-04, and the ratio of the two with it (0.76 to 1.84). A
round 0 comes first and is not counted: whichever side ran first in a run was the slower,
and its Redis floor with it (in three runs on 2026-12-04, the app's first round had ratios
of 2.14, 1.28 and 1.48 to the relay's, with floors of 1.0, 0.9 and 0.8 ms against 0.6, 0.7
and 0.6).
Before the tasks measured, `--warm-up` tasks (as many as run at once, by default) warm the
server and the worker up on the same clients: the first tasks of a fresh server and worker
start their thread pools, open their connections and run code for the first time, and took
20 to 27 ms where the rest took 3 (2026-12-04). Their figures are printed on a line of their
own, not counted with the rest.
The store time is the `date_done` Celery records with the final state. Uses the Redis at
REDIS_URL (default redis://127.0.0.1:6379/0), database 15, flushed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from statistics import median
from urllib.parse import urlsplit, urlunsplit

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streams import record
from submit import flush, free_port, percentile, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
POLL_INTERVAL = 0.1
FINAL = ("SUCCESS", "FAILURE", "REVOKED")
CHANNEL = "celery-task-meta-"
FLOOR, PUSH = "Redis pub/sub (floor)", "websocket (push)"


def main() -> None:
    """Run the clients against the app and the bare relay, taking turns; print the
    percentiles."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="turns of each side")
    parser.add_argument("--tasks", type=int, default=200, help="tasks a side a round")
    parser.add_argument("--concurrency", type=int, default=25, help="tasks in flight at once")
    parser.add_argument(
        "--warm-up", type=int, help="tasks run first and not counted (default: --concurrency)"
    )
    args = parser.parse_args()
    warm_up = args.concurrency if args.warm_up is None else args.warm_up

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    sides = {"the app": "asgi:app", "bare relay": "bare_relay:app"}
    pooled: dict[str, tuple[Latencies, Latencies]] = {label: ({}, {}) for label in sides}
    for turn in range(-1, args.rounds):  # round 0 warms the machine up, and is not counted
        order = list(sides) if turn % 2 == 0 else list(reversed(sides))
        medians = {}
        for label in order:
            warming, results = run_round(
                sides[label], redis_url, args.tasks, args.concurrency, warm_up
            )
            if turn >= 0:
                for kept, new in zip(pooled[label], (warming, results), strict=True):
                    for client, latencies in new.items():
                        kept.setdefault(client, []).extend(latencies)
            medians[label] = median(results[PUSH]), median(results[FLOOR])
        (app, app_floor), (relay, relay_floor) = medians["the app"], medians["bare relay"]
        print(
            f"round {turn + 1}{' (not counted)' if turn < 0 else ''} "
            f"({' first, then '.join(order)}): websocket p50 the app "
            f"{app:.1f} ms, the bare relay {relay:.1f} ms, ratio {app / relay:.2f} "
            f"(the floor's: {app_floor:.1f} and {relay_floor:.1f} ms)"
        )
    ratios, pushes = {}, {}
    for label, server in sides.items():
        print(f"{label} (hypercorn {server}), {args.rounds} rounds:")
        warming, results = pooled[label]
        if warming.get(PUSH):
            print(
                f"  warm-up, not counted:  websocket p50 {median(warming[PUSH]):.1f} ms, "
                f"max {max(warming[PUSH]):.1f} ms ({len(warming[PUSH])} tasks)"
            )
        for client, latencies in results.items():
            latencies.sort()
            print(
                f"  {client:22} p50 {percentile(latencies, 50):6.1f} ms   "
                f"p99 {percentile(latencies, 99):6.1f} ms   ({len(latencies)} tasks)"
            )
        floor, pushed = (percentile(results[c], 50) for c in (FLOOR, PUSH))
        ratios[label] = pushed / floor
        pushes[label] = [percentile(results[PUSH], n) for n in (50, 99)]
    print(
        f"websocket p50 / floor p50: the app {ratios['the app']:.2f}, "
        f"the bare relay {ratios['bare relay']:.2f}"
    )
    (app_p50, app_p99), (relay_p50, relay_p99) = pushes.values()
    print(
        f"websocket, the app ÷ the bare relay: p50 {app_p50 / relay_p50:.2f}, "
        f"p99 {app_p99 / relay_p99:.2f}"
    )


Latencies = dict[str, list[float]]


def run_round(
    server: str, redis_url: str, tasks: int, concurrency: int, warm_up: int
) -> tuple[Latencies, Latencies]:
    """One hypercorn serving `server` and one worker, fresh, on a flushed database: the
    latencies of the warm-up, then those of the tasks measured."""
    env = {**os.environ, "REDIS_URL": redis_url, "SECRET_KEY": "bench"}
    # The bare relay is found in this directory, the project's app at the root.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent)])
    flush(redis_url)
    port = free_port()
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "hypercorn", server, "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "WARNING"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_until_serving(port)

        async def warm_then_measure() -> tuple[Latencies, Latencies]:
            warming: Latencies = {PUSH: []}
            if warm_up:
                warming = await measure(port, redis_url, warm_up, concurrency)
            return warming, await measure(port, redis_url, tasks, concurrency)

        return asyncio.run(warm_then_measure())
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(30)
        flush(redis_url)


async def measure(port: int, redis_url: str, tasks: int, concurrency: int) -> Latencies:
    """Run `tasks` tasks, `concurrency` at a time; each client's latencies, in ms."""
    pushed: list[float] = []
    polled: list[float] = []
    store = redis.Redis.from_url(redis_url)
    slots = asyncio.Semaphore(concurrency)
    floor = await Subscriber.listening(redis_url)

    async def one() -> None:
        async with slots:
            accepted = await post(
                port, {"name": "async_task", "kwargs": {"message": "x", "delay": 0.3}}
            )
            task_id = accepted["id"]
            socket = await record(f"ws://127.0.0.1:{port}/ws/tasks/{task_id}")
            await socket.first_message
            polled_at = await poll_until_final(port, task_id)
            await socket.closed
            messages = [(came, json.loads(text)) for came, text in socket.messages()]
            assert socket.close_code == 1000, socket.close_code
            assert messages[0][1]["state"] not in FINAL, "the task ended before it was watched"
            pushed_at = next(came for came, message in messages if message["state"] in FINAL)
            stored = json.loads(store.get(f"{CHANNEL}{task_id}") or b"{}")
            done = datetime.fromisoformat(stored["date_done"]).timestamp()
            pushed.append((pushed_at - done) * 1000)
            polled.append((polled_at - done) * 1000)

    await asyncio.gather(*(one() for _ in range(tasks)))
    heard = floor.finals()
    floor.transport.close()
    dones = {
        task_id: datetime.fromisoformat(json.loads(meta or b"{}")["date_done"]).timestamp()
        for task_id, meta in zip(heard, store.mget([f"{CHANNEL}{t}" for t in heard]), strict=True)
    }
    store.close()
    return {
        FLOOR: [(heard[t] - done) * 1000 for t, done in dones.items()],
        PUSH: pushed,
        "polling every 100 ms": polled,
    }


class Subscriber(asyncio.Protocol):
    """The floor: a Redis pub/sub connection that hears every result publish, noting when
    each read came and reading the messages once the run is over.

    Written by hand, as `streams.Recorder` is: redis-py reads each message as it comes, in
    coroutines of the event loop the sockets measured share, and the floor would count its
    turns of that loop.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        #: Each read: when it came, and how much had come once it had.
        self.reads: list[tuple[float, int]] = []
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def listening(cls, redis_url: str) -> Subscriber:
        """A subscriber to every task's channel, subscribed before any task runs."""
        address = urlsplit(redis_url)
        _, subscriber = await asyncio.get_running_loop().create_connection(
            cls, address.hostname or "127.0.0.1", address.port or 6379
        )
        await subscriber.subscribed
        return subscriber

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        pattern = f"{CHANNEL}*"
        command = f"*2\r\n$10\r\nPSUBSCRIBE\r\n${len(pattern)}\r\n{pattern}\r\n"
        transport.write(command.encode())  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.reads.append((time.time(), len(self.data)))
        if not self.subscribed.done():  # the first reply is the subscription's
            self.subscribed.set_result(None)

    def finals(self) -> dict[str, float]:
        """When each task's final state came, by its id."""
        heard: dict[str, float] = {}
        read = 0
        for end, message in _replies(bytes(self.data)):
            while self.reads[read][1] < end:
                read += 1
            if message[0] == b"pmessage" and json.loads(message[3])["status"] in FINAL:
                heard[message[2].decode().removeprefix(CHANNEL)] = self.reads[read][0]
        return heard


def _replies(data: bytes) -> list[tuple[int, list[bytes]]]:
    """Redis's replies on a subscription (arrays of bulk strings and integers), each with
    where it ends in `data`."""
    replies: list[tuple[int, list[bytes]]] = []
    at = 0
    while at < len(data):
        line = data.index(b"\r\n", at)
        assert data[at : at + 1] == b"*", data[at : at + 20]
        count, at = int(data[at + 1 : line]), line + 2
        items: list[bytes] = []
        for _ in range(count):
            line = data.index(b"\r\n", at)
            kind, value = data[at : at + 1], data[at + 1 : line]
            if kind == b"$":
                items.append(data[line + 2 : line + 2 + int(value)])
                at = line + 2 + int(value) + 2
            else:  # an integer: how many channels are subscribed to
                items.append(value)
                at = line + 2
        replies.append((at, items))
    return replies


async def poll_until_final(port: int, task_id: str) -> float:
    """Poll the task every 100 ms, beginning at a moment drawn at random within the first 100
    ms; the time its final state was first seen.

    Each task takes three intervals: polls that began as the socket's first message came, and
    followed each other 100 ms after each answer, came in bursts, a wave's 25 at once, at a
    moment before its tasks ended that differed between the app and the bare relay (whose
    first message comes sooner) and between rounds. The polling p50 was 70 ms for the app
    and 45 ms for the relay, where a poll at a random moment takes 50 on average.
    """
    loop = asyncio.get_running_loop()
    start, polls = loop.time() + random.uniform(0, POLL_INTERVAL), 0
    while True:
        await asyncio.sleep(max(0.0, start + polls * POLL_INTERVAL - loop.time()))
        polls += 1
        if (await get(port, f"/api/tasks/{task_id}"))["state"] in FINAL:
            return time.time()


async def post(port: int, body: dict[str, object]) -> dict[str, str]:
    """POST JSON; the JSON answer."""
    return await request(port, "POST", "/api/tasks", json.dumps(body).encode())


async def get(port: int, path: str) -> dict[str, str]:
    """GET; the JSON answer."""
    return await request(port, "GET", path, b"")


async def request(port: int, method: str, path: str, body: bytes) -> dict[str, str]:
    """One HTTP/1.1 request on its own connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    writer.write(head.encode() + b"\r\n" + body)
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    answer: dict[str, str] = json.loads(response.split(b"\r\n\r\n", 1)[1])
    return answer


if __name__ == "__main__":
    main()

"""A group followed as one: one `POST /api/workflows` and one socket, against the same tasks sent
one by one with `POST /api/tasks` and followed on `/ws/tasks`.

    .venv/bin/python bench/workflows.py [--members 1000] [--rounds 2]

One `hypercorn asgi:app` and one worker (`celery -A worker worker`, its default pool), fresh,
on a flushed database. In each round, in turn:

- **workflow**: `POST /api/workflows` with a group of `members` `square` tasks, then
  `/ws/workflows/<id>` read to its final message;
- **tasks**: `/ws/tasks` opened, then each of the same `members` tasks sent with
  `POST /api/tasks` on one kept-alive connection and subscribed to as it is accepted, and the
  socket read until every task has ended.

Reported for each: seconds from the (first) POST's answer to the last final message.

Then what an update costs the server, the same `members` tasks sent both ways while no worker
runs, each followed (one socket for the workflow; `/ws/tasks` subscribed to every task) until
every snapshot is in; a worker then starts, and the server process's CPU seconds from then
until the last final message, per state change received (`STARTED` and `SUCCESS` of each task,
as a member update or as a task's snapshot). Uses the Redis at REDIS_URL (default
redis://127.0.0.1:6379/0), database 15, flushed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit import cpu_seconds, flush, free_port, serving_process, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
FINAL = ("SUCCESS", "FAILURE", "REVOKED")
#: Task ids in one subscription: a message may be 16 KiB (WS_MAX_MESSAGE_SIZE).
SUBSCRIBED_AT_ONCE = 300


def main() -> None:
    """Run the rounds; print each way's time and CPU per message, and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    env = {**os.environ, "REDIS_URL": redis_url, "SECRET_KEY": "bench"}
    flush(redis_url)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    worker = start_worker(env)
    try:
        wait_until_serving(port)
        pid = serving_process(server.pid)
        for number in range(1, args.rounds + 1):
            workflow = asyncio.run(as_a_workflow(port, args.members))
            tasks = asyncio.run(one_by_one(port, args.members))
            print(f"round {number}, {args.members} square tasks:")
            for label, seconds in (("workflow", workflow), ("tasks", tasks)):
                print(f"  {label:8} {seconds:6.2f} s from the answer to the last final message")
            print(f"  workflow / tasks: {workflow / tasks:.2f}")
        worker.terminate()
        worker.wait(30)
        for number in range(1, args.rounds + 1):
            costs = {}
            for label, follow in (("workflow", follow_a_workflow), ("tasks", follow_tasks)):
                updates, cpu = asyncio.run(update_cost(follow, port, pid, env, args.members))
                costs[label] = cpu / updates
                print(
                    f"update cost, round {number}, {label:8}: server "
                    f"{1e6 * costs[label]:6.1f} CPU µs per update ({updates} updates)"
                )
            print(f"  workflow / tasks: {costs['workflow'] / costs['tasks']:.2f}")
    finally:
        for process in (worker, server):
            process.terminate()
            process.wait(30)
        flush(redis_url)


async def as_a_workflow(port: int, members: int) -> float:
    """One group of `members`, followed on its socket: seconds from the answer to its end."""
    body = {"group": [{"name": "square", "kwargs": {"x": x}} for x in range(members)]}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        accepted = await post(reader, writer, "/api/workflows", body)
    finally:
        writer.close()
    answered = time.perf_counter()
    async with websockets.connect(
        f"ws://127.0.0.1:{port}{accepted['websocket']}", compression=None, max_size=None
    ) as socket:
        async for raw in socket:
            if json.loads(raw)["state"] in FINAL:
                break
    ended = time.perf_counter()
    assert json.loads(raw)["result"] == [x * x for x in range(members)], "results, in order"
    return ended - answered


async def one_by_one(port: int, members: int) -> float:
    """`members` tasks, each sent and subscribed to on one socket: seconds from the first
    answer to the last task's end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    open_tasks: set[str] = set()
    answered = 0.0
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ws/tasks", compression=None, max_size=None
    ) as socket:

        async def read_until_all_ended() -> None:
            async for raw in socket:
                message = json.loads(raw)
                if message.get("state") in FINAL:
                    open_tasks.discard(message["id"])
                    if not open_tasks and sent.is_set():
                        return

        sent = asyncio.Event()
        reading = asyncio.create_task(read_until_all_ended())
        try:
            for x in range(members):
                accepted = await post(
                    reader, writer, "/api/tasks", {"name": "square", "kwargs": {"x": x}}
                )
                if x == 0:
                    answered = time.perf_counter()
                open_tasks.add(accepted["id"])
                await socket.send(json.dumps({"subscribe": [accepted["id"]]}))
            sent.set()
            if open_tasks:  # else every one ended already
                await reading
        finally:
            reading.cancel()
            writer.close()
    return time.perf_counter() - answered


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`celery -A worker worker`, its default pool."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "WARNING"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def update_cost(
    follow: Any, port: int, pid: int, env: dict[str, str], members: int
) -> tuple[int, float]:
    """Follow tasks sent while no worker runs, then start one: the updates received until the
    last task ended, and the server's CPU seconds meanwhile."""
    following: Following = await follow(port, members)
    worker = start_worker(env)
    try:
        cpu = cpu_seconds(pid)
        updates = await following.finish()
        return updates, cpu_seconds(pid) - cpu
    finally:
        worker.terminate()
        worker.wait(30)


class Following:
    """Sockets following tasks not yet run: `finish()` reads on until every one has ended,
    and counts the state changes received meanwhile."""

    def __init__(self, sockets: list[websockets.ClientConnection], open_ids: set[str]) -> None:
        self.sockets = sockets
        self.open_ids = open_ids

    async def finish(self) -> int:
        updates = 0
        socket = self.sockets[0]
        try:
            async for raw in socket:
                message = json.loads(raw)
                updates += 1
                task = message.get("task", message)  # a member update, or a task's snapshot
                if task.get("state") in FINAL:
                    self.open_ids.discard(task["id"])
                if not self.open_ids:
                    return updates
        finally:
            await socket.close()
        raise RuntimeError("the socket closed early")


async def follow_a_workflow(port: int, members: int) -> Following:
    """A group sent while no worker runs, its socket past the snapshot."""
    body = {"group": [{"name": "square", "kwargs": {"x": x}} for x in range(members)]}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    accepted = await post(reader, writer, "/api/workflows", body)
    writer.close()
    socket = await websockets.connect(
        f"ws://127.0.0.1:{port}{accepted['websocket']}", compression=None, max_size=None
    )
    await socket.recv()  # the snapshot
    return Following([socket], {task["id"] for task in accepted["tasks"]})


async def follow_tasks(port: int, members: int) -> Following:
    """`members` tasks sent while no worker runs, `/ws/tasks` subscribed to each, past the
    snapshots."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    ids = [
        (await post(reader, writer, "/api/tasks", {"name": "square", "kwargs": {"x": x}}))["id"]
        for x in range(members)
    ]
    writer.close()
    socket = await websockets.connect(
        f"ws://127.0.0.1:{port}/ws/tasks", compression=None, max_size=None
    )
    for start in range(0, members, SUBSCRIBED_AT_ONCE):
        await socket.send(json.dumps({"subscribe": ids[start : start + SUBSCRIBED_AT_ONCE]}))
    for _ in ids:
        await socket.recv()  # each PENDING snapshot
    return Following([socket], set(ids))


async def post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: object
) -> dict[str, Any]:
    """POST JSON on a kept-alive HTTP/1.1 connection; the JSON answer (202 expected)."""
    data = json.dumps(body).encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    answer: dict[str, Any] = json.loads(await reader.readexactly(length))
    assert status == b"202", answer
    return answer


if __name__ == "__main__":
    main()

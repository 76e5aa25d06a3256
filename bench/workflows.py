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

Reported for each: seconds from the (first) POST's answer to the last final message; the
server process's CPU seconds from then on, per message the client received (a member update,
the workflow's; a task's state, the tasks'). Uses the Redis at REDIS_URL (default
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
from urllib.parse import urlsplit, urlunsplit

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout import cpu_seconds
from submit import flush, free_port, wait_until_serving
from waiters import serving_process

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
FINAL = ("SUCCESS", "FAILURE", "REVOKED")


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
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "WARNING"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(port)
        pid = serving_process(server.pid)
        for number in range(1, args.rounds + 1):
            workflow = asyncio.run(as_a_workflow(port, pid, args.members))
            tasks = asyncio.run(one_by_one(port, pid, args.members))
            print(f"round {number}, {args.members} square tasks:")
            for label, (seconds, cpu, messages) in (("workflow", workflow), ("tasks", tasks)):
                print(
                    f"  {label:8} {seconds:6.2f} s from the answer to the last final message; "
                    f"server {1e6 * cpu / messages:6.1f} CPU µs per message ({messages} messages)"
                )
            print(
                f"  workflow / tasks: time {workflow[0] / tasks[0]:.2f}, "
                f"CPU per message {(workflow[1] / workflow[2]) / (tasks[1] / tasks[2]):.2f}"
            )
    finally:
        for process in (worker, server):
            process.terminate()
            process.wait(30)
        flush(redis_url)


async def as_a_workflow(port: int, pid: int, members: int) -> tuple[float, float, int]:
    """One group of `members`, followed on its socket: seconds, server CPU, messages."""
    body = {"group": [{"name": "square", "kwargs": {"x": x}} for x in range(members)]}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        accepted = await post(reader, writer, "/api/workflows", body)
    finally:
        writer.close()
    answered, cpu = time.perf_counter(), cpu_seconds(pid)
    messages = 0
    async with websockets.connect(
        f"ws://127.0.0.1:{port}{accepted['websocket']}", compression=None, max_size=None
    ) as socket:
        async for raw in socket:
            messages += 1
            if json.loads(raw)["state"] in FINAL:
                break
    result = json.loads(raw)["result"]
    assert result == [x * x for x in range(members)], "the group's results, in order"
    return time.perf_counter() - answered, cpu_seconds(pid) - cpu, messages


async def one_by_one(port: int, pid: int, members: int) -> tuple[float, float, int]:
    """`members` tasks, each sent and subscribed to on one socket: seconds, CPU, messages."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    open_tasks: set[str] = set()
    messages = 0
    answered = cpu = 0.0
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ws/tasks", compression=None, max_size=None
    ) as socket:

        async def read_until_all_ended() -> None:
            nonlocal messages
            async for raw in socket:
                message = json.loads(raw)
                messages += 1
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
                    answered, cpu = time.perf_counter(), cpu_seconds(pid)
                open_tasks.add(accepted["id"])
                await socket.send(json.dumps({"subscribe": [accepted["id"]]}))
            sent.set()
            if open_tasks:  # else every one ended already
                await reading
        finally:
            reading.cancel()
            writer.close()
    return time.perf_counter() - answered, cpu_seconds(pid) - cpu, messages


async def post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: object
) -> dict[str, str]:
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
    answer: dict[str, str] = json.loads(await reader.readexactly(length))
    assert status == b"202", answer
    return answer


if __name__ == "__main__":
    main()

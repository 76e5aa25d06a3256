"""Look-ups under a burst: `GET /api/tasks/<id>` while 1,000 websockets connect at once.

    .venv/bin/python bench/lookups.py [--sockets 1000] [--rounds 3] [--load 20]

One `hypercorn asgi:app`, no worker. Each round accepts one `simple_task` per socket and one
more, the probe; then every socket connects at once (declining compression) and reads its
task's snapshot, from a process of its own, while this process asks for the probe over and
over on a keep-alive connection (the sockets' own event loop would delay the answers' reading).
Reported per round: the `GET`s' latencies while the sockets connected (p50, p99, max), and how
long it took until every socket had its snapshot. With `--load SECONDS`, each round comes right
after that long a submit load (`POST /api/tasks` from 16 keep-alive connections, as fast as the
server answers): a server that has just been busy, not only a fresh one. Uses the Redis at
REDIS_URL (default redis://127.0.0.1:6379/0), database 15, flushed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit import flush, percentile
from waiters import serving

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below


def main() -> None:
    """Run the rounds and print a line for each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load", type=float, default=0.0, help="seconds of submit load first")
    args = parser.parse_args()

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    flush(redis_url)
    try:
        with serving(redis_url, WS_MAX_SOCKETS=str(2 * args.sockets)) as (port, _):
            asyncio.run(measure(port, args.sockets))  # warm up: first uses, memory
            for round_ in range(1, args.rounds + 1):
                if args.load:
                    submitted = asyncio.run(load(port, args.load))
                    print(f"round {round_}: {submitted} tasks submitted in {args.load:g} s")
                latencies, burst = asyncio.run(measure(port, args.sockets))
                latencies.sort()
                print(
                    f"round {round_}: {len(latencies)} GETs while {args.sockets} sockets "
                    f"connected ({burst:.2f} s): p50 {percentile(latencies, 50):.1f} ms, "
                    f"p99 {percentile(latencies, 99):.1f} ms, max {latencies[-1]:.1f} ms",
                    flush=True,
                )
    finally:
        flush(redis_url)


async def load(port: int, seconds: float) -> int:
    """Submit `simple_task`s from 16 connections for `seconds`; how many were accepted."""
    deadline = time.monotonic() + seconds

    async def one_connection() -> int:
        accepted = 0
        while time.monotonic() < deadline:
            accepted += len(await submit(port, min(PER_CONNECTION, 50)))
        return accepted

    return sum(await asyncio.gather(*(one_connection() for _ in range(16))))


#: Requests on one connection before another is opened: hypercorn closes a connection after
#: 1,000 (its `keep_alive_max_requests`).
PER_CONNECTION = 500


async def measure(port: int, sockets: int) -> tuple[list[float], float]:
    """Accept the tasks, then connect every socket at once while the probe is asked for."""
    shares = [list(range(start, sockets + 1, 20)) for start in range(20)]
    task_ids = [
        t for ids in await asyncio.gather(*(submit(port, len(s)) for s in shares)) for t in ids
    ]
    probe, task_ids = task_ids[0], task_ids[1:]
    connected = asyncio.Event()
    latencies: list[float] = []

    async def ask_for_the_probe() -> None:
        request = f"GET /api/tasks/{probe} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        while not connected.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(PER_CONNECTION):
                if connected.is_set():
                    break
                started = time.perf_counter()
                writer.write(request)
                status, _ = await response(reader)
                assert status == 200, status
                latencies.append((time.perf_counter() - started) * 1000)
            writer.close()
            await writer.wait_closed()

    asking = asyncio.create_task(ask_for_the_probe())
    results: multiprocessing.Queue[float] = multiprocessing.Queue()
    bursting = multiprocessing.Process(target=burst, args=(port, task_ids, results))
    bursting.start()
    seconds = await asyncio.get_running_loop().run_in_executor(None, results.get)
    connected.set()
    await asking
    bursting.join()
    return latencies, seconds


def burst(port: int, task_ids: list[str], results: multiprocessing.Queue[float]) -> None:
    """Connect a socket to each task at once; report how long until all had their snapshot."""

    async def connect_all() -> float:
        started = time.perf_counter()
        opened = await asyncio.gather(*(snapshot_over_a_socket(port, t) for t in task_ids))
        seconds = time.perf_counter() - started
        for socket in opened:
            await socket.close()
        return seconds

    results.put(asyncio.run(connect_all()))


async def snapshot_over_a_socket(port: int, task_id: str) -> websockets.ClientConnection:
    """A socket following the task, once its snapshot is in."""
    url = f"ws://127.0.0.1:{port}/ws/tasks/{task_id}"
    socket = await websockets.connect(url, compression=None, open_timeout=120)
    assert json.loads(await socket.recv())["state"] == "PENDING"
    return socket


async def submit(port: int, count: int) -> list[str]:
    """POST `count` simple_tasks on one connection; their ids."""
    body = json.dumps({"name": "simple_task", "kwargs": {"message": "x"}}).encode()
    request = (
        b"POST /api/tasks HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    task_ids = []
    for _ in range(count):
        writer.write(request)
        status, answer = await response(reader)
        assert status == 202, answer
        task_ids.append(answer["id"])
    writer.close()
    await writer.wait_closed()
    return task_ids


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The next response on the connection: its status and JSON body."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    answer: dict[str, str] = json.loads(await reader.readexactly(length))
    return status, answer


if __name__ == "__main__":
    main()

"""Concurrent waiters: many websockets on one `hypercorn asgi:app`, each waiting on its own task,
against a bare ASGI app under the same hypercorn whose sockets only stay open.

    .venv/bin/python bench/waiters.py [--waiters 10000] [--deflate 1000]

For `waiters` sockets, clients declining compression, a fresh server of the app:

1. takes one request of each kind, so that its pools exist (the baseline),
2. accepts one `simple_task` per waiter while no worker runs, and gets a websocket per task,
   each of which receives its PENDING snapshot (memory is read here),
3. then a worker starts, and every socket waits for its SUCCESS.

Then a fresh `hypercorn bare_asgi:app` (bench/bare_asgi.py) gets as many sockets, which it only
holds open: what hypercorn itself spends on a socket. Reported: the server's thread count
(baseline and peak, sampled every 10 ms), its memory (RSS) growth per socket, the bare app's,
and the difference, the app's own; how many results were delivered, and the time from the
last task's completion (its stored `date_done`) to the last delivery. Then the same for
`deflate` sockets with permessage-deflate and without, the app alone: what compression adds
(hypercorn accepts it whenever a client offers it, as browsers do, and cannot be told not
to). Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0), database 15, flushed before
and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import get, post
from submit import flush, free_port, serving_process, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
SAMPLE_INTERVAL = 0.01
#: Sockets connecting at the same moment: more would overrun the server's listen backlog, and
#: the kernel would have them try again a second later.
CONNECTING_AT_ONCE = 200
Compression = Literal["deflate"] | None
T = TypeVar("T")


@dataclass
class Round:
    """What one server of the app did for one number of waiters."""

    waiters: int
    compression: Compression
    baseline_threads: int
    peak_threads: int
    baseline_rss: int
    submitted_rss: int
    waiting_rss: int
    delivered: int
    last_delivery_after_last_completion: float

    @property
    def per_socket(self) -> float:
        """Memory per waiting socket, in KiB: from all tasks accepted to all sockets waiting."""
        return (self.waiting_rss - self.submitted_rss) / self.waiters / 1024

    def __str__(self) -> str:
        return (
            f"{self.waiters:6} waiters  {self.compression or 'none':7}  "
            f"threads {self.baseline_threads:2} -> peak {self.peak_threads:2}  "
            f"RSS per socket +{self.per_socket:5.1f} KiB  "
            f"delivered {self.delivered}/{self.waiters}  "
            f"last completion -> last delivery {self.last_delivery_after_last_completion:6.1f} ms"
        )


def main() -> None:
    """Run the rounds and print a line for each, and the app's own memory per socket."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--deflate", type=int, default=1000, help="sockets, with and without")
    args = parser.parse_args()

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    app = fresh(run_round, redis_url, args.waiters, None)
    print(app, flush=True)
    bare = fresh(run_bare_round, redis_url, args.waiters)
    print(
        f"{args.waiters:6} sockets  bare ASGI app under the same hypercorn: "
        f"RSS per socket +{bare:5.1f} KiB\n"
        f"  the app's own memory per waiting socket: {app.per_socket - bare:5.1f} KiB",
        flush=True,
    )
    if args.deflate:
        plain, deflated = (fresh(run_round, redis_url, args.deflate, c) for c in (None, "deflate"))
        print(plain, deflated, sep="\n")
        print(
            f"  permessage-deflate adds {deflated.per_socket - plain.per_socket:5.1f} KiB "
            "per socket (hypercorn's zlib state)"
        )


def fresh(run: Callable[..., T], redis_url: str, *arguments: object) -> T:
    """A round on a flushed database, flushed again after."""
    flush(redis_url)
    try:
        return run(redis_url, *arguments)
    finally:
        flush(redis_url)


def run_round(redis_url: str, waiters: int, compression: Compression) -> Round:
    """One fresh server and `waiters` sockets; a worker joins once they all wait."""
    env = {**os.environ, "REDIS_URL": redis_url, "SECRET_KEY": "bench"}
    env["WS_MAX_SOCKETS"] = str(waiters + 100)
    port = free_port()
    with started(
        [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"], env
    ) as server:
        wait_until_serving(port)
        pid = serving_process(server.pid)
        with Sampler(pid) as sampler:
            asyncio.run(warm_up(port))
            baseline_threads, baseline_rss = threads_and_rss(pid)
            waiting = asyncio.run(wait_on_tasks(port, waiters, compression, pid, env))
        completions = stored_completions(redis_url, list(waiting.deliveries))
        return Round(
            waiters=waiters,
            compression=compression,
            baseline_threads=baseline_threads,
            peak_threads=sampler.peak_threads,
            baseline_rss=baseline_rss,
            submitted_rss=waiting.submitted_rss,
            waiting_rss=waiting.waiting_rss,
            delivered=len([t for t in waiting.deliveries.values() if t is not None]),
            last_delivery_after_last_completion=(
                max(t or 0.0 for t in waiting.deliveries.values()) - max(completions)
            )
            * 1000,
        )


def run_bare_round(redis_url: str, sockets: int) -> float:
    """The bare ASGI app's memory per open socket, in KiB, under the same hypercorn."""
    port = free_port()
    command = [sys.executable, "-m", "hypercorn", "bare_asgi:app", "--bind", f"127.0.0.1:{port}"]
    with started(command, dict(os.environ), cwd=Path(__file__).resolve().parent) as server:
        wait_until_serving(port)
        pid = serving_process(server.pid)
        _, before = threads_and_rss(pid)

        async def hold_open() -> int:
            all_open = asyncio.Barrier(sockets + 1)
            connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)

            async def hold() -> None:
                async with connecting:
                    socket = await websockets.connect(
                        f"ws://127.0.0.1:{port}/", compression=None, open_timeout=120
                    )
                async with socket:
                    await all_open.wait()
                    await all_open.wait()

            holding = [asyncio.create_task(hold()) for _ in range(sockets)]
            await all_open.wait()
            _, during = threads_and_rss(pid)
            await all_open.wait()
            await asyncio.gather(*holding)
            return during

        during = asyncio.run(hold_open())
    return (during - before) / sockets / 1024


@dataclass
class Waiting:
    """The server's RSS once every task was accepted and once every socket waited, and when
    each task's SUCCESS arrived."""

    submitted_rss: int
    waiting_rss: int
    deliveries: dict[str, float | None]


async def warm_up(port: int) -> None:
    """One submission, look-up and websocket, so that the server's pools and clients exist."""
    accepted = await post(port, {"name": "simple_task", "kwargs": {"message": "warm"}})
    await get(port, f"/api/tasks/{accepted['id']}")
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/tasks/{accepted['id']}") as socket:
        await socket.recv()


async def wait_on_tasks(
    port: int, waiters: int, compression: Compression, pid: int, env: dict[str, str]
) -> Waiting:
    """Open a socket per task, read memory once all wait, then start a worker and wait."""
    submitting = asyncio.Semaphore(50)
    connecting = asyncio.Semaphore(CONNECTING_AT_ONCE)

    async def submit() -> str:
        async with submitting:
            accepted = await post(port, {"name": "simple_task", "kwargs": {"message": "x"}})
            return accepted["id"]

    task_ids = await asyncio.gather(*(submit() for _ in range(waiters)))
    _, submitted_rss = threads_and_rss(pid)
    deliveries: dict[str, float | None] = dict.fromkeys(task_ids)
    all_waiting = asyncio.Barrier(waiters + 1)

    async def wait(task_id: str) -> None:
        url = f"ws://127.0.0.1:{port}/ws/tasks/{task_id}"
        async with connecting:
            socket = await websockets.connect(url, compression=compression, open_timeout=120)
            assert json.loads(await socket.recv())["state"] == "PENDING"
        async with socket:
            await all_waiting.wait()
            async for message in socket:
                if json.loads(message)["state"] == "SUCCESS":
                    deliveries[task_id] = time.time()

    waiting = [asyncio.create_task(wait(task_id)) for task_id in task_ids]
    await all_waiting.wait()
    _, waiting_rss = threads_and_rss(pid)
    worker = [sys.executable, "-m", "celery", "-A", "worker", "worker", "--loglevel", "WARNING"]
    with started(worker, env):
        await asyncio.wait_for(asyncio.gather(*waiting), 300)
    return Waiting(submitted_rss, waiting_rss, deliveries)


def stored_completions(redis_url: str, task_ids: list[str]) -> list[float]:
    """When the worker stored each task's final state (its `date_done`), as Unix times."""
    store = redis.Redis.from_url(redis_url)
    try:
        metas = store.mget([f"celery-task-meta-{task_id}" for task_id in task_ids])
    finally:
        store.close()
    return [
        datetime.fromisoformat(json.loads(meta or b"{}")["date_done"]).timestamp() for meta in metas
    ]


@contextmanager
def started(
    command: list[str], env: dict[str, str], cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """A process for the length of the block; stopped gracefully after."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield process
    finally:
        process.terminate()
        process.wait(60)


@contextmanager
def serving(
    redis_url: str, server_app: str = "asgi:app", **settings: str
) -> Iterator[tuple[int, int]]:
    """`hypercorn <server_app>` (the project's app, or one of this directory's) on a free port,
    with more `settings` in its environment: the port, and the pid of its serving process."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "SECRET_KEY": "bench", **settings}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent)])
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", server_app, "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(port)
        yield port, serving_process(server.pid)
    finally:
        server.terminate()
        server.wait(30)


def threads_and_rss(pid: int) -> tuple[int, int]:
    """The process's thread count and resident memory in bytes, from /proc."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) * 1024


class Sampler:
    """Reads the server's thread count every 10 ms in a thread of its own; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_threads = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.thread.join()

    def sample(self) -> None:
        while not self.stopping.wait(SAMPLE_INTERVAL):
            self.peak_threads = max(self.peak_threads, threads_and_rss(self.pid)[0])


if __name__ == "__main__":
    main()

"""Submit throughput: POST /api/tasks through one `hypercorn asgi:app` process, against the same
server's empty endpoint (GET /healthz) and a plain loop of `simple_task.delay()` in one
process, measured in the same run.

Two plain loops are measured: one with stock Celery (its own Redis transport and result
backend, default settings) and one with this project's configured Celery, which publishes
faster (see quart_celery/_broker/transport.py and quart_celery/_broker/backends.py).

    .venv/bin/python bench/submit.py [--requests 6000] [--connections 50] [--rounds 3]
    .venv/bin/python bench/submit.py --profile profile.svg   # py-spy the server under load

Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0), database 15, flushed before
and after. No worker runs: the tasks only pile up in the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below


def main() -> None:
    """Run the rounds and print the rates and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=6000, help="HTTP requests per round")
    parser.add_argument("--delays", type=int, default=3000, help="delay() calls per round")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", help="record a py-spy flame graph of the server to this file")
    args = parser.parse_args()

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("SECRET_KEY", "bench")
    from factories.application import create_application
    from quart_app.extensions import celery
    from quart_app.tasks import simple_task

    create_application()
    stock_task = stock_celery_task(redis_url)
    flush(redis_url)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "asgi:app", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_serving(port)
        asyncio.run(load(port, SUBMIT, 200, args.connections))  # warm up
        asyncio.run(load(port, HEALTHZ, 200, args.connections))
        stock_rates, raw_rates, http_rates, healthz_rates, latencies = [], [], [], [], []
        for round_ in range(1, args.rounds + 1):
            stock_rates.append(delay_rate(stock_task, args.delays))
            raw_rates.append(delay_rate(simple_task, args.delays))
            if args.profile and round_ == args.rounds:
                profiler = start_profiler(server.pid, args.profile)
            healthz_rate, rate, round_latencies = asyncio.run(
                alternating(port, args.requests, args.connections)
            )
            if args.profile and round_ == args.rounds:
                profiler.wait()
            healthz_rates.append(healthz_rate)
            http_rates.append(rate)
            latencies += round_latencies
            print(
                f"round {round_}: stock delay() {stock_rates[-1]:5.0f}/s   "
                f"configured delay() {raw_rates[-1]:5.0f}/s   "
                f"GET /healthz {healthz_rates[-1]:5.0f}/s   POST /api/tasks {rate:5.0f}/s"
            )
        stock, raw = statistics.median(stock_rates), statistics.median(raw_rates)
        http, healthz = statistics.median(http_rates), statistics.median(healthz_rates)
        latencies.sort()
        print("\nmedians:")
        print(f"  delay() loop, stock Celery:          {stock:6.0f} tasks/s")
        print(f"  delay() loop, this project's Celery: {raw:6.0f} tasks/s")
        print(f"  GET /healthz, {args.connections} connections:      {healthz:6.0f} requests/s")
        print(f"  POST /api/tasks, {args.connections} connections:   {http:6.0f} requests/s")
        # Each round's POST and GET took turns, so they met the same speed of the machine: the
        # median of the rounds' ratios, rather than a ratio of medians taken at other times.
        ratio = statistics.median(p / h for p, h in zip(http_rates, healthz_rates, strict=True))
        print(f"  ratio POST / GET /healthz:           {ratio:6.2f} (median of the rounds')")
        print(f"  ratio POST / stock Celery loop:      {http / stock:6.2f}")
        print(f"  ratio POST / configured loop:        {http / raw:6.2f}")
        print(
            f"HTTP latency: p50 {percentile(latencies, 50):.1f} ms, "
            f"p99 {percentile(latencies, 99):.1f} ms"
        )
    finally:
        server.terminate()
        server.wait(20)
        celery.close()
        flush(redis_url)


def stock_celery_task(redis_url: str) -> object:
    """`simple_task` on a Celery app with stock settings: the raw Celery baseline."""
    from celery import Celery

    stock = Celery("stock", broker=redis_url, backend=redis_url, set_as_current=False)
    stock.conf.broker_connection_retry_on_startup = True

    @stock.task(name="simple_task")
    def simple_task(message: str) -> str:
        return message

    return simple_task


def delay_rate(task: object, count: int) -> float:
    """Tasks per second of a plain `task.delay()` loop."""
    delay = task.delay  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(count):
        delay("bench")
    return count / (time.perf_counter() - started)


_BODY = json.dumps({"name": "simple_task", "kwargs": {"message": "bench"}}).encode()
#: The two requests measured: a submission, and the server's empty endpoint (the baseline).
SUBMIT = (
    202,
    b"POST /api/tasks HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY),
)
HEALTHZ = (200, b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")


async def alternating(
    port: int, count: int, connections: int, chunks: int = 16
) -> tuple[float, float, list[float]]:
    """`count` requests of each kind, GET /healthz and POST /api/tasks in turn, `count /
    chunks` at a time: the rate of each, and the submissions' latencies. Taking turns
    spreads the machine's drift in speed over both."""
    seconds = {HEALTHZ: 0.0, SUBMIT: 0.0}
    latencies: list[float] = []
    for _ in range(chunks):
        for kind in (HEALTHZ, SUBMIT):
            started = time.perf_counter()
            _, chunk_latencies = await load(port, kind, count // chunks, connections)
            seconds[kind] += time.perf_counter() - started
            if kind is SUBMIT:
                latencies += chunk_latencies
    done = chunks * (count // chunks)
    return done / seconds[HEALTHZ], done / seconds[SUBMIT], latencies


async def load(
    port: int, kind: tuple[int, bytes], count: int, connections: int
) -> tuple[float, list[float]]:
    """Make `count` requests of `kind` (expected status, raw request) over `connections`
    keep-alive connections; the rate and latencies."""
    expected, request = kind
    latencies: list[float] = []
    errors = 0

    async def client(share: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(share):
            started = time.perf_counter()
            writer.write(request)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
            errors += status != expected
        writer.close()
        await writer.wait_closed()

    shares = [count // connections + (i < count % connections) for i in range(connections)]
    started = time.perf_counter()
    await asyncio.gather(*(client(share) for share in shares))
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{errors} of {count} requests were not answered {expected}")
    return count / elapsed, latencies


def start_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy, recording the server's worker process for the next few seconds."""
    return subprocess.Popen(
        [
            *[str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)],
            *["--subprocesses", "--duration", "5"],
            *["--format", "raw" if output.endswith(".txt") else "flamegraph", "-o", output],
        ],
        stdout=subprocess.DEVNULL,
    )


def cpu_seconds(pid: int) -> float:
    """The CPU time the process's threads have used so far (from the scheduler's count, in
    nanoseconds, where `/proc/<pid>/stat` counts in hundredths of a second)."""
    return (
        sum(
            int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[0])
            for thread in os.listdir(f"/proc/{pid}/task")
        )
        / 1e9
    )


def serving_process(pid: int) -> int:
    """The process that serves: hypercorn runs its worker as a child of `pid`, spawned by
    multiprocessing (beside multiprocessing's resource tracker)."""
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise RuntimeError(f"hypercorn ({pid}) has no worker process")


def percentile(ordered: list[float], percent: float) -> float:
    """The `percent` percentile of an ordered list."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


def wait_until_serving(port: int) -> None:
    """Wait, with a deadline, until the server answers."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def flush(redis_url: str) -> None:
    """Empty the benchmark's own database."""
    import redis

    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


if __name__ == "__main__":
    main()

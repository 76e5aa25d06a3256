"""`async def` tasks on ONE worker process: the bridge's async pool against Celery's threads pool
and taskiq, side by side in one run; and what a task itself costs the async pool, against the
same no-op task on Celery's solo pool.

    .venv/bin/python bench/async_tasks.py [--tasks 1000] [--seconds 1] [--rounds 2]
    .venv/bin/python bench/async_tasks.py --profile profile.svg   # py-spy the async pool
    .venv/bin/python bench/async_tasks.py --timeline              # where the async pool waits

1. `--tasks` tasks that each `await asyncio.sleep(--seconds)`, sent one after another by one
   client, run by one worker process: the async pool (`celery -A bench.async_worker worker -c
   N`), Celery's threads pool (`-P threads -c N`) and taskiq (`taskiq worker --workers 1
   --max-async-tasks N`, in `bench/.venv-taskiq`, made on first use). Reported: the time from
   the last send to the last result stored (the ideal is `--seconds`), and the worker's peak
   threads and memory (RSS), sampled every 20 ms.
2. `--noops` no-op tasks queued first, then drained by one worker process: `async def` ones on
   the async pool against a sync one on `-P solo`, in tasks per second.
3. 100 `async def` tasks of 0.2 s sent while two sync tasks spin the CPU for 4 s on the same
   async pool process: the time from the first send to the last of the 100 stored.

Each worker runs with the app's settings (task events on, acknowledged late). Uses the Redis at
REDIS_URL (default redis://127.0.0.1:6379/0), database 15, flushed between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
TASKIQ_VENV = ROOT / "bench" / ".venv-taskiq"
TASKIQ_PACKAGES = ["taskiq>=0.11,<0.14", "taskiq-redis>=1.0,<2"]
CELERY = [sys.executable, "-m", "celery", "-A", "bench.async_worker", "worker"]
CELERY_OPTIONS = ["--loglevel", "WARNING", "--without-mingle"]


@dataclass
class Peak:
    """The most threads and memory a process tree was seen with."""

    threads: int = 0
    rss_mb: float = 0.0


def main() -> None:
    """Run the rounds; print each figure and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--noops", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", help="record a py-spy flame graph of the async pool's run")
    parser.add_argument(
        "--timeline",
        action="store_true",
        help="only the async pool's round, sampling every 50 ms the tasks sent, queued, "
        "unacknowledged, STARTED and SUCCESS",
    )
    args = parser.parse_args()

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("SECRET_KEY", "bench")
    if args.timeline:
        timeline(redis_url, args.tasks, args.seconds)
        return
    taskiq_python = taskiq_environment()
    concurrency = str(args.tasks)
    contenders: dict[str, Callable[[], dict[str, float]]] = {
        f"async pool (-c {args.tasks})": lambda: celery_round(
            redis_url, ["-c", concurrency], args.tasks, args.seconds, args.profile
        ),
        f"Celery threads (-P threads -c {args.tasks})": lambda: celery_round(
            redis_url, ["-P", "threads", "-c", concurrency], args.tasks, args.seconds
        ),
        f"taskiq (--max-async-tasks {args.tasks})": lambda: taskiq_round(
            redis_url, taskiq_python, args.tasks, args.seconds
        ),
    }
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    rates: dict[str, list[float]] = {"async": [], "solo": []}
    for round_ in range(1, args.rounds + 1):
        for name, run in contenders.items():
            figures[name].append(run())
            measured = figures[name][-1]
            print(
                f"round {round_}: {name:42} {measured['after']:6.2f} s after the last send; "
                f"{measured['threads']:4.0f} threads, {measured['rss_mb']:5.0f} MB"
                + (
                    f", {measured['kb_per_task']:.1f} KiB a task"
                    if "kb_per_task" in measured
                    else ""
                )
            )
        beside = beside_spinners(redis_url)
        print(f"round {round_}: 100 async tasks of 0.2 s beside two spinning: {beside:.2f} s")
        rates["async"].append(drain_rate(redis_url, [], "bench.noop_async", args.noops))
        rates["solo"].append(drain_rate(redis_url, ["-P", "solo"], "bench.noop", args.noops))
        print(
            f"round {round_}: no-op tasks drained: async pool {rates['async'][-1]:5.0f}/s, "
            f"solo {rates['solo'][-1]:5.0f}/s"
        )
    names = list(contenders)
    print("\nmedians:")
    for name in names:
        after = statistics.median(f["after"] for f in figures[name])
        threads = max(f["threads"] for f in figures[name])
        rss = max(f["rss_mb"] for f in figures[name])
        print(f"  {name:42} {after:6.2f} s   {threads:4.0f} threads   {rss:5.0f} MB")
    ratios = [
        pool["after"] / taskiq["after"]
        for pool, taskiq in zip(figures[names[0]], figures[names[2]], strict=True)
    ]
    print(f"  async pool / taskiq, after the last send: {statistics.median(ratios):.2f}")
    noop = statistics.median(a / s for a, s in zip(rates["async"], rates["solo"], strict=True))
    print(f"  no-op tasks, async pool / solo:           {noop:.2f}")


def celery_round(
    redis_url: str, options: list[str], tasks: int, seconds: float, profile: str | None = None
) -> dict[str, float]:
    """One round of `bench.sleep` on a Celery worker started with `options`."""
    from worker import celery

    flush(redis_url)
    with running([*CELERY, *options, *CELERY_OPTIONS], redis_url) as worker:
        celery.send_task("bench.noop").get(timeout=60)  # ready
        idle = tree_rss_mb(worker.pid)
        with sampled(worker.pid) as peak:
            profiler = start_profiler(worker.pid, profile) if profile else None
            sent = [celery.send_task("bench.sleep", (seconds,)).id for _ in range(tasks)]
            last_send = time.time()
            done = wait_until_stored(redis_url, [f"celery-task-meta-{i}" for i in sent], b"SUCCESS")
            if profiler is not None:
                profiler.wait()
    return {
        "after": done - last_send,
        "threads": peak.threads,
        "rss_mb": peak.rss_mb,
        "kb_per_task": (peak.rss_mb - idle) * 1024 / tasks,
    }


def timeline(redis_url: str, tasks: int, seconds: float) -> None:
    """The async pool's round, printing every 50 ms how many tasks were sent, are queued, are
    held unacknowledged by the worker, and are STARTED and SUCCESS: whether the worker falls
    behind in taking its messages or in starting and ending its tasks."""
    from worker import celery

    flush(redis_url)
    sent: list[str] = []
    rows: list[tuple[float, int, int, int, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        client = redis.Redis.from_url(redis_url)
        while not stop.wait(0.05):
            values = client.mget([f"celery-task-meta-{i}" for i in list(sent)]) if sent else []
            started = sum(1 for v in values if v and b'"STARTED"' in v)
            succeeded = sum(1 for v in values if v and b'"SUCCESS"' in v)
            queued, held = int(client.llen("celery")), int(client.hlen("unacked"))
            rows.append((time.time(), len(sent), queued, held, started, succeeded))
        client.close()

    with running([*CELERY, "-c", str(tasks), *CELERY_OPTIONS], redis_url):
        celery.send_task("bench.noop").get(timeout=60)  # ready
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        first_send = time.time()
        for _ in range(tasks):
            sent.append(celery.send_task("bench.sleep", (seconds,)).id)
        last_send = time.time()
        done = wait_until_stored(redis_url, [f"celery-task-meta-{i}" for i in sent], b"SUCCESS")
        stop.set()
        sampler.join()
    print(f"sent in {last_send - first_send:.2f} s; the last result {done - last_send:.2f} s after")
    print("   s   sent  queued  unacked  started  succeeded")
    for at, count, queued, held, started, succeeded in rows:
        print(f"{at - first_send:5.2f} {count:6} {queued:7} {held:8} {started:8} {succeeded:10}")


def taskiq_round(redis_url: str, python: Path, tasks: int, seconds: float) -> dict[str, float]:
    """One round of `bench.sleep` on a taskiq worker process."""
    flush(redis_url)
    command = [
        *[str(python), "-m", "taskiq", "worker", "bench.taskiq_app:broker"],
        *["--workers", "1", "--max-async-tasks", str(tasks), "--log-level", "WARNING"],
    ]
    with running(command, redis_url) as worker, sampled(worker.pid) as peak:
        client = subprocess.run(
            [str(python), "bench/taskiq_app.py", str(tasks), str(seconds)],
            cwd=ROOT,
            env={**os.environ, "REDIS_URL": redis_url},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    times = json.loads(client.stdout)
    return {
        "after": times["done"] - times["last_send"],
        "threads": peak.threads,
        "rss_mb": peak.rss_mb,
    }


def drain_rate(redis_url: str, options: list[str], task: str, count: int) -> float:
    """Tasks per second a worker started with `options` drains `count` queued `task`s at, from
    its first result stored to its last."""
    from worker import celery

    flush(redis_url)
    keys = [f"celery-task-meta-{celery.send_task(task).id}" for _ in range(count)]
    with running([*CELERY, *options, *CELERY_OPTIONS], redis_url):
        first = wait_until_stored(redis_url, keys[:1], b"SUCCESS", every=0.001)
        last = wait_until_stored(redis_url, keys, b"SUCCESS")
    return (count - 1) / (last - first)


def beside_spinners(redis_url: str) -> float:
    """Seconds 100 `bench.sleep(0.2)` take on the async pool while two `bench.spin(4)` run."""
    from worker import celery

    flush(redis_url)
    with running([*CELERY, *CELERY_OPTIONS], redis_url):
        celery.send_task("bench.noop").get(timeout=60)  # ready
        spinners = [celery.send_task("bench.spin", (4.0,)) for _ in range(2)]
        wait_until_stored(redis_url, [f"celery-task-meta-{s.id}" for s in spinners], b"STARTED")
        started = time.time()
        sent = [celery.send_task("bench.sleep", (0.2,)).id for _ in range(100)]
        done = wait_until_stored(redis_url, [f"celery-task-meta-{i}" for i in sent], b"SUCCESS")
        for spinner in spinners:
            spinner.get(timeout=60)
    return done - started


def wait_until_stored(redis_url: str, keys: list[str], state: bytes, every: float = 0.005) -> float:
    """Poll until every key holds a result in `state`; the time it was first seen so."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 300
    pending = list(keys)
    try:
        while pending:
            values = client.mget(pending)
            pending = [k for k, v in zip(pending, values, strict=True) if not v or state not in v]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} results never stored")
            if pending:
                time.sleep(every)
        return time.time()
    finally:
        client.close()


@contextmanager
def running(command: list[str], redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process for the block; stopped (warm, then killed) after it."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def sampled(pid: int) -> Iterator[Peak]:
    """Sample the threads and memory of `pid` and its children every 20 ms during the block."""
    peak = Peak()
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            for each in tree(pid):
                try:
                    threads = len(os.listdir(f"/proc/{each}/task"))
                    rss = tree_rss_mb(each, children=False)
                except OSError:
                    continue
                peak.threads = max(peak.threads, threads)
                peak.rss_mb = max(peak.rss_mb, rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found = [pid]
    for each in found:
        try:
            children = Path(f"/proc/{each}/task/{each}/children").read_text().split()
        except OSError:
            continue
        found += [int(child) for child in children]
    return found


def tree_rss_mb(pid: int, children: bool = True) -> float:
    """The largest resident memory among `pid` (and its children), in MB."""
    largest = 0.0
    for each in tree(pid) if children else [pid]:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                largest = max(largest, int(line.split()[1]) / 1024)
    return largest


def taskiq_environment() -> Path:
    """The Python of `bench/.venv-taskiq`, made (with taskiq installed) on first use."""
    python = TASKIQ_VENV / "bin" / "python"
    if not python.exists():
        venv.create(TASKIQ_VENV, with_pip=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *TASKIQ_PACKAGES], check=True
        )
    return python


def start_profiler(pid: int, output: str) -> subprocess.Popen[bytes]:
    """py-spy, recording the worker for the next few seconds."""
    return subprocess.Popen(
        [
            *[str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)],
            *["--threads", "--duration", "4", "--nonblocking"],
            *["--format", "raw" if output.endswith(".txt") else "flamegraph", "-o", output],
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def flush(redis_url: str) -> None:
    """Empty the benchmark's own database."""
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


if __name__ == "__main__":
    main()

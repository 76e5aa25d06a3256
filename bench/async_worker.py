"""The app's worker with the tasks of `bench/async_tasks.py` (`-A bench.async_worker`)."""

from __future__ import annotations

import asyncio
import time

from worker import celery


@celery.task(name="bench.sleep")
async def sleep(seconds: float) -> None:
    """Wait on nothing for `seconds`, as a task waiting on the network does."""
    await asyncio.sleep(seconds)


@celery.task(name="bench.noop_async")
async def noop_async() -> None:
    """Nothing, as a coroutine: what a task itself costs the async pool."""


@celery.task(name="bench.noop")
def noop() -> None:
    """Nothing: what a task itself costs a sync pool."""


@celery.task(name="bench.spin")
def spin(seconds: float) -> None:
    """Keep a CPU busy for `seconds`, in Python."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

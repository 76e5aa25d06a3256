"""The app's worker with the tasks of `bench/async_tasks.py` (`-A bench.async_worker`)."""

from __future__ import annotations

import asyncio
import time

from quart_celery import send_chunk

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


@celery.task(name="bench.stream")
async def stream(count: int, rate: float = 0.0) -> dict[str, float]:
    """Stream `count` small chunks, `[n, time sent]`, as fast as it can, or `rate` a second
    (`bench/streams.py`); return the seconds the sends took, and those of the same loop making
    the chunks alone."""
    began = time.perf_counter()
    for number in range(count):
        send_chunk([number, time.time()])
        if rate and number % 10 == 9:  # keep to the schedule, ten chunks at a time
            await asyncio.sleep(max(0.0, began + (number + 1) / rate - time.perf_counter()))
    sending = time.perf_counter() - began
    began = time.perf_counter()
    for number in range(count):
        [number, time.time()]  # the chunk made and dropped: the loop's own cost
    return {"sending": sending, "making": time.perf_counter() - began}

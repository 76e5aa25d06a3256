"""Cancelling a task that runs in this process: `Running`."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from quart_celery._worker.cancellation import Running


async def body() -> int:
    return 1


async def test_a_task_cancelled_before_it_starts_is_closed_not_left_to_warn() -> None:
    running = Running("a-task")
    running.cancel()
    coroutine = body()
    with pytest.raises(asyncio.CancelledError):
        await running.run(coroutine)
    # Closed: collected, it does not warn "never awaited" (the suite's warnings are errors).
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


async def test_a_task_not_cancelled_runs() -> None:
    assert await Running("a-task").run(body()) == 1

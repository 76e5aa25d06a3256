"""Raising an exception of our choosing where a coroutine awaits, and timing its steps."""

from __future__ import annotations

import asyncio
import time

import pytest

from quart_celery._worker.interrupts import Interruptible


class Stop(Exception):
    """The exception raised into the coroutine."""


async def test_an_interruption_is_raised_where_the_coroutine_awaits() -> None:
    seen: list[str] = []

    async def body() -> str:
        try:
            await asyncio.sleep(10)
        except Stop:
            seen.append("caught")
            await asyncio.sleep(0)  # it may still await as it tidies up
            return "tidied"
        finally:
            seen.append("finally")
        return "slept"

    interruptible = Interruptible(body())
    task = asyncio.create_task(interruptible.run())
    await asyncio.sleep(0.01)
    interruptible.interrupt(Stop())
    assert await task == "tidied"
    assert seen == ["caught", "finally"]
    assert task.cancelling() == 0  # the cancellation used to interrupt it is taken back


async def test_a_cancellation_is_still_a_cancellation() -> None:
    task = asyncio.create_task(Interruptible(asyncio.sleep(10)).run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_step_that_holds_the_loop_is_reported() -> None:
    slow: list[float] = []

    async def body() -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)  # blocks the loop
        await asyncio.sleep(0)

    await Interruptible(body(), slow.append, slow=0.1).run()
    assert len(slow) == 1
    assert slow[0] >= 0.15

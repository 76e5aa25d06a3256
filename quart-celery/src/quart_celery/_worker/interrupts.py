"""Raising an exception of our choosing where a coroutine awaits (Celery's soft time limit).

asyncio can only cancel a task, which raises `CancelledError` where it awaits; Celery promises
`SoftTimeLimitExceeded` there instead, so a task can catch it and tidy up, as it can under
prefork (where a signal raises it). `Interruptible` drives a coroutine step by step, as a task
does, and when it is interrupted it cancels the await in progress and throws the chosen
exception into the coroutine in place of the cancellation. asyncio has no hook for this, so it
is written here. Driving each step, it also times it: a step that holds the loop (a blocking
call in a coroutine) holds up every other task on it, and is reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Interruptible(Generic[T]):
    """A coroutine that `interrupt` can raise an exception into where it awaits.

    Await it inside an asyncio task (`loop.create_task(interruptible.run())`), then call
    `interrupt(error)` on the loop's thread.
    """

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, T],
        on_slow_step: Callable[[float], object] | None = None,
        slow: float = 0.5,
        around_step: tuple[Callable[[], object], Callable[[], object]] | None = None,
    ) -> None:
        self.coroutine = coroutine
        self.task: asyncio.Task[Any] | None = None
        #: The exception to raise into the coroutine in place of the next cancellation.
        self.pending: BaseException | None = None
        #: Told how long a step took, where one held the loop over `slow` seconds.
        self.on_slow_step = on_slow_step
        self.slow = slow
        #: Called before and after each step (the worker's current task, pushed and popped).
        self.around_step = around_step

    async def run(self) -> T:
        """Run the coroutine to its end (in the current task)."""
        self.task = asyncio.current_task()
        return await self

    def interrupt(self, error: BaseException) -> None:
        """Raise `error` where the coroutine awaits now (on the loop's thread)."""
        if self.task is None or self.task.done():
            return
        self.pending = error
        self.task.cancel()

    def __await__(self) -> Generator[Any, Any, T]:
        send, throw = self.coroutine.send, self.coroutine.throw
        value: Any = None
        error: BaseException | None = None
        enter, leave = self.around_step or (_nothing, _nothing)
        while True:
            started = time.perf_counter()
            enter()
            try:
                yielded = send(value) if error is None else throw(error)
            except StopIteration as stop:
                leave()
                self._timed(started)
                return stop.value  # type: ignore[no-any-return]
            except BaseException:
                leave()
                self._timed(started)
                raise
            leave()
            self._timed(started)
            value, error = None, None
            try:
                value = yield yielded
            except asyncio.CancelledError as cancelled:
                error = cancelled
                if self.pending is not None:
                    # The cancellation was ours: the coroutine gets the exception instead.
                    error, self.pending = self.pending, None
                    if self.task is not None:
                        self.task.uncancel()
            except BaseException as other:
                error = other

    def _timed(self, started: float) -> None:
        """Tell `on_slow_step` of a step (the code between two awaits) that held the loop."""
        took = time.perf_counter() - started
        if took > self.slow and self.on_slow_step is not None:
            self.on_slow_step(took)


def _nothing() -> None:
    """Nothing to do around a step."""

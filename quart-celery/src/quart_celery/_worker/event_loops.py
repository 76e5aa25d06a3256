"""One asyncio event loop per thread that runs tasks, living as long as that thread.

Celery runs tasks on threads that have no event loop. A loop made anew for each task would break
every async client a task caches across calls (redis.asyncio fails with "Event loop is closed"),
and one loop cannot be run by two pool threads at once. So each thread keeps a loop of its own,
made on first use; a child forgets its parent's loops after fork (their selectors belong to the
parent); and the worker closes them all when it shuts down.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, TypeVar

from celery import signals

T = TypeVar("T")


class _State(threading.local):
    """This thread's runner, and whether this thread is the helper of `call_outside_loop`."""

    runner: asyncio.Runner | None = None
    is_helper: bool = False


_state = _State()
_open_runners: set[asyncio.Runner] = set()
_lock = threading.Lock()
_helper: ThreadPoolExecutor | None = None


def thread_runner() -> asyncio.Runner:
    """Return this thread's runner, making it on first use (or after `close_event_loops`)."""
    runner = _state.runner
    with _lock:
        if runner is None or runner not in _open_runners:
            runner = _state.runner = asyncio.Runner()
            _open_runners.add(runner)
    return runner


def run_coroutine(coroutine: Coroutine[Any, Any, T], context: contextvars.Context) -> T:
    """Run `coroutine` to its end on this thread's loop, in `context`.

    Unlike `asyncio.Runner.run`, this cancels the coroutine, and waits for it to unwind, when
    an exception is raised into the loop from outside (Celery's soft time limit arrives as a
    signal): otherwise the task would go on running under the next task on the same loop.
    """
    loop = thread_runner().get_loop()
    task = loop.create_task(coroutine, context=context)
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():
            task.cancel()
            with suppress(BaseException):
                loop.run_until_complete(task)
        raise


def close_event_loops() -> None:
    """Close every thread's loop that is idle now: the worker is shutting down.

    A loop still running a task on another thread is left to that thread: closing it from here
    would cancel the task under it. It goes with the process.
    """
    with _lock:
        idle = [runner for runner in _open_runners if not runner.get_loop().is_running()]
        _open_runners.difference_update(idle)
    for runner in idle:
        runner.close()


def init_celery() -> None:
    """Close the worker's event loops when it shuts down (its processes, then itself)."""
    for signal in (signals.worker_process_shutdown, signals.worker_shutdown):
        signal.connect(_close_event_loops, weak=False, dispatch_uid=__name__)


def _close_event_loops(**_: Any) -> None:
    """A Celery signal receiver for `close_event_loops`."""
    close_event_loops()


def call_outside_loop(function: Callable[[], T]) -> T:
    """Call `function` on this thread, or on a helper thread if this one is running a loop.

    A task called directly from async code (or eagerly, from an async view) cannot run a loop
    on a thread that already runs one, so it runs on a long-lived helper thread with a loop of
    its own, and the caller waits for it, as for any direct call.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_a_loop = False
    else:
        in_a_loop = True
    # Called outside the `except`, so that the task's own errors are not chained to this one.
    if not in_a_loop:
        return function()
    if _state.is_helper:
        # A task called from inside a task already on the helper: a thread just for this call.
        with ThreadPoolExecutor(1, thread_name_prefix="task-call") as executor:
            return executor.submit(_call_then_close_loop, function).result()
    return _helper_executor().submit(function).result()


def _helper_executor() -> ThreadPoolExecutor:
    """The helper thread of `call_outside_loop`, started on first use."""
    global _helper
    with _lock:
        if _helper is None:
            _helper = ThreadPoolExecutor(1, "task-loop", initializer=_mark_helper)
        return _helper


def _mark_helper() -> None:
    """Initialise the helper thread: calls from it that meet a running loop need another."""
    _state.is_helper = True


def _call_then_close_loop(function: Callable[[], T]) -> T:
    """Call `function` on a thread made for this one call, closing the loop it made."""
    try:
        return function()
    finally:
        runner = _state.runner
        if runner is not None:
            with _lock:
                _open_runners.discard(runner)
            runner.close()


def _forget_parent_loops() -> None:
    """In a forked child: drop the parent's loops and helper, which belong to the parent."""
    global _state, _open_runners, _lock, _helper
    _state, _open_runners, _lock, _helper = _State(), set(), threading.Lock(), None


os.register_at_fork(after_in_child=_forget_parent_loops)

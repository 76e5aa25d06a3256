"""One event loop per thread: kept across calls, made anew only after the worker closes it."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

from celery import signals
from quart import Quart

from quart_celery._worker.event_loops import (
    call_outside_loop,
    close_event_loops,
    run_coroutine,
    thread_runner,
)


def test_a_thread_keeps_its_loop_across_calls() -> None:
    assert thread_runner() is thread_runner()


def test_each_thread_has_a_loop_of_its_own() -> None:
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(thread_runner).result()
        assert pool.submit(thread_runner).result() is other
    assert thread_runner() is not other


def test_closing_closes_every_idle_loop_and_the_next_call_makes_one() -> None:
    runner = thread_runner()
    loop = runner.get_loop()
    close_event_loops()
    assert loop.is_closed()
    assert thread_runner() is not runner


def test_the_worker_shutting_down_closes_the_loops(app: Quart) -> None:
    loop = thread_runner().get_loop()
    signals.worker_shutdown.send(sender=None)
    assert loop.is_closed()


def test_outside_a_loop_the_call_stays_on_this_thread() -> None:
    assert call_outside_loop(threading.get_ident) == threading.get_ident()


async def test_inside_a_loop_the_call_goes_to_a_helper_thread() -> None:
    here = threading.get_ident()

    def where() -> int:
        with_loop = thread_runner().run(asyncio.sleep(0, threading.get_ident()))
        assert with_loop == threading.get_ident()
        return threading.get_ident()

    helper = call_outside_loop(where)
    assert helper != here
    assert call_outside_loop(where) == helper  # the same helper, with the same loop, each time


def test_closing_leaves_a_loop_that_is_running_a_task_alone() -> None:
    started, release = threading.Event(), threading.Event()

    async def task() -> str:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "finished"

    def run_task() -> tuple[str, asyncio.AbstractEventLoop]:
        loop = thread_runner().get_loop()
        return run_coroutine(task(), contextvars.copy_context()), loop

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_task)
        assert started.wait(10)
        close_event_loops()
        release.set()
        result, loop = running.result(timeout=10)
    assert result == "finished"
    assert not loop.is_closed()

"""A worker process of `hypercorn --workers N`, told to stop by hypercorn's main process, finishes
stopping whatever SIGTERM comes; told nothing, SIGTERM ends it as before.

Each test runs the app in a process started as hypercorn starts its workers (`spawn`, with the
`shutdown_event` argument), since a SIGTERM that ends it must not end the test run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from quart import Quart

from quart_celery._web import shutdown

SPAWN = multiprocessing.get_context("spawn")


def serve(shutdown_event: Event, starting: Event, started: Event, stop: Event) -> None:
    """Serve an app with the bridge's shutdown handling; stay in its start (as a slow
    `before_serving` does) until `started`, then serve until `stop`."""
    app = Quart("stopping")
    shutdown.init_app(app)

    @app.before_serving
    async def start_slowly() -> None:
        starting.set()
        await asyncio.to_thread(started.wait)

    async def main() -> None:
        await app.startup()
        await asyncio.to_thread(stop.wait)
        await app.shutdown()

    asyncio.run(main())


@contextmanager
def worker_process(asked_to_stop: bool) -> Iterator[tuple[BaseProcess, Event, Event]]:
    """A process serving the app, stopped in its start: it, and the events that let it go on
    (`started`, then `stop`)."""
    shutdown_event, starting, started, stop = (SPAWN.Event() for _ in range(4))
    if asked_to_stop:
        shutdown_event.set()
    events = {"starting": starting, "started": started, "stop": stop}
    process = SPAWN.Process(target=serve, kwargs={"shutdown_event": shutdown_event, **events})
    process.start()
    try:
        assert starting.wait(30), "the process did not start"
        yield process, started, stop
    finally:
        if process.is_alive():  # (one that died waiting on an event would hang `set`)
            started.set()
            stop.set()
            process.join(30)
        process.kill()
        process.join()


def test_a_process_asked_to_stop_finishes_stopping_through_sigterm_even_while_starting() -> None:
    # hypercorn's main process sends SIGTERM to the worker processes still running once the
    # first has exited: one still starting (its metrics directory made) died there.
    with worker_process(asked_to_stop=True) as (process, started, stop):
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        started.set()
        stop.set()
        process.join(30)
    assert process.exitcode == 0


def test_a_process_not_asked_to_stop_ends_on_sigterm_as_before() -> None:
    with worker_process(asked_to_stop=False) as (process, _started, _stop):
        assert process.pid is not None
        os.kill(process.pid, signal.SIGTERM)
        process.join(30)
        assert process.exitcode == -signal.SIGTERM

"""Tell open websockets, with close code 1001, that the server is going away.

When hypercorn is told to stop it stops accepting connections and waits `graceful_timeout`
(3 s) for the open ones to end. Only then does it tell the app (the ASGI lifespan shutdown),
and by then it has cancelled what was still open: a websocket was cut with 1011, an "internal
error", and the client could not tell a crash from a restart. Nothing in ASGI says "shutdown
has begun". hypercorn's worker processes do hear it: the main process sets a
`multiprocessing.Event` that it hands each worker process (the `shutdown_event` argument of
the process it starts), and each worker checks it every 0.1 s. The app watches the same event,
read from the process's own start arguments, and tells whoever asked (`telling`): every
websocket then closes with 1001 within the graceful timeout.

Where there is no such event (`hypercorn --workers 0`, or another server), sockets still end
when serving stops, as before.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

from quart import Quart, current_app

EXTENSION = "quart_celery.going_away"
POLL_INTERVAL = 0.1


class GoingAway:
    """Whether the server has begun to shut down, and whom to tell when it does.

    Callbacks, not an event each socket waits on: a waiting task per socket cost 1 KiB of
    each of 10,000 idle sockets (bench/waiters.py).
    """

    def __init__(self) -> None:
        self.begun = False
        self.callbacks: set[Callable[[], None]] = set()

    def begin(self) -> None:
        """The server has begun to shut down: tell everyone who asked, once."""
        if not self.begun:
            self.begun = True
            for callback in list(self.callbacks):
                callback()

    @contextmanager
    def telling(self, callback: Callable[[], None]) -> Iterator[None]:
        """Call `callback` once the server begins to shut down (now, if it has), while inside."""
        self.callbacks.add(callback)
        try:
            if self.begun:
                callback()
            yield
        finally:
            self.callbacks.discard(callback)


def init_app(app: Quart) -> None:
    """Tell who asked once the server begins to shut down, or serving stops; and once it has
    begun, finish shutting down whatever signal comes.

    Call it before anything whose `before_serving` makes what its `after_serving` removes
    (the metrics directory): those run in the order they were registered.
    """

    @app.before_serving
    async def finish_stopping_once_asked() -> None:
        server_event = _server_shutdown_event()
        if server_event is not None:
            _ignore_sigterm_once_asked(server_event)

    @app.while_serving
    async def watch_for_shutdown() -> AsyncGenerator[None, None]:
        going_away = app.extensions[EXTENSION] = GoingAway()
        server_event = _server_shutdown_event()
        watching = None
        if server_event is not None:
            watching = asyncio.create_task(_watch(server_event, going_away))
        yield
        going_away.begin()
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)


def telling(callback: Callable[[], None]) -> AbstractContextManager[None]:
    """Call `callback` once the server begins to shut down, while inside (`GoingAway.telling`)."""
    going_away: GoingAway = current_app.extensions[EXTENSION]
    return going_away.telling(callback)


def _server_shutdown_event() -> Any:
    """The event hypercorn's main process sets to stop this worker process, if there is one."""
    arguments: dict[str, Any] = getattr(multiprocessing.current_process(), "_kwargs", {}) or {}
    event = arguments.get("shutdown_event")
    return event if callable(getattr(event, "is_set", None)) else None


async def _watch(server_event: Any, going_away: GoingAway) -> None:
    while not server_event.is_set():
        await asyncio.sleep(POLL_INTERVAL)
    going_away.begin()


def _ignore_sigterm_once_asked(server_event: Any) -> None:
    """Ignore SIGTERM once hypercorn's main process has asked this worker process to stop;
    before that, end as SIGTERM would.

    hypercorn's main process, once the first of its worker processes has exited, sends the
    others SIGTERM, which a worker process does not handle: one still stopping died there,
    before its `after_serving` handlers ran, and left the metrics directory behind (about one
    stop in five). One still starting, between making that directory and serving, died too
    (a stop just after the server answered, with a slow `before_serving`: three in six).
    Heard from the event loop, not in a signal handler, so that reading the event may take
    its lock; SIGKILL still ends the process.
    """
    loop = asyncio.get_running_loop()

    def terminated() -> None:
        if server_event.is_set():
            return  # stopping already: finish
        loop.remove_signal_handler(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)

    with suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
        loop.add_signal_handler(signal.SIGTERM, terminated)

"""Tell open websockets, with close code 1001, that the server is going away.

When hypercorn is told to stop it stops accepting connections and waits `graceful_timeout`
(3 s) for the open ones to end. Only then does it tell the app (the ASGI lifespan shutdown),
and by then it has cancelled what was still open: a websocket was cut with 1011, an "internal
error", and the client could not tell a crash from a restart. Nothing in ASGI says "shutdown
has begun". hypercorn's worker processes do hear it: the main process sets a
`multiprocessing.Event` that it hands each worker process (the `shutdown_event` argument of
the process it starts), and each worker checks it every 0.1 s. The app watches the same event,
read from the process's own start arguments, and sets `going_away`. Every websocket then
closes with 1001 within the graceful timeout.

Where there is no such event (`hypercorn --workers 0`, or another server), sockets still end
when serving stops, as before.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import AsyncGenerator
from typing import Any

from quart import Quart, current_app

EXTENSION = "going_away"
POLL_INTERVAL = 0.1


def init_app(app: Quart) -> None:
    """Set the `going_away` event once the server begins to shut down, or serving stops."""

    @app.while_serving
    async def watch_for_shutdown() -> AsyncGenerator[None, None]:
        going_away = app.extensions[EXTENSION] = asyncio.Event()
        server_event = _server_shutdown_event()
        watching = None
        if server_event is not None:
            watching = asyncio.create_task(_watch(server_event, going_away))
        yield
        going_away.set()
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)


async def going_away() -> None:
    """Return once the server has begun to shut down."""
    event: asyncio.Event = current_app.extensions[EXTENSION]
    await event.wait()


def _server_shutdown_event() -> Any:
    """The event hypercorn's main process sets to stop this worker process, if there is one."""
    arguments: dict[str, Any] = getattr(multiprocessing.current_process(), "_kwargs", {}) or {}
    event = arguments.get("shutdown_event")
    return event if callable(getattr(event, "is_set", None)) else None


async def _watch(server_event: Any, going_away: asyncio.Event) -> None:
    while not server_event.is_set():
        await asyncio.sleep(POLL_INTERVAL)
    going_away.set()

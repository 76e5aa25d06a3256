"""The deadline of each websocket send, kept by one watch per serving app rather than a timer
per send.

A client that does not take a message within `WS_SEND_TIMEOUT` is dropped (1013,
`quart_celery._web.websockets`): it must not hold its socket's updates, and its handler, for
good. A timer made and cancelled around each send (`asyncio.timeout`) was a twelfth of what a
server spent sending a state to 100 sockets of one task (`bench/followers.py`, py-spy,
2026-12-04). The watch notes when each send began, and every quarter of the timeout ends the
sends past it as `asyncio.timeout` would (by cancelling its task, the send then raising
`TimeoutError`): a stuck send ends between `WS_SEND_TIMEOUT` and 1.25 times it.

Written by hand: asyncio offers a timer for each deadline, not one look for many.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import suppress
from typing import Any

from quart import Quart, Websocket, current_app

EXTENSION = "quart_celery.send_deadlines"


class SendWatch:
    """The sends under way on the sockets of one app, and when each began."""

    def __init__(self, limit: float) -> None:
        #: Seconds a send may take.
        self.limit = limit
        #: The tasks sending now, and when (the loop's time) each send began.
        self.sending: dict[asyncio.Task[Any], float] = {}
        #: Sending tasks that the watch has cancelled, their send past its deadline.
        self.ended: set[asyncio.Task[Any]] = set()

    async def watch(self) -> None:
        """End the sends past their deadline, looking every quarter of it, for good."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limit / 4)
            now = loop.time()
            for task, began in list(self.sending.items()):
                if now - began >= self.limit and task not in self.ended:
                    self.ended.add(task)
                    task.cancel()

    async def send(self, socket: Websocket, texts: list[str]) -> None:
        """Send `texts` on `socket`, one after another, all within the deadline; `TimeoutError`
        past it. From the socket's own task: that is the task the watch cancels."""
        task = asyncio.current_task()
        assert task is not None
        self.sending[task] = asyncio.get_running_loop().time()
        try:
            for text in texts:
                await socket.send(text)
        except asyncio.CancelledError:
            # Ours alone, as `asyncio.timeout` tells: a cancellation from elsewhere goes on.
            if task in self.ended and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            del self.sending[task]
            self.ended.discard(task)


def init_app(app: Quart) -> None:
    """Watch the sends while the app serves."""

    @app.while_serving
    async def send_watch() -> AsyncGenerator[None, None]:
        watch = app.extensions[EXTENSION] = SendWatch(app.config["WS_SEND_TIMEOUT"])
        watching = asyncio.create_task(watch.watch())
        yield
        watching.cancel()
        with suppress(asyncio.CancelledError):
            await watching
        del app.extensions[EXTENSION]


def current() -> SendWatch:
    """The serving app's watch."""
    watch: SendWatch = current_app.extensions[EXTENSION]
    return watch

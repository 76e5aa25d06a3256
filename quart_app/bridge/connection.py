"""Quart's websocket connection, made lighter for servers that hold thousands of idle sockets.

Quart serves each websocket with `ASGIWebsocketConnection`: one task reads the client's
messages into an `asyncio.Queue`, a second runs the handler, and the ASGI call waits on both
with `asyncio.wait`. For a socket that only waits, the queue (four deques and an event,
3 KiB) and the second task with its wait (1.5 KiB) were a third of what the app spent on it
(bench/waiters.py). This subclass runs the handler in the ASGI call's own task and hands the
client's messages to it through a list and one future; the rest (the websocket object,
accepting, sending, closing, Quart's signals, the HTTP answer to a refused handshake) is
Quart's own. As in Quart, the client's going away cancels the handler, and an error while
reading the client's messages ends the socket and is raised to the server.

Quart lets an app choose this class (`Quart.asgi_websocket_class`); nothing else changes.
It is made for the connection of Quart 0.20 to 0.22. Quart 0.23 (which needs Python 3.13)
rebuilt that connection around a task group and a buffer on the websocket itself; there the
app keeps Quart's own, and its sockets cost what Quart's do.
"""

from __future__ import annotations

import asyncio

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, WebsocketScope
from quart import Quart
from quart.asgi import ASGIWebsocketConnection
from quart.wrappers import Websocket


class Mailbox:
    """The client's messages that the handler has not read yet, unbounded as in Quart."""

    __slots__ = ("_messages", "_waiter")

    def __init__(self) -> None:
        self._messages: list[str | bytes] = []
        self._waiter: asyncio.Future[None] | None = None

    async def put(self, message: str | bytes) -> None:
        """Keep `message` for the handler, waking it if it waits."""
        self._messages.append(message)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> str | bytes:
        """The next message, once there is one."""
        while not self._messages:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.pop(0)


class WebsocketConnection(ASGIWebsocketConnection):
    """Quart's websocket connection with the handler in the ASGI call's task, no queue."""

    def __init__(self, app: Quart, scope: WebsocketScope) -> None:
        super().__init__(app, scope)
        self.queue = Mailbox()  # type: ignore[assignment]  # what Quart uses: put() and get()
        self._handler: asyncio.Task[object] | None = None  # while it runs
        self._cancelled_handler = False

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        websocket = self._create_websocket_from_scope(send)
        self._handler = handler = asyncio.current_task()
        assert handler is not None
        reader = asyncio.ensure_future(self.handle_messages(receive))
        reader.add_done_callback(self._reader_ended)
        try:
            await self.handle_websocket(websocket, send)
        except asyncio.CancelledError:
            # Swallowed only where the client's going away (or a failed read) cancelled the
            # handler, as in Quart; a cancellation from outside goes on.
            if not self._cancelled_handler or handler.uncancel() > 0:
                raise
        finally:
            self._handler = None
            reader.cancel()
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]

    def _reader_ended(self, reader: asyncio.Future[None]) -> None:
        if self._handler is not None and not reader.cancelled():
            self._cancelled_handler = True
            self._handler.cancel()


def init_app(app: Quart) -> None:
    """Serve the app's websockets with `WebsocketConnection`, where Quart's connection is the
    one it was made for (a Quart whose websockets have no `buffer_class`: before 0.23)."""
    if not fits_this_quart():
        return
    app.asgi_websocket_class = WebsocketConnection


def fits_this_quart() -> bool:
    """Whether this Quart's websocket connection is the one `WebsocketConnection` refines."""
    return not hasattr(Websocket, "buffer_class")

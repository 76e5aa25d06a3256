"""Quart's websocket classes as the bridge serves them: a connection made lighter for servers
that hold thousands of idle sockets, and a websocket that sends at once. Both are installed here,
in one place (`init_app`).

Quart serves each websocket with `ASGIWebsocketConnection`: one task reads the client's
messages into an `asyncio.Queue`, a second runs the handler, and the ASGI call waits on both
(with `asyncio.wait` up to Quart 0.22, in a task group from 0.23). For a socket that only
waits, the queue (four deques and an event, 3 KiB) and the second task with its wait (1.5 KiB)
were a third of what the app spent on it (bench/waiters.py). This subclass runs the handler in
the ASGI call's own task and hands the client's messages to it through a list and one future
(`Mailbox`: Quart 0.22's connection queue, Quart 0.23's websocket buffer); the rest (the
websocket object, accepting, sending, closing, Quart's signals, the HTTP answer to a refused
handshake) is Quart's own. As in Quart, the client's going away cancels the handler, and an
error while reading the client's messages ends the socket and is raised to the server.

Quart lets an app choose these classes (`Quart.asgi_websocket_class`,
`Quart.websocket_class`); nothing else changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, WebsocketScope
from quart import Quart
from quart import asgi as quart_asgi
from quart.asgi import ASGIWebsocketConnection
from quart.wrappers import Websocket
from quart.wrappers import base as quart_wrappers

from quart_celery._observability import metrics
from quart_celery._web import frames

#: Quart 0.23 and later: the client's messages wait in a buffer on the websocket, its reader
#: cancels the handler itself when the client goes, and a send to a client that is gone
#: raises `ClientDisconnectedError`.
BUFFERED = hasattr(Websocket, "buffer_class")


class Mailbox:
    """The client's messages that the handler has not read yet, unbounded as in Quart."""

    __slots__ = ("_disconnected", "_messages", "_waiter")

    def __init__(self) -> None:
        self._messages: list[str | bytes] = []
        self._waiter: asyncio.Future[None] | None = None
        self._disconnected = False

    async def put(self, message: str | bytes) -> None:
        """Keep `message` for the handler, waking it if it waits."""
        self._messages.append(message)
        self._wake()

    async def get(self) -> str | bytes:
        """The next message, once there is one; Quart's `ClientDisconnectedError` once the
        client is gone and nothing is left."""
        while not self._messages:
            if self._disconnected:
                raise quart_wrappers.ClientDisconnectedError()  # type: ignore[attr-defined]
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._messages.pop(0)

    def disconnect(self) -> None:
        """The client is gone (Quart 0.23 calls this)."""
        self._disconnected = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class SendsAtOnce:
    """A mixin for the app's websocket class: `send` without yielding to the event loop first.

    Quart's `Websocket.send` awaits `asyncio.sleep(0)` before every message, so that an app
    sending in a tight loop lets others run: on a busy server that cost each pushed state a
    whole turn of the loop, 0.4 to 0.6 ms at the median (`bench/latency.py`). These sockets
    send as an update arrives, and take turns themselves where a backlog waits
    (`quart_celery._web.websockets`).
    """

    _send: Callable[[str | bytes], Awaitable[None]]  # Quart's Websocket's own
    #: A writer of messages straight to the socket, where its server allows it
    #: (`quart_celery._web.frames`), set by `WebsocketConnection`.
    writer: frames.SocketWriter | None = None

    async def send(self, data: str | bytes) -> None:
        """Send `data` now (accepting the socket first, if it is not yet)."""
        await self.accept()  # type: ignore[attr-defined]  # Quart's Websocket's
        await self._send(data)
        frames.sent[metrics.HANDLER] += 1


class WebsocketConnection(ASGIWebsocketConnection):
    """Quart's websocket connection with the handler in the ASGI call's task, no queue."""

    def __init__(self, app: Quart, scope: WebsocketScope) -> None:
        super().__init__(app, scope)
        self.queue = Mailbox()  # type: ignore[assignment]  # what Quart 0.22 uses
        self._handler: asyncio.Task[object] | None = None  # while it runs
        self._cancelled_handler = False

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        self._handler = handler = asyncio.current_task()
        assert handler is not None
        writer = frames.socket_writer(send)
        if writer is not None:
            send = writer.before(send)  # the frames the writer holds go first
        if BUFFERED:
            send = quart_asgi._convert_os_error(send)  # type: ignore[attr-defined]
            websocket = self._create_websocket_from_scope(send)
            reading = self.handle_messages(websocket, receive, handler)  # type: ignore[call-arg, arg-type]
        else:
            websocket = self._create_websocket_from_scope(send)
            reading = self.handle_messages(receive)
        if writer is not None and isinstance(websocket, SendsAtOnce):
            websocket.writer = writer
        reader = asyncio.ensure_future(reading)
        reader.add_done_callback(self._reader_ended)
        try:
            await self.handle_websocket(websocket, send)
        except asyncio.CancelledError:
            # Swallowed only where the client's going away (or a failed read) cancelled the
            # handler, as in Quart; a cancellation from outside goes on.
            gone = self._cancelled_handler or getattr(self, "_disconnected", False)
            if not gone or handler.uncancel() > 0:
                raise
        finally:
            self._handler = None
            reader.cancel()
            if writer is not None:
                writer.write()  # before hypercorn ends the socket, if the app did not
            frames.count_sent(metrics.of(self.app))
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]

    def _reader_ended(self, reader: asyncio.Future[None]) -> None:
        """Cancel the handler when the reader ends: the client went (Quart 0.23's reader has
        cancelled it already), or reading failed."""
        if self._handler is None or reader.cancelled():
            return
        if BUFFERED and reader.exception() is None:
            return
        self._cancelled_handler = True
        self._handler.cancel()


def init_app(app: Quart) -> None:
    """Serve the app's websockets with `WebsocketConnection`, their messages in a `Mailbox`
    (Quart 0.23), and sends made at once (`SendsAtOnce`), whatever websocket class the app
    had."""
    app.asgi_websocket_class = WebsocketConnection
    attributes = {"buffer_class": Mailbox} if BUFFERED else {}
    app.websocket_class = type(  # type: ignore[assignment]
        "Websocket", (SendsAtOnce, app.websocket_class), attributes
    )

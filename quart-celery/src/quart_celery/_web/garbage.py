"""Keep what start-up made out of the garbage collector's full passes while the app serves
(`quart_celery.heap`, which says why).

Measured on the web server: a full pass took 50 to 70 ms under load, a pause of the event loop
that every socket waiting for a push shares; with the heap frozen the p99 of websocket delivery
fell from about 35 ms to about 10 ms (`bench/latency.py`), and 1,000 websockets connecting no
longer set off full passes of 40 to 175 ms again and again.

The freeze follows the server's ASGI lifespan: it happens once start-up is complete, so that
what every extension opened when serving started (the user's too, whatever their order) is
frozen with the rest, and is undone when shutdown begins.
"""

from __future__ import annotations

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import Quart

from quart_celery._protection.admission import ASGIApp
from quart_celery.heap import FrozenHeap


class FrozenStartUpHeap:
    """ASGI middleware: freeze the heap when the lifespan's start-up is complete, thaw it when
    its shutdown begins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.heap = FrozenHeap()

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def receive_and_thaw() -> ASGIReceiveEvent:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.heap.thaw()
            return message

        async def send_and_freeze(message: ASGISendEvent) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.heap.freeze()
            await send(message)

        await self.app(scope, receive_and_thaw, send_and_freeze)


def init_app(app: Quart) -> None:
    """Freeze the heap while the app serves (under an ASGI server, as `hypercorn` runs it)."""
    app.asgi_app = FrozenStartUpHeap(app.asgi_app)  # type: ignore[method-assign]

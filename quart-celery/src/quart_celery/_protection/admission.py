"""Websockets are set up a few at a time, so that a burst of them holds up no other request.

When 1,000 websockets connected at once, each went through every step of its set-up (the
handshake, Quart's contexts, the access checks, following its task, reading and sending its
snapshot) in the same turns of the event loop as all the others: each turn ran a thousand
steps, and a `GET /api/tasks/<id>` waited a whole turn at each of its own steps (its p99 was
295 ms, its worst 819). Only `WS_MAX_SETUPS` websockets are set up at once here: a socket
holds a place from its handshake until it first sends anything (its snapshot, an error, a
refusal), or for a second at most, so that a client that only listens (`/ws/tasks` before its
first subscription) keeps no other waiting. Those beyond wait their turn, which costs them
nothing but a moment; everything else goes on between them.

An ASGI middleware, around the whole app: Quart's own work for a socket comes before any
hook of the app's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from quart import Quart

ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]

#: The longest a socket holds its place without having sent anything.
MAX_HOLD = 1.0
#: What a socket sends first: its place is free from then on.
FIRST_SENDS = frozenset({"websocket.send", "websocket.close", "websocket.http.response.start"})


class WebsocketAdmission:
    """ASGI middleware: at most `limit` websockets at a time between handshake and first send."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.places: asyncio.Semaphore | None = None  # made on the serving loop, when first used

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self.places is None:
            self.places = asyncio.Semaphore(self.limit)
        await self.places.acquire()
        place = Place(self.places, send)
        try:
            await self.app(scope, receive, place.send)
        finally:
            place.leave()


class Place:
    """A socket's place among those being set up, freed at its first send or after `MAX_HOLD`.

    Its `send` stands in for the server's for the socket's whole life: an object with slots,
    where closures cost each of 10,000 idle sockets 0.6 KiB more.
    """

    __slots__ = ("deadline", "places", "server_send")

    def __init__(self, places: asyncio.Semaphore, server_send: ASGISendCallable) -> None:
        self.places = places
        self.server_send = server_send
        self.deadline: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            MAX_HOLD, self.leave
        )

    def leave(self) -> None:
        """Free the place, if it is still held."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
            self.places.release()

    async def send(self, message: ASGISendEvent) -> None:
        """Send `message`; the first thing a socket sends frees its place."""
        if self.deadline is not None and message["type"] in FIRST_SENDS:
            self.leave()
        await self.server_send(message)


def init_app(app: Quart) -> None:
    """Set websockets up `WS_MAX_SETUPS` at a time."""
    app.asgi_app = WebsocketAdmission(  # type: ignore[method-assign]
        app.asgi_app, app.config["WS_MAX_SETUPS"]
    )

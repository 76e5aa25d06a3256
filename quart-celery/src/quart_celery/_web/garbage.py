"""Keep what start-up made out of the garbage collector's full passes while the app serves.

A server process holds a large, long-lived heap of modules, classes and app objects (about
75,000 objects once the app is built). CPython's full (generation 2) collection walks all of
them, and took 50 to 70 ms here each time it ran under load: a pause of the event loop that every
socket waiting for a push shares. `gc.freeze()` once serving has started moves those objects to
a generation the collector never visits, so full passes only walk what was made since; the p99
of websocket delivery fell from about 35 ms to about 10 ms (`bench/latency.py`). Frozen objects
are still freed when their reference count drops; only cycles among them wait for
`gc.unfreeze()`, which runs when serving stops.

While it serves, a full pass also waits for 100 passes of the middle generation rather than
CPython's 10. A burst of long-lived objects (1,000 websockets connecting) otherwise set off a
full pass again and again, each 40 to 175 ms, each walking everything (CPython starts one
whenever the objects waiting since the last exceed a quarter of those that survived it; this
keeps that rule). Garbage in cycles among old objects is collected less often: a little more
memory, for a loop that does not stop.

The freeze follows the server's ASGI lifespan: it happens once start-up is complete, so that
what every extension opened when serving started (the user's too, whatever their order) is
frozen with the rest, and is undone when shutdown begins.
"""

from __future__ import annotations

import gc

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGIReceiveEvent,
    ASGISendCallable,
    ASGISendEvent,
    Scope,
)
from quart import Quart

from quart_celery._protection.admission import ASGIApp

#: Passes of the middle generation between two full passes, while serving (CPython's: 10).
FULL_PASS_AFTER = 100


class FrozenStartUpHeap:
    """ASGI middleware: freeze the heap when the lifespan's start-up is complete, thaw it when
    its shutdown begins."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: CPython's thresholds, while the heap is frozen.
        self.thresholds: tuple[int, int, int] | None = None

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def receive_and_thaw() -> ASGIReceiveEvent:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.thaw()
            return message

        async def send_and_freeze(message: ASGISendEvent) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.freeze()
            await send(message)

        await self.app(scope, receive_and_thaw, send_and_freeze)

    def freeze(self) -> None:
        """Move what start-up made out of the full passes' way; make full passes rarer."""
        gc.collect()  # what start-up left as garbage is not worth keeping forever
        gc.freeze()
        self.thresholds = gc.get_threshold()
        gc.set_threshold(self.thresholds[0], self.thresholds[1], FULL_PASS_AFTER)

    def thaw(self) -> None:
        """Undo `freeze`, if it was done."""
        if self.thresholds is not None:
            gc.set_threshold(*self.thresholds)
            self.thresholds = None
            gc.unfreeze()


def init_app(app: Quart) -> None:
    """Freeze the heap while the app serves (under an ASGI server, as `hypercorn` runs it)."""
    app.asgi_app = FrozenStartUpHeap(app.asgi_app)  # type: ignore[method-assign]

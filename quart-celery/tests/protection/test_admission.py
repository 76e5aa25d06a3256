"""Websockets are set up a few at a time: the middleware, around a stand-in ASGI app."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

from quart_celery._protection import admission
from quart_celery._protection.admission import WebsocketAdmission
from quart_celery.testing import wait_for_async


class SetUp:
    """A stand-in app: each socket counts itself in, waits to be told, then sends."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.go = asyncio.Event()
        self.sent: list[str] = []

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        assert scope["type"] == "websocket"
        self.inside += 1
        self.most = max(self.most, self.inside)
        await self.go.wait()
        self.inside -= 1
        if scope["path"] != "/listens-only":
            await send({"type": "websocket.send", "bytes": None, "text": "snapshot"})
            self.sent.append(scope["path"])


async def nothing_received() -> dict[str, str]:
    return {"type": "websocket.disconnect"}


async def sent_to_nobody(message: ASGISendEvent) -> None:
    pass


def inside(app: SetUp, count: int) -> Callable[[], Awaitable[bool]]:
    """For `wait_for_async`: whether `count` sockets are being set up."""

    async def check() -> bool:
        return app.inside == count

    return check


async def a_few_turns() -> None:
    """Let the event loop come round a few times: whatever could run, has."""
    for _ in range(20):
        await asyncio.sleep(0)


def connect(app: WebsocketAdmission, path: str) -> asyncio.Task[None]:
    scope = {"type": "websocket", "path": path}
    return asyncio.create_task(app(scope, nothing_received, sent_to_nobody))  # type: ignore[arg-type]


async def test_at_most_the_limit_are_set_up_at_once_and_the_rest_wait_their_turn() -> None:
    app = SetUp()
    admitted = WebsocketAdmission(app, limit=3)
    sockets = [connect(admitted, f"/ws/{n}") for n in range(10)]
    await wait_for_async(inside(app, 3), 5, "three sockets to be set up")
    await a_few_turns()
    assert app.inside == 3  # seven wait for a place
    app.go.set()
    await asyncio.wait_for(asyncio.gather(*sockets), 5)
    assert app.most == 3
    assert len(app.sent) == 10


async def test_a_socket_that_sends_nothing_gives_its_place_up_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admission, "MAX_HOLD", 0.1)
    app = SetUp()
    admitted = WebsocketAdmission(app, limit=1)
    listener = connect(admitted, "/listens-only")  # never sends while set up
    await wait_for_async(inside(app, 1), 5, "the listener to be set up")
    follower = connect(admitted, "/ws/1")
    await a_few_turns()
    assert app.inside == 1  # the follower waits...
    # ...until the listener has held its place for MAX_HOLD.
    await wait_for_async(inside(app, 2), 5, "the follower to get the listener's place")
    app.go.set()
    await asyncio.wait_for(asyncio.gather(listener, follower), 5)


async def test_other_requests_pass_straight_through() -> None:
    calls: list[str] = []

    async def http(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        calls.append(scope["type"])

    admitted = WebsocketAdmission(http, limit=1)
    await admitted({"type": "http"}, nothing_received, sent_to_nobody)  # type: ignore[arg-type]
    assert calls == ["http"]
    assert admitted.places is None  # no place was needed

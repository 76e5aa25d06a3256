"""The lighter websocket connection behaves as Quart's: driven through a real Quart app's ASGI
interface with hand-made messages (the in-process test client uses a connection of its own;
the fault and browser tests drive it through hypercorn)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypercorn.typing import ASGISendEvent, ConnectionState, WebsocketScope
from quart import Quart, websocket
from quart.wrappers import base as quart_wrappers

from quart_celery._web import connection
from quart_celery._web.connection import Mailbox
from quart_celery.testing import wait_for_async


class Client:
    """The server's side of one socket: what the client sends, in order, and what it got."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for message in ({"type": "websocket.connect"}, *messages):
            self.incoming.put_nowait(message)
        self.sent: list[ASGISendEvent] = []

    async def receive(self) -> Any:
        return await self.incoming.get()

    async def send(self, message: ASGISendEvent) -> None:
        self.sent.append(message)

    def texts(self) -> list[str | None]:
        return [m.get("text") for m in self.sent if m["type"] == "websocket.send"]


def scope(path: str) -> WebsocketScope:
    return {
        "type": "websocket",
        "asgi": {"spec_version": "2.3", "version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        "state": ConnectionState({}),
    }


@pytest.fixture
def app() -> Quart:
    app = Quart(__name__)
    connection.init_app(app)
    app.extensions["ended"] = []

    @app.websocket("/echo")
    async def echo() -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message == "bye":
                return
            assert isinstance(message, str)
            await websocket.send(f"echo {message}")

    @app.websocket("/waits")
    async def waits() -> None:
        await websocket.accept()
        try:
            await asyncio.Future()
        finally:
            app.extensions["ended"].append("waits")

    return app


async def test_messages_reach_the_handler_in_order_and_its_return_closes_the_socket(
    app: Quart,
) -> None:
    client = Client(*({"type": "websocket.receive", "text": t} for t in ("a", "b", "bye")))
    await asyncio.wait_for(app(scope("/echo"), client.receive, client.send), 10)
    assert client.sent[0]["type"] == "websocket.accept"
    assert client.texts() == ["echo a", "echo b"]
    assert client.sent[-1] == {"type": "websocket.close", "code": 1000}


async def test_the_client_going_away_cancels_the_handler_and_ends_the_call(app: Quart) -> None:
    client = Client({"type": "websocket.disconnect", "code": 1001})
    await asyncio.wait_for(app(scope("/waits"), client.receive, client.send), 10)
    assert app.extensions["ended"] == ["waits"]


async def test_a_cancellation_from_outside_goes_on(app: Quart) -> None:
    client = Client()  # connects, then sends nothing
    call = asyncio.ensure_future(app(scope("/waits"), client.receive, client.send))

    async def accepted() -> bool:
        return bool(client.sent)

    await wait_for_async(accepted, timeout=10, what="the socket accepted")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert app.extensions["ended"] == ["waits"]


async def test_a_failure_to_read_ends_the_handler_and_reaches_the_server(app: Quart) -> None:
    class Broken(Exception):
        pass

    client = Client()

    async def receive() -> Any:
        if client.incoming.empty():
            raise Broken
        return await client.receive()

    with pytest.raises(Broken):
        await asyncio.wait_for(app(scope("/waits"), receive, client.send), 10)
    assert app.extensions["ended"] == ["waits"]


async def test_a_mailbox_hands_messages_over_in_order_to_a_waiting_reader() -> None:
    mailbox = Mailbox()
    reading = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0)
    await mailbox.put("first")
    await mailbox.put(b"second")
    assert await asyncio.wait_for(reading, 10) == "first"
    assert await mailbox.get() == b"second"


@pytest.mark.skipif(not connection.BUFFERED, reason="Quart 0.22 never tells a mailbox")
async def test_a_mailbox_whose_client_went_raises_once_it_is_empty() -> None:
    mailbox = Mailbox()
    await mailbox.put("last")
    reading = asyncio.ensure_future(mailbox.get())
    assert await asyncio.wait_for(reading, 10) == "last"
    waiting = asyncio.ensure_future(mailbox.get())
    await asyncio.sleep(0)
    mailbox.disconnect()
    with pytest.raises(quart_wrappers.ClientDisconnectedError):  # type: ignore[attr-defined]
        await asyncio.wait_for(waiting, 10)

"""Helpers for talking to the app through Quart's test client: the JSON API and websockets."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from hypercorn.typing import ASGISendEvent
from quart.testing.connections import TestWebsocketConnection
from quart.typing import TestClientProtocol as Client
from quart.typing import TestWebsocketConnectionProtocol as Socket

from tests.waiting import wait_for_async

TIMEOUT = 20.0
FINAL = ("SUCCESS", "FAILURE", "REVOKED")


class WebsocketClosed(Exception):
    """The server closed the socket, with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class ClosingWebsocket(TestWebsocketConnection):
    """Quart's test websocket, on which reading a socket the server closed raises
    `WebsocketClosed` with the close code.

    Quart 0.22 raised its own `WebsocketDisconnectError(code)`; Quart 0.23 tells nothing of a
    close (the read waits for good), so the tests read close codes through this on both.
    `tests/conftest.py` makes every test client use it.
    """

    async def _asgi_send(self, message: ASGISendEvent) -> None:
        if message["type"] != "websocket.close":
            await super()._asgi_send(message)
            return
        await self._receive_queue.put(WebsocketClosed(message.get("code", 1000)))
        await self.disconnect()  # as a server does once the app has closed

    async def __aexit__(self, exc_type: type, exc_value: BaseException, tb: TracebackType) -> None:
        await self.disconnect()
        await self._task
        while not self._receive_queue.empty():
            data = await self._receive_queue.get()
            if isinstance(data, Exception) and not isinstance(data, WebsocketClosed):
                raise data


async def submit(client: Client, name: str, **kwargs: Any) -> dict[str, Any]:
    """POST a task that must be accepted (202); the accepted body."""
    response = await client.post("/api/tasks", json={"name": name, "kwargs": kwargs})
    assert response.status_code == 202, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def snapshot(client: Client, task_id: str) -> dict[str, Any]:
    """GET a task's snapshot (200)."""
    response = await client.get(f"/api/tasks/{task_id}")
    assert response.status_code == 200, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def snapshot_in(client: Client, task_id: str, *states: str) -> dict[str, Any]:
    """The task's snapshot once it is in one of `states`."""

    async def arrived() -> dict[str, Any] | None:
        body = await snapshot(client, task_id)
        return body if body["state"] in states else None

    return await wait_for_async(arrived, TIMEOUT, f"task {task_id} to be in {states}")


async def finished(client: Client, task_id: str) -> dict[str, Any]:
    """The snapshot once the task has ended."""
    return await snapshot_in(client, task_id, *FINAL)


async def error_of(response: Any) -> dict[str, str]:
    """The error of an error answer, checking its shape."""
    body = await response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    error: dict[str, str] = body["error"]
    return error


async def messages_until_closed(socket: Socket) -> tuple[list[dict[str, Any]], int]:
    """Every message the server sends, and the code it closes with."""
    received: list[dict[str, Any]] = []
    while True:
        try:
            received.append(await socket.receive_json())
        except WebsocketClosed as closed:
            return received, closed.code

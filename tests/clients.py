"""Helpers for talking to the app through Quart's test client: the JSON API and websockets."""

from __future__ import annotations

from typing import Any

from quart.testing.connections import WebsocketDisconnectError
from quart.typing import TestClientProtocol as Client
from quart.typing import TestWebsocketConnectionProtocol as Socket

from tests.waiting import wait_for_async

TIMEOUT = 20.0
FINAL = ("SUCCESS", "FAILURE", "REVOKED")


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
        except WebsocketDisconnectError as closed:
            return received, closed.args[0]

"""Who gets in: API tokens, watch tickets, websocket origins, and the socket limit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from quart import Quart
from quart.testing.connections import WebsocketResponseError
from quart.typing import TestClientProtocol as Client
from quart.typing import TestWebsocketConnectionProtocol as Socket

from quart_celery import watch_ticket
from quart_celery._protection.access import Access
from quart_celery.testing import submit
from tests.probe_app import create_app

TOKENS = "first-token, second-token"
TASK = {"name": "tests.echo", "kwargs": {"message": "hi"}}


@pytest.fixture
async def guarded_app(redis_client: redis.Redis) -> AsyncIterator[Quart]:
    """An app that requires one of two tokens, serving."""
    app = create_app({"TESTING": True, "API_TOKEN": TOKENS})
    async with app.test_app():
        yield app


@pytest.fixture
def guarded(guarded_app: Quart) -> Client:
    """A test client of the app that requires one of two tokens."""
    return guarded_app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refused(client: Client, path: str, **options: Any) -> tuple[int, dict[str, Any]]:
    """The status and JSON body a refused websocket handshake is answered with."""
    with pytest.raises(WebsocketResponseError) as refusal:
        async with client.websocket(path, **options) as socket:
            await socket.receive()
    response = refusal.value.response
    return response.status_code, await response.get_json()


async def test_an_open_app_says_so_once_when_serving_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app({"TESTING": True})
        assert "API_TOKEN" not in caplog.text  # building it, as Celery's commands do: quiet
        async with app.test_app():
            pass
    assert caplog.text.count("API_TOKEN is not set") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        async with create_app({"TESTING": True, "API_TOKEN": TOKENS}).test_app():
            pass
    assert "API_TOKEN" not in caplog.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(""),
        {"Authorization": "first-token"},
        {"Authorization": "Basic Zmlyc3QtdG9rZW4="},
    ],
    ids=["none", "wrong", "empty", "no-scheme", "basic"],
)
async def test_the_api_needs_a_token(guarded: Client, headers: dict[str, str]) -> None:
    for response in (
        await guarded.post("/api/tasks", json=TASK, headers=headers),
        await guarded.get("/api/tasks/3b241101-e2bb-4255-8caf-4136c566a962", headers=headers),
    ):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await response.get_json())["error"]["code"] == "unauthorized"


async def test_workflows_need_a_token_and_a_ticket_opens_its_socket(
    guarded_app: Quart, guarded: Client
) -> None:
    workflow = {"group": [TASK]}
    unknown = "3b241101-e2bb-4255-8caf-4136c566a962"
    for response in (
        await guarded.post("/api/workflows", json=workflow),
        await guarded.get(f"/api/workflows/{unknown}"),
        await guarded.delete(f"/api/workflows/{unknown}"),
    ):
        assert response.status_code == 401
    response = await guarded.post("/api/workflows", json=workflow, headers=bearer("first-token"))
    workflow_id = (await response.get_json())["id"]
    assert (await refused(guarded, f"/ws/workflows/{workflow_id}"))[0] == 401
    async with guarded_app.app_context():
        ticket = watch_ticket(workflow_id)
    async with guarded.websocket(
        f"/ws/workflows/{workflow_id}", query_string={"ticket": ticket}
    ) as ws:
        assert (await ws.receive_json())["id"] == workflow_id


async def test_either_token_opens_the_api(guarded: Client) -> None:
    for token in ("first-token", "second-token"):
        response = await guarded.post("/api/tasks", json=TASK, headers=bearer(token))
        assert response.status_code == 202
        task_url = (await response.get_json())["url"]
        assert (await guarded.get(task_url, headers=bearer(token))).status_code == 200


async def test_health_and_the_apps_own_routes_need_no_token(guarded: Client) -> None:
    assert (await guarded.get("/healthz")).status_code == 200
    assert (await guarded.get("/")).status_code == 200
    # The app's own routes are the app's to guard: the bridge's tokens are for its own.
    assert (await guarded.post("/echo", json={"message": "hi"})).status_code == 202


async def test_websockets_need_a_token_in_the_header_or_the_query(guarded: Client) -> None:
    response = await guarded.post("/api/tasks", json=TASK, headers=bearer("first-token"))
    task_id = (await response.get_json())["id"]
    for path in (f"/ws/tasks/{task_id}", "/ws/tasks"):
        status, body = await refused(guarded, path)
        assert (status, body["error"]["code"]) == (401, "unauthorized")
        status, _ = await refused(guarded, path, query_string={"token": "wrong"})
        assert status == 401
    async with guarded.websocket(f"/ws/tasks/{task_id}", headers=bearer("second-token")) as ws:
        assert (await ws.receive_json())["id"] == task_id
    async with guarded.websocket(
        f"/ws/tasks/{task_id}", query_string={"token": "first-token"}
    ) as ws:
        assert (await ws.receive_json())["id"] == task_id


async def test_a_ticket_opens_its_own_task_and_no_other(
    guarded_app: Quart, guarded: Client
) -> None:
    first, second = [
        (
            await (
                await guarded.post("/api/tasks", json=TASK, headers=bearer("first-token"))
            ).get_json()
        )["id"]
        for _ in range(2)
    ]
    async with guarded_app.app_context():  # as a page of the app makes one
        ticket = watch_ticket(first)
    async with guarded.websocket(f"/ws/tasks/{first}", query_string={"ticket": ticket}) as ws:
        assert (await ws.receive_json())["id"] == first
    assert (await refused(guarded, f"/ws/tasks/{second}", query_string={"ticket": ticket}))[
        0
    ] == 401
    assert (await refused(guarded, "/ws/tasks", query_string={"ticket": ticket}))[0] == 401
    forged = ticket[:-2] + ("AA" if not ticket.endswith("AA") else "BB")
    assert (await refused(guarded, f"/ws/tasks/{first}", query_string={"ticket": forged}))[0] == 401


async def test_a_ticket_of_another_app_opens_nothing(guarded_app: Quart, guarded: Client) -> None:
    # Signed with the same key, for the same task, by an app of another name: tickets are
    # salted with the app's name, so one app's pages open nothing of another's.
    answer = await guarded.post("/api/tasks", json=TASK, headers=bearer("first-token"))
    task_id = (await answer.get_json())["id"]
    other = Quart("another_app")
    other.config.update(guarded_app.config)
    other.extensions["quart_celery.access"] = Access(other)
    async with other.app_context():
        ticket = watch_ticket(task_id)
    status, _ = await refused(guarded, f"/ws/tasks/{task_id}", query_string={"ticket": ticket})
    assert status == 401


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),  # not a browser
        ("http://localhost", True),  # the server's own pages
        ("https://app.example", True),  # in WS_ALLOWED_ORIGINS
        ("https://evil.example", False),
        ("http://localhost.evil.example", False),
        ("null", False),
    ],
)
@pytest.mark.settings(WS_ALLOWED_ORIGINS="https://app.example/")
async def test_websockets_from_other_origins_are_refused(
    client: Client, origin: str | None, allowed: bool
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    headers = {} if origin is None else {"Origin": origin}
    if allowed:
        async with client.websocket(f"/ws/tasks/{task_id}", headers=headers) as socket:
            assert (await socket.receive_json())["id"] == task_id
    else:
        status, body = await refused(client, f"/ws/tasks/{task_id}", headers=headers)
        assert (status, body["error"]["code"]) == (403, "origin_not_allowed")


async def answers(socket: Socket) -> bool:
    """Whether a many-task socket is open and answering (a message naming no task: an error)."""
    await socket.send_json({})
    return bool((await socket.receive_json())["error"]["code"] == "invalid_message")


@pytest.mark.settings(WS_MAX_SOCKETS=2)
async def test_a_process_keeps_at_most_the_configured_number_of_sockets(client: Client) -> None:
    async with client.websocket("/ws/tasks") as first, client.websocket("/ws/tasks") as second:
        assert await answers(first)
        assert await answers(second)
        status, body = await refused(client, "/ws/tasks")
        assert (status, body["error"]["code"]) == (503, "too_many_sockets")
    # Closed sockets free their places.
    for _ in range(3):
        async with client.websocket("/ws/tasks") as socket:
            assert await answers(socket)

"""Websockets through Quart's test client, with a real worker and the real pub/sub listener."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery.testing import (
    TIMEOUT,
    ThreadWorker,
    finished,
    messages_until_closed,
    submit,
    wait_for_async,
)
from tests.worker_tasks import retried_once

#: A task id in Celery's form that nobody publishes (the tests' database is flushed).
NEVER_SENT = "3b241101-e2bb-4255-8caf-4136c566a962"


async def test_a_task_is_followed_from_its_snapshot_to_its_end(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = (await submit(client, "tests.count", steps=3, delay=0.05))["id"]
    with thread_worker(celery):
        async with client.websocket(f"/ws/tasks/{task_id}") as socket:
            received, code = await messages_until_closed(socket)
    assert code == 1000
    assert received[0]["id"] == task_id
    states = [message["state"] for message in received]
    # The first is whatever the task was at connect; then every change, in order, once.
    expected = ["PENDING", "STARTED", "PROGRESS", "PROGRESS", "PROGRESS", "SUCCESS"]
    assert states == expected[expected.index(states[0]) :]
    progress = [message["progress"] for message in received if message["state"] == "PROGRESS"]
    assert progress == [{"current": n, "total": 3} for n in range(4 - len(progress), 4)]
    assert received[-1]["result"] == {"steps": 3}
    assert all(message["error"] is None for message in received)
    assert all(a != b for a, b in itertools.pairwise(received))


async def test_a_finished_task_gets_its_snapshot_and_a_close(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    with thread_worker(celery):
        task_id = (await submit(client, "tests.fail", message="boom"))["id"]
        await finished(client, task_id)
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 1000
    assert [message["state"] for message in received] == ["FAILURE"]
    assert received[0]["error"] == {"type": "ValueError", "message": "boom"}


async def test_a_retried_task_sends_retry_and_starts_again(
    client: Client, celery: Celery, redis_client: redis.Redis, thread_worker: ThreadWorker
) -> None:
    # Not a task the API offers: published here, and recorded as it is published.
    task_id = retried_once.delay().id
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        assert (await socket.receive_json())["state"] == "PENDING"
        # One task at a time: the retry runs after RETRY is stored, not beside it.
        with thread_worker(celery, pool="solo"):
            received, code = await messages_until_closed(socket)
    assert code == 1000
    assert [message["state"] for message in received] == ["STARTED", "RETRY", "STARTED", "SUCCESS"]
    assert all(message["error"] is None for message in received)
    assert received[-1]["result"]["retries"] == 1


async def test_a_task_revoked_while_watched_sends_revoked_and_closes(client: Client) -> None:
    task_id = (await submit(client, "tests.echo", message="never"))["id"]  # no worker runs
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        assert (await socket.receive_json())["state"] == "PENDING"
        response = await client.delete(f"/api/tasks/{task_id}")
        assert response.status_code == 202
        received, code = await messages_until_closed(socket)
    assert code == 1000
    assert [message["state"] for message in received] == ["REVOKED"]


@pytest.mark.parametrize("task_id", [NEVER_SENT, "not-an-id"])
async def test_an_unknown_task_gets_one_error_and_4404(client: Client, task_id: str) -> None:
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 4404
    assert len(received) == 1
    assert received[0]["error"]["code"] == "not_found"
    assert "state" not in received[0]


async def test_one_socket_follows_many_tasks(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    first = (await submit(client, "tests.echo", message="one"))["id"]
    second = (await submit(client, "tests.async_echo", message="two"))["id"]
    async with client.websocket("/ws/tasks") as socket:
        await socket.send_json({"subscribe": [first, second]})
        with thread_worker(celery):
            ended: dict[str, dict[str, Any]] = {}
            while len(ended) < 2:
                message = await socket.receive_json()
                assert message["id"] in (first, second)
                assert message["error"] is None
                if message["state"] == "SUCCESS":
                    ended[message["id"]] = message
    assert ended[first]["result"] == "one"
    assert ended[second]["result"] == {"message": "two", "app": "probe_app"}


async def test_errors_on_the_many_tasks_socket_keep_it_open(client: Client) -> None:
    known = (await submit(client, "tests.echo", message="queued"))["id"]
    unknown = str(uuid.uuid4())
    async with client.websocket("/ws/tasks") as socket:
        for malformed in ("not json", '["subscribe"]', '{"subscribe": "x"}', '{"other": []}'):
            await socket.send(malformed)
            error = await socket.receive_json()
            assert error["error"]["code"] == "invalid_message"
            assert "state" not in error
        await socket.send_json({"subscribe": [unknown, "not-an-id", known]})
        assert await socket.receive_json() == {
            "id": unknown,
            "error": {"code": "not_found", "message": f"No task {unknown} was submitted here."},
        }
        assert (await socket.receive_json())["id"] == "not-an-id"
        snapshot = await socket.receive_json()
        assert (snapshot["id"], snapshot["state"], snapshot["error"]) == (known, "PENDING", None)


@pytest.mark.settings(WS_MAX_TASKS=1)
async def test_a_socket_watches_at_most_the_configured_number_of_tasks(client: Client) -> None:
    first = (await submit(client, "tests.echo", message="1"))["id"]
    second = (await submit(client, "tests.echo", message="2"))["id"]
    async with client.websocket("/ws/tasks") as socket:
        await socket.send_json({"subscribe": [first, second]})
        replies = [await socket.receive_json(), await socket.receive_json()]
    errors = [reply for reply in replies if reply.get("error")]
    assert [error["error"]["code"] for error in errors] == ["too_many_tasks"]
    assert errors[0]["id"] == second


async def test_a_socket_that_goes_leaves_nothing_behind(app: Quart, client: Client) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    listener = app.extensions["quart_celery.result_listener"]
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        assert (await socket.receive_json())["state"] == "PENDING"
        assert task_id in listener.recipients
    async with client.websocket("/ws/tasks") as socket:
        await socket.send_json({"subscribe": [task_id]})
        assert (await socket.receive_json())["state"] == "PENDING"

    async def forgotten() -> bool:
        return not listener.recipients

    await wait_for_async(forgotten, TIMEOUT, "the sockets' watches to go")


async def test_after_the_listener_loses_redis_sockets_get_the_current_state(
    app: Quart, client: Client, celery: Celery, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    listener = app.extensions["quart_celery.result_listener"]
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        assert (await socket.receive_json())["state"] == "PENDING"
        await wait_for_async(_is_set(listener.subscribed), TIMEOUT, "the listener to subscribe")
        # Drop this listener's own connection, as a Redis restart would.
        connections = redis_client.client_list()
        ours = [c["id"] for c in connections if c["name"] == listener.client_name]
        assert len(ours) == 1
        redis_client.client_kill_filter(_id=ours[0])
        celery.backend.mark_as_started(task_id)  # published while the listener may be away
        message = await socket.receive_json()
        assert message["state"] == "STARTED"
    await wait_for_async(_is_set(listener.subscribed), TIMEOUT, "the listener to come back")


def _is_set(event: Any) -> Any:
    async def check() -> bool:
        return bool(event.is_set())

    return check


@pytest.mark.parametrize("path", ["/ws/tasks/{id}", "/ws/tasks"])
@pytest.mark.settings(WS_MAX_MESSAGE_SIZE=100)
async def test_a_message_over_the_size_limit_closes_the_socket_with_1009(
    client: Client, path: str
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    async with client.websocket(path.format(id=task_id)) as socket:
        if "{id}" in path:
            assert (await socket.receive_json())["state"] == "PENDING"
            # Messages on the one-task socket are read and ignored, up to the limit.
            await socket.send("x" * 100)
        await socket.send("x" * 101)
        received, code = await messages_until_closed(socket)
    assert code == 1009
    assert [message["error"]["code"] for message in received] == ["message_too_big"]


async def test_an_id_in_capitals_is_followed_under_its_usual_form(client: Client) -> None:
    task_id = (await submit(client, "tests.echo", message="never"))["id"]  # no worker runs
    async with client.websocket("/ws/tasks") as socket:
        # Only the form task ids come in is one: not the others `uuid.UUID()` reads.
        await socket.send_json({"subscribe": [task_id.upper(), f"{{{task_id}}}"]})
        first, second = await socket.receive_json(), await socket.receive_json()
        snapshot, error = (first, second) if "state" in first else (second, first)
        assert (snapshot["id"], snapshot["state"]) == (task_id, "PENDING")
        assert (error["id"], error["error"]["code"]) == (f"{{{task_id}}}", "not_found")
        # Updates reach it: they are published under the usual form.
        assert (await client.delete(f"/api/tasks/{task_id}")).status_code == 202
        revoked = await socket.receive_json()
        assert (revoked["id"], revoked["state"]) == (task_id, "REVOKED")


@pytest.mark.parametrize("path", ["/ws/tasks/{id}", "/ws/tasks"])
async def test_states_a_task_records_itself_are_pushed_with_their_meta(
    client: Client, celery: Celery, thread_worker: ThreadWorker, path: str
) -> None:
    task_id = (await submit(client, "tests.uploads", files=["a.txt", "b.txt"]))["id"]
    async with client.websocket(path.format(id=task_id)) as socket:
        if path == "/ws/tasks":
            await socket.send_json({"subscribe": [task_id]})
        received = [await socket.receive_json()]
        with thread_worker(celery):
            while received[-1]["state"] != "SUCCESS":
                received.append(await socket.receive_json())
    changes = [(message["state"], message["meta"]) for message in received]
    # A new meta under the same state is a change; the first is what the task was at connect.
    expected = [
        ("PENDING", None),
        ("STARTED", None),
        *[("UPLOADING", {"file": f, "percent": p}) for f in ("a.txt", "b.txt") for p in (0, 100)],
        ("PROGRESS", {"current": 1, "total": 1, "status": "all sent"}),
        ("SUCCESS", None),
    ]
    assert changes == expected[expected.index(changes[0]) :]
    assert received[-2]["progress"] == {"current": 1, "total": 1}
    assert received[-1]["result"] == {"uploaded": 2}


@pytest.mark.parametrize(
    "message",
    ["{}", '{"subscribe": []}', '{"unsubscribe": []}', '{"subscribe": [], "unsubscribe": []}'],
)
async def test_a_message_that_names_no_task_is_answered(client: Client, message: str) -> None:
    async with client.websocket("/ws/tasks") as socket:
        await socket.send(message)
        answer = await socket.receive_json()
    assert answer["error"]["code"] == "invalid_message"
    assert set(answer) == {"error"}


async def test_each_unsubscribed_id_is_acknowledged_and_then_nothing_more_of_it(
    client: Client,
) -> None:
    first = (await submit(client, "tests.echo", message="1"))["id"]  # no worker: both wait
    second = (await submit(client, "tests.echo", message="2"))["id"]
    async with client.websocket("/ws/tasks") as socket:
        await socket.send_json({"subscribe": [first]})
        assert (await socket.receive_json())["state"] == "PENDING"
        await socket.send_json({"unsubscribe": [first.upper(), "never-followed"]})
        acks = [await socket.receive_json(), await socket.receive_json()]
        assert acks == [
            {"id": first, "unsubscribed": True},
            {"id": "never-followed", "unsubscribed": True},
        ]
        # A change of the first after its acknowledgement is not sent; the second's is.
        assert (await client.delete(f"/api/tasks/{first}")).status_code == 202
        await socket.send_json({"subscribe": [second]})
        assert (await socket.receive_json())["id"] == second
        assert (await client.delete(f"/api/tasks/{second}")).status_code == 202
        revoked = await socket.receive_json()
    assert (revoked["id"], revoked["state"]) == (second, "REVOKED")


async def test_a_task_that_cannot_be_served_ends_its_socket_with_1011(
    client: Client, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    redis_client.set(f"celery-task-meta-{task_id}", b"\xff not json")
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        received, code = await messages_until_closed(socket)
    assert code == 1011
    assert [message["error"]["code"] for message in received] == ["internal_error"]


async def test_a_task_that_cannot_be_served_costs_only_itself_on_the_many_tasks_socket(
    client: Client, redis_client: redis.Redis
) -> None:
    broken = (await submit(client, "tests.echo", message="broken"))["id"]
    healthy = (await submit(client, "tests.echo", message="healthy"))["id"]
    redis_client.set(f"celery-task-meta-{broken}", b"\xff not json")
    async with client.websocket("/ws/tasks") as socket:
        await socket.send_json({"subscribe": [broken, healthy]})
        first, second = await socket.receive_json(), await socket.receive_json()
        error, pending = (first, second) if "state" not in first else (second, first)
        assert (error["id"], error["error"]["code"]) == (broken, "internal_error")
        assert "state" not in error
        assert (pending["id"], pending["state"]) == (healthy, "PENDING")
        # The socket and the healthy task carry on.
        assert (await client.delete(f"/api/tasks/{healthy}")).status_code == 202
        revoked = await socket.receive_json()
    assert (revoked["id"], revoked["state"]) == (healthy, "REVOKED")


@pytest.mark.settings(WS_QUEUE_SIZE=3)
async def test_a_socket_more_than_its_queue_behind_is_closed_with_1013(
    app: Quart, client: Client
) -> None:
    task_id = (await submit(client, "tests.count", steps=10))["id"]
    listener = app.extensions["quart_celery.result_listener"]
    async with client.websocket(f"/ws/tasks/{task_id}") as socket:
        assert (await socket.receive_json())["state"] == "PENDING"
        # Four updates at once, with no chance for the socket to take one in between.
        for current in range(1, 5):
            meta = {"status": "PROGRESS", "result": {"current": current, "total": 10}}
            listener.handle(
                {
                    "type": "message",
                    "channel": f"celery-task-meta-{task_id}".encode(),
                    "data": json.dumps(meta).encode(),
                }
            )
        received, code = await messages_until_closed(socket)
    assert code == 1013
    assert received[-1] == {
        "error": {"code": "too_slow", "message": "The client fell too far behind."}
    }

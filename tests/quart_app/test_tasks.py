"""The example tasks: what each does, and what the API lets a client send to each.

These are the only tests, with those of the pages, that know the examples: an app that
replaces them replaces these tests too.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client
from quart_celery.testing import (
    ThreadWorker,
    error_of,
    finished,
    messages_until_closed,
    submit,
    wait_for_async,
)

from quart_app.tasks import (
    MAX_PLANNED_SECONDS,
    async_task,
    failing_task,
    progress_task,
    simple_task,
    square,
    stream_text,
    total,
)

EXAMPLES = (
    "simple_task",
    "progress_task",
    "async_task",
    "failing_task",
    "square",
    "total",
    "stream_text",
)
SUM_OF_SQUARES = {
    "chord": {
        "header": [{"name": "square", "kwargs": {"x": x}} for x in (1, 2, 3)],
        "body": {"name": "total"},
    }
}


def test_simple_task_returns_its_message(app: Quart) -> None:
    assert simple_task("hello") == "hello"


def test_progress_task_returns_its_steps(app: Quart) -> None:
    assert progress_task(3, delay=0) == {"steps": 3}


def test_async_task_is_awaited_in_the_app_context(app: Quart) -> None:
    assert async_task("hello") == {"message": "hello", "app": "quart_app"}


def test_failing_task_raises_its_message(app: Quart) -> None:
    with pytest.raises(ValueError, match=r"^boom$"):
        failing_task("boom")


def test_stream_text_called_directly_returns_its_text(app: Quart) -> None:
    # Called as a plain function, not by a worker, its words go nowhere.
    assert stream_text("one two", delay=0) == "one two"


def test_square_returns_its_square(app: Quart) -> None:
    assert square(-7) == 49


def test_total_adds_up_its_values(app: Quart) -> None:
    assert total([1, 4, 9]) == 14
    assert total([]) == 0


async def test_each_example_is_exposed_under_its_function_name(client: Client) -> None:
    document = await (await client.get("/openapi.json")).get_json()
    request = document["paths"]["/api/tasks"]["post"]["requestBody"]["content"]
    variants = request["application/json"]["schema"]["discriminator"]["mapping"]
    assert set(EXAMPLES) <= set(variants)
    tasks = (simple_task, progress_task, async_task, failing_task, square, total, stream_text)
    assert [task.name for task in tasks] == list(EXAMPLES)


@pytest.mark.parametrize(
    ("name", "kwargs", "ended"),
    [
        ("simple_task", {"message": "hi"}, ("SUCCESS", "hi", None)),
        ("progress_task", {"steps": 2, "delay": 0}, ("SUCCESS", {"steps": 2}, None)),
        (
            "async_task",
            {"message": "hey"},
            ("SUCCESS", {"message": "hey", "app": "quart_app"}, None),
        ),
        (
            "failing_task",
            {"message": "boom"},
            ("FAILURE", None, {"type": "ValueError", "message": "boom"}),
        ),
        ("square", {"x": 12}, ("SUCCESS", 144, None)),
        ("total", {"values": [1, 4, 9]}, ("SUCCESS", 14, None)),
        ("stream_text", {"text": "a b"}, ("SUCCESS", "a b", None)),
    ],
)
async def test_each_example_sent_from_the_event_loop_runs_on_a_worker(
    app: Quart,
    client: Client,
    celery: Celery,
    thread_worker: ThreadWorker,
    name: str,
    kwargs: dict[str, Any],
    ended: tuple[str, Any, Any],
) -> None:
    task_id = (await submit(client, name, **kwargs))["id"]
    with thread_worker(celery):
        done = await finished(client, task_id)
    assert (done["state"], done["result"], done["error"]) == ended


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "simple_task"}, "kwargs: Field required"),
        ({"name": "simple_task", "kwargs": {}}, "kwargs.message: Field required"),
        ({"name": "simple_task", "kwargs": {"message": ""}}, "kwargs.message"),
        ({"name": "simple_task", "kwargs": {"message": "x" * 1001}}, "at most 1000"),
        ({"name": "simple_task", "kwargs": {"message": 5}}, "kwargs.message"),
        ({"name": "simple_task", "kwargs": {"message": "x", "y": 1}}, "kwargs.y"),
        ({"name": "progress_task", "kwargs": {"steps": 0}}, "kwargs.steps"),
        ({"name": "progress_task", "kwargs": {"steps": 1001}}, "kwargs.steps"),
        ({"name": "progress_task", "kwargs": {"steps": "5"}}, "kwargs.steps"),
        ({"name": "progress_task", "kwargs": {"steps": 5, "delay": 11}}, "kwargs.delay"),
        ({"name": "progress_task", "kwargs": {"steps": 5, "delay": -1}}, "kwargs.delay"),
        ({"name": "progress_task", "kwargs": {"steps": 1000, "delay": 1}}, "at most 600 s"),
        ({"name": "async_task", "kwargs": {"message": "x", "delay": 10.5}}, "kwargs.delay"),
        ({"name": "failing_task", "kwargs": {"message": "x" * 1001}}, "kwargs.message"),
        ({"name": "square", "kwargs": {}}, "kwargs.x: Field required"),
        ({"name": "square", "kwargs": {"x": 1_000_001}}, "kwargs.x"),
        ({"name": "square", "kwargs": {"x": 1.5}}, "kwargs.x"),
        ({"name": "total", "kwargs": {"values": [0] * 1001}}, "kwargs.values"),
        ({"name": "total", "kwargs": {"values": [1, 10**12 + 1]}}, "kwargs.values.1"),
        ({"name": "total", "kwargs": {"values": [1, "2"]}}, "kwargs.values.1"),
        ({"name": "stream_text", "kwargs": {"text": ""}}, "kwargs.text"),
        ({"name": "stream_text", "kwargs": {"text": "x", "delay": 11}}, "kwargs.delay"),
        ({"name": "stream_text", "kwargs": {"text": "w " * 61, "delay": 10}}, "at most 600 s"),
    ],
)
async def test_the_examples_arguments_are_bounded(
    client: Client, redis_client: redis.Redis, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/api/tasks", json=body)
    assert response.status_code == 422
    error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert message in error["message"]
    assert redis_client.llen("celery") == 0  # nothing was sent


async def test_the_bound_on_planned_work_is_documented(client: Client) -> None:
    schemas = (await (await client.get("/openapi.json")).get_json())["components"]["schemas"]
    assert str(MAX_PLANNED_SECONDS) in schemas["ProgressTaskKwargs"]["description"]
    assert schemas["ProgressTaskKwargs"]["properties"]["steps"]["maximum"] == 1000
    assert schemas["ProgressTaskKwargs"]["properties"]["delay"]["default"] == 0.1


async def test_stream_text_streams_its_words_to_a_socket(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = (await submit(client, "stream_text", text="streamed word by word"))["id"]
    with thread_worker(celery):
        async with client.websocket(f"/ws/tasks/{task_id}") as socket:
            received, code = await messages_until_closed(socket)
    assert code == 1000
    chunks = [(message["offset"], message["chunk"]) for message in received if "offset" in message]
    assert chunks == [(0, "streamed"), (1, "word"), (2, "by"), (3, "word")]
    assert received[-1]["state"] == "SUCCESS"
    assert received[-1]["result"] == "streamed word by word"


async def test_square_and_total_run_as_a_chord_sent_to_the_api(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    response = await client.post("/api/workflows", json=SUM_OF_SQUARES)
    assert response.status_code == 202, await response.get_data(as_text=True)
    accepted = await response.get_json()
    assert [task["name"] for task in accepted["tasks"]] == ["square"] * 3 + ["total"]

    async def ended() -> dict[str, Any] | None:
        workflow: dict[str, Any] = await (await client.get(accepted["url"])).get_json()
        return workflow if workflow["done"] == workflow["total"] else None

    with thread_worker(celery):
        workflow = await wait_for_async(ended, 20, "the chord to end")
    assert (workflow["state"], workflow["result"], workflow["failed"]) == ("SUCCESS", 14, 0)
    assert {task["state"] for task in workflow["tasks"]} == {"SUCCESS"}


@pytest.mark.parametrize(
    ("header", "body", "message"),
    [
        (
            [{"name": "square", "kwargs": {"x": 10**7}}],
            {"name": "total"},
            "chord.header[0].kwargs.x",
        ),
        (
            [{"name": "square", "kwargs": {"x": 1}}],
            # The chord gives `values`: the body may not give them too.
            {"name": "total", "kwargs": {"values": []}},
            "chord.body.kwargs.values",
        ),
    ],
)
async def test_a_workflow_of_the_examples_is_checked_where_it_is_wrong(
    client: Client,
    redis_client: redis.Redis,
    header: list[dict[str, Any]],
    body: dict[str, Any],
    message: str,
) -> None:
    response = await client.post("/api/workflows", json={"chord": {"header": header, "body": body}})
    assert response.status_code == 422
    error = await error_of(response)
    assert error["code"] == "invalid_workflow"
    assert error["message"].startswith(message), error["message"]
    assert redis_client.llen("celery") == 0  # nothing was sent

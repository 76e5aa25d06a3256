"""The README's examples of your own code run as written: they are read out of README.md.

These are tests of the examples (the README's route uses the example tasks), not of the bridge.
The README is the front door: short, and every page it links to is there.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from types import ModuleType

import redis
from celery import Celery
from quart.typing import TestClientProtocol as Client
from quart_celery import queue
from quart_celery.testing import ThreadWorker, error_of, messages_until_closed, wait_for_async

from factories.application import create_application
from quart_app.extensions import celery as placeholder

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_example(containing: str, page: Path = README) -> ModuleType:
    """The page's Python example that contains `containing`, run as a module of its own."""
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
    (source,) = [block for block in blocks if containing in block]
    module = ModuleType(f"readme_example_{uuid.uuid4().hex}")
    exec(compile(source, str(page), "exec"), module.__dict__)
    return module


def test_the_readme_is_a_front_door_whose_links_all_lead_somewhere() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    links = re.findall(r"\]\(([^)#:]+)\)", text)
    assert "docs/architecture.md" in links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == []


async def test_the_route_of_your_own_runs_on_the_async_api(
    redis_client: redis.Redis, thread_worker: ThreadWorker
) -> None:
    greetings = readme_example("# quart_app/blueprints/greetings.py")
    app = create_application({"TESTING": True})
    app.register_blueprint(greetings.blueprint)
    async with app.test_app() as test_app:
        client: Client = test_app.test_client()
        with thread_worker(placeholder):
            response = await client.post("/greetings/Ada")
            assert response.status_code == 200
            answer = await response.get_json()
            assert answer["greeting"] == "hello, Ada"
        unknown = await client.post(f"/greetings/{'x' * 1000}")
    assert unknown.status_code == 422  # too long a message for simple_task: nothing sent


async def test_the_workflow_of_your_own_is_followed_on_one_socket(
    redis_client: redis.Redis, thread_worker: ThreadWorker
) -> None:
    sums = readme_example("# quart_app/blueprints/sums.py")
    app = create_application({"TESTING": True})
    app.register_blueprint(sums.blueprint)
    async with app.test_app() as test_app:
        client: Client = test_app.test_client()
        refused = await client.post("/sums/101")
        with thread_worker(placeholder):
            started = await client.post("/sums/4")
            assert started.status_code == 202
            accepted = await started.get_json()
            async with client.websocket(accepted["websocket"]) as socket:
                messages, code = await messages_until_closed(socket)
    assert refused.status_code == 422
    assert (await error_of(refused))["message"] == "count is 101, not 1 to 100."
    assert code == 1000
    assert (messages[0]["id"], messages[0]["total"]) == (accepted["id"], 5)
    assert (messages[-1]["state"], messages[-1]["done"], messages[-1]["result"]) == (
        "SUCCESS",
        5,
        30,  # 1 + 4 + 9 + 16
    )
    # What ended before the socket opened is in the snapshot; the rest came as changes.
    assert {change["task"]["name"] for change in messages[1:]} <= {"square", "total"}


async def test_the_readmes_curl_sends_a_workflow_the_api_takes(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    commands = re.findall(r"```sh\n(curl [^`]*/api/workflows[^`]*)```", README.read_text())
    (body,) = re.findall(r"-d '(.*?)'", commands[0], re.DOTALL)
    started = await client.post("/api/workflows", json=json.loads(body))
    assert started.status_code == 202, await started.get_data(as_text=True)
    url = (await started.get_json())["url"]

    async def ended() -> dict[str, object] | None:
        workflow: dict[str, object] = await (await client.get(url)).get_json()
        return workflow if workflow["state"] == "SUCCESS" else None

    with thread_worker(celery):
        workflow = await wait_for_async(ended, 20, "the README's chord to end")
    assert workflow["result"] == 5  # 1 + 4


async def test_the_exposed_task_of_the_readme_is_accepted_checked_and_documented(
    redis_client: redis.Redis,
) -> None:
    readme_example("@expose(rules=AtMostAMegapixel)")
    app = create_application({"TESTING": True})
    async with app.test_app() as test_app:
        client: Client = test_app.test_client()
        kwargs: dict[str, object] = {"path": "a.png", "width": 800}
        run = {"name": "resize_image", "kwargs": kwargs}
        assert (await client.post("/api/tasks", json=run)).status_code == 202
        kwargs["width"] = 5000
        refused = await client.post("/api/tasks", json=run)
        assert refused.status_code == 422
        error = await error_of(refused)
        assert error["message"] == "kwargs.width: Input should be less than or equal to 4096."
        document = await (await client.get("/openapi.json")).get_json()
    rule = document["components"]["schemas"]["ResizeImageKwargs"]["description"]
    assert rule == "`width * height` may be at most 1,000,000 pixels."


async def test_the_test_of_your_own_passes(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    example = readme_example("async def test_simple_task_runs_on_a_real_worker")
    await example.test_simple_task_runs_on_a_real_worker(client, celery, thread_worker)


async def test_the_streaming_task_of_the_readme_streams_to_a_socket(
    redis_client: redis.Redis, thread_worker: ThreadWorker
) -> None:
    example = readme_example('@celery.task(name="count_down")')
    app = create_application({"TESTING": True})
    async with app.test_app() as test_app:
        client: Client = test_app.test_client()
        async with app.app_context():
            task_id = await queue.submit(example.count_down, 3)
        with thread_worker(placeholder):
            async with client.websocket(f"/ws/tasks/{task_id}") as socket:
                received, code = await messages_until_closed(socket)
            async with app.app_context():
                streamed = [chunk async for chunk in queue.stream(task_id)]
    assert code == 1000
    assert [message["chunk"] for message in received if "offset" in message] == [3, 2, 1]
    assert received[-1]["result"] == "lift-off"
    assert streamed == [3, 2, 1]

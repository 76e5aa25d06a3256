"""The reference under docs/ stays true: every Python example runs as written, the ones that
make routes or tests are run against the app, and every link leads somewhere.

The README's own examples are run by `tests/test_readme.py`.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
import redis
from celery import Celery
from quart.typing import TestClientProtocol as Client
from quart_celery.testing import ProcessWorker, ThreadWorker

from factories.application import create_application
from quart_app.extensions import celery as placeholder
from tests.test_readme import readme_example

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
EXAMPLES = [
    pytest.param(page, number, id=f"{page.stem}-{number}")
    for page in DOCS
    for number, _ in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL))
]


def test_the_reference_has_its_pages() -> None:
    names = {page.stem for page in DOCS}
    assert {"architecture", "configuration", "api", "websockets", "operations"} <= names
    assert {"scaling", "performance", "reliability", "limits", "testing", "tasks"} <= names


@pytest.mark.parametrize("page", DOCS, ids=[page.stem for page in DOCS])
def test_every_link_leads_somewhere(page: Path) -> None:
    text = page.read_text()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.MULTILINE)
            slugs = {
                re.sub(r"[^\w\- ]", "", heading).strip().lower().replace(" ", "-")
                for heading in headings
            }
            assert anchor in slugs, f"{page.name}: {target}"


@pytest.mark.parametrize(("page", "number"), EXAMPLES)
def test_every_python_example_runs(page: Path, number: int, redis_client: redis.Redis) -> None:
    source = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)[number]
    create_application({"TESTING": True})  # the placeholder configured, as in the app
    namespace: dict[str, object] = {"__name__": f"docs_example_{page.stem}_{number}"}
    exec(compile(source, str(page), "exec"), namespace)


async def test_the_route_of_the_api_page_runs(
    redis_client: redis.Redis, thread_worker: ThreadWorker
) -> None:
    greetings = readme_example("# quart_app/blueprints/greetings.py", ROOT / "docs" / "api.md")
    app = create_application({"TESTING": True})
    app.register_blueprint(greetings.blueprint)
    async with app.test_app() as test_app:
        client: Client = test_app.test_client()
        with thread_worker(placeholder):
            answer = await client.post("/greetings/Ada")
            started = await client.post("/counts")
            assert started.status_code == 202
            task_id = (await started.get_json())["id"]
            stream = await client.get(f"/counts/{task_id}")
            assert stream.headers["Content-Type"] == "text/event-stream"
            events = (await stream.get_data(as_text=True)).split("\n\n")
        unknown = await client.get(f"/counts/{uuid.uuid4()}")
        refused = await client.post(f"/greetings/{'x' * 1000}")
    states = [json.loads(event.removeprefix("data: "))["state"] for event in events if event]
    assert states[-1] == "SUCCESS"
    assert states.count("PROGRESS") == 3
    assert unknown.status_code == 404
    assert (await unknown.get_json())["error"]["code"] == "task_not_found"
    assert answer.status_code == 200
    assert (await answer.get_json())["greeting"] == "hello, Ada"
    assert refused.status_code == 422  # too long a message for simple_task: nothing sent
    assert (await refused.get_json())["error"]["code"] == "invalid_arguments"


async def test_the_tests_of_the_testing_page_pass(
    client: Client,
    celery: Celery,
    thread_worker: ThreadWorker,
    server_url: str,
    process_worker: ProcessWorker,
) -> None:
    page = ROOT / "docs" / "testing.md"
    with_a_thread = readme_example("def test_progress_task_runs_on_a_real_worker", page)
    await with_a_thread.test_progress_task_runs_on_a_real_worker(client, celery, thread_worker)
    live = readme_example("def test_a_websocket_client_sees_every_state_to_the_end", page)
    await live.test_a_websocket_client_sees_every_state_to_the_end(server_url, process_worker)

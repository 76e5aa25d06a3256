"""The JSON API through Quart's test client, against the real Redis and, where a task must run,
a real worker in a thread. The tasks are the probes of `tests/worker_tasks.py`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery.testing import ThreadWorker, error_of, finished, snapshot, snapshot_in, submit


async def test_submitting_answers_202_with_where_to_follow_the_task(
    client: Client,
) -> None:
    response = await client.post(
        "/api/tasks", json={"name": "tests.echo", "kwargs": {"message": "hi"}}
    )
    assert response.status_code == 202
    body = await response.get_json()
    task_id = body["id"]
    assert uuid.UUID(task_id)
    assert body == {
        "id": task_id,
        "name": "tests.echo",
        "state": "PENDING",
        "url": f"/api/tasks/{task_id}",
        "websocket": f"/ws/tasks/{task_id}",
    }
    assert response.headers["Location"] == f"/api/tasks/{task_id}"


async def test_a_queued_task_is_pending(client: Client) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    assert await snapshot(client, task_id) == {
        "id": task_id,
        "name": "tests.echo",
        "state": "PENDING",
        "progress": None,
        "result": None,
        "error": None,
        "meta": None,
    }


async def test_each_exposed_task_runs_to_its_end(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    with thread_worker(celery):
        simple = await submit(client, "tests.echo", message="hi")
        progress = await submit(client, "tests.count", steps=2, delay=0)
        asynchronous = await submit(client, "tests.async_echo", message="hey")
        failing = await submit(client, "tests.fail", message="boom")

        assert (await finished(client, simple["id"]))["result"] == "hi"
        assert (await finished(client, progress["id"]))["result"] == {"steps": 2}
        done = await finished(client, asynchronous["id"])
        assert done["result"] == {"message": "hey", "app": "probe_app"}
        failed = await finished(client, failing["id"])
    assert failed["state"] == "FAILURE"
    assert failed["result"] is None
    assert failed["error"] == {"type": "ValueError", "message": "boom"}


async def test_progress_shows_while_the_task_runs(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    with thread_worker(celery):
        task_id = (await submit(client, "tests.count", steps=20, delay=0.05))["id"]
        body = await snapshot_in(client, task_id, "PROGRESS")
        assert body["progress"]["total"] == 20
        assert 1 <= body["progress"]["current"] <= 20
        assert body["result"] is None
        await finished(client, task_id)


async def test_a_failure_has_its_traceback_only_in_debug_mode(
    app: Quart, client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    with thread_worker(celery):
        task_id = (await submit(client, "tests.fail", message="boom"))["id"]
        assert "traceback" not in (await finished(client, task_id))["error"]
        app.debug = True
        error = (await snapshot(client, task_id))["error"]
    assert error["type"] == "ValueError"
    assert "raise ValueError(message)" in error["traceback"]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"name": "nope", "kwargs": {}}, "unknown_task", "There is no task 'nope'"),
        ({"name": "celery.ping", "kwargs": {}}, "unknown_task", "There is no task"),
        ({"name": "tests.web_app_name", "kwargs": {}}, "unknown_task", "There is no task"),
        ({"kwargs": {}}, "invalid_request", "name: Field required"),
        ({"name": "tests.echo"}, "invalid_request", "kwargs: Field required"),
        (
            {"name": "tests.echo", "kwargs": {}},
            "invalid_request",
            "kwargs.message: Field required",
        ),
        ({"name": "tests.echo", "kwargs": {"message": ""}}, "invalid_request", "kwargs.message"),
        (
            {"name": "tests.echo", "kwargs": {"message": "x" * 101}},
            "invalid_request",
            "at most 100",
        ),
        ({"name": "tests.echo", "kwargs": {"message": 5}}, "invalid_request", "kwargs.message"),
        (
            {"name": "tests.echo", "kwargs": {"message": "x", "y": 1}},
            "invalid_request",
            "kwargs.y",
        ),
        ({"name": "tests.count", "kwargs": {"steps": 0}}, "invalid_request", "kwargs.steps"),
        ({"name": "tests.count", "kwargs": {"steps": 1001}}, "invalid_request", "kwargs.steps"),
        ({"name": "tests.count", "kwargs": {"steps": "5"}}, "invalid_request", "kwargs.steps"),
        (
            {"name": "tests.count", "kwargs": {"steps": 5, "delay": 6}},
            "invalid_request",
            "kwargs.delay",
        ),
        (
            {"name": "tests.count", "kwargs": {"steps": 5, "delay": -1}},
            "invalid_request",
            "kwargs.delay",
        ),
        (
            {"name": "tests.count", "kwargs": {"steps": 1000, "delay": 1}},
            "invalid_request",
            "kwargs: steps * delay is 1000 s; at most 60",
        ),
        (
            {"name": "tests.async_echo", "kwargs": {"message": "x", "delay": 5.5}},
            "invalid_request",
            "kwargs.delay",
        ),
        ([], "invalid_request", "body"),
        ("tests.echo", "invalid_request", "body"),
    ],
)
async def test_an_invalid_task_is_422_naming_the_field(
    client: Client, redis_client: redis.Redis, body: Any, code: str, message: str
) -> None:
    response = await client.post("/api/tasks", json=body)
    assert response.status_code == 422
    error = await error_of(response)
    assert error["code"] == code
    assert message in error["message"]
    assert redis_client.llen("celery") == 0  # nothing was sent


async def test_malformed_json_is_400(client: Client) -> None:
    response = await client.post(
        "/api/tasks", data='{"name": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert (await error_of(response))["code"] == "invalid_json"


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
async def test_nan_and_infinity_are_not_json(
    client: Client, redis_client: redis.Redis, number: str
) -> None:
    body = '{"name": "tests.count", "kwargs": {"steps": 1, "delay": DELAY}}'.replace(
        "DELAY", number
    )
    response = await client.post(
        "/api/tasks", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = await error_of(response)
    assert error["code"] == "invalid_json"
    assert "NaN and Infinity are not JSON numbers" in error["message"]
    assert redis_client.llen("celery") == 0
    # In a string they are words like any other.
    words = await client.post(
        "/api/tasks", json={"name": "tests.echo", "kwargs": {"message": number}}
    )
    assert words.status_code == 202


@pytest.mark.parametrize(
    "body",
    [
        {"name": "tests.echo", "args": ["hi"]},
        {"name": "tests.echo", "args": ["hi"], "kwargs": {"message": "hi"}},
    ],
)
async def test_positional_arguments_are_refused_saying_so(
    client: Client, redis_client: redis.Redis, body: dict[str, Any]
) -> None:
    response = await client.post("/api/tasks", json=body)
    assert response.status_code == 422
    error = await error_of(response)
    assert error["message"] == (
        "args: positional arguments are not taken: give each by name in kwargs."
    )
    assert redis_client.llen("celery") == 0


async def test_a_body_that_is_not_json_is_400(client: Client) -> None:
    response = await client.post("/api/tasks", form={"name": "tests.echo"})
    assert response.status_code == 400
    error = await error_of(response)
    assert error["code"] == "invalid_content_type"
    assert "application/json" in error["message"]


async def test_a_body_over_the_limit_is_413(app: Quart, client: Client) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == 64 * 1024
    message = "x" * limit
    response = await client.post(
        "/api/tasks", json={"name": "tests.echo", "kwargs": {"message": message}}
    )
    assert response.status_code == 413
    assert (await error_of(response))["code"] == "request_entity_too_large"


async def test_unknown_route_is_404_and_wrong_method_405(client: Client) -> None:
    response = await client.get("/api/nothing-here")
    assert response.status_code == 404
    assert (await error_of(response))["code"] == "not_found"
    response = await client.put("/api/tasks")
    assert response.status_code == 405
    assert (await error_of(response))["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


async def test_an_unexpected_error_is_500_without_a_traceback(app: Quart) -> None:
    @app.get("/fails")
    async def fails() -> str:
        raise RuntimeError("secret detail")

    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/fails")
    assert response.status_code == 500
    error = await error_of(response)
    assert error["code"] == "internal_error"
    assert "secret detail" not in error["message"]
    assert "Traceback" not in await response.get_data(as_text=True)


async def test_an_id_never_submitted_is_404(client: Client) -> None:
    for method in (client.get, client.delete):
        response = await method(f"/api/tasks/{uuid.uuid4()}")
        assert response.status_code == 404
        assert (await error_of(response))["code"] == "task_not_found"


async def test_a_malformed_id_is_404(client: Client) -> None:
    for task_id in ("not-a-uuid", "*", "celery-task-meta-*"):
        response = await client.get(f"/api/tasks/{task_id}")
        assert response.status_code == 404
        assert (await error_of(response))["code"] == "not_found"


async def test_a_record_lasts_as_long_as_results(
    app: Quart, client: Client, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    ttl = redis_client.ttl(f"probe_app:task:{task_id}")
    assert 0 < ttl <= app.config["CELERY_RESULT_EXPIRES"]
    redis_client.delete(f"probe_app:task:{task_id}")  # as when it expires
    assert (await client.get(f"/api/tasks/{task_id}")).status_code == 404


async def test_revoking_a_queued_task_means_it_never_runs(
    client: Client,
    celery: Celery,
    thread_worker: ThreadWorker,
    redis_client: redis.Redis,
) -> None:
    revoked = (await submit(client, "tests.echo", message="never"))["id"]
    response = await client.delete(f"/api/tasks/{revoked}")
    assert response.status_code == 202
    assert (await response.get_json())["state"] == "REVOKED"
    # A worker that starts only after the revoke never heard it: it still skips the task.
    with thread_worker(celery):
        after = (await submit(client, "tests.echo", message="after"))["id"]
        assert (await finished(client, after))["state"] == "SUCCESS"
    assert (await snapshot(client, revoked))["state"] == "REVOKED"
    assert redis_client.llen("celery") == 0  # acknowledged, not left to come back


async def test_revoking_a_task_that_ended_changes_nothing_and_says_so(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    with thread_worker(celery):
        task_id = (await submit(client, "tests.echo", message="done"))["id"]
        await finished(client, task_id)
    response = await client.delete(f"/api/tasks/{task_id}")
    assert response.status_code == 409
    error = await error_of(response)
    assert error["code"] == "task_finished"
    assert "SUCCESS" in error["message"]
    assert (await snapshot(client, task_id))["state"] == "SUCCESS"


async def test_sending_leaves_no_subscription_behind(
    client: Client, redis_client: redis.Redis
) -> None:
    ids = [(await submit(client, "tests.echo", message=str(n)))["id"] for n in range(50)]
    channels = [f"celery-task-meta-{task_id}" for task_id in ids]
    subscribers = redis_client.pubsub_numsub(*channels)
    assert [count for _, count in subscribers] == [0] * len(ids)


async def test_tasks_submitted_at_once_are_each_accepted_and_sent(
    client: Client, redis_client: redis.Redis
) -> None:
    body = {"name": "tests.echo", "kwargs": {"message": "together"}}
    responses = await asyncio.gather(*(client.post("/api/tasks", json=body) for _ in range(40)))
    assert [response.status_code for response in responses] == [202] * 40
    ids = {(await response.get_json())["id"] for response in responses}
    assert len(ids) == 40
    assert redis_client.llen("celery") == 40
    assert all(redis_client.exists(f"probe_app:task:{task_id}") for task_id in ids)


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"name": "\xff\xfe"}', "application/json"),
        ('{"name": "x"}'.encode("utf-16"), "application/json; charset=utf-16"),
        (b"[" * 60_000, "application/json"),
    ],
    ids=["not-utf-8", "not-utf-16", "nested-too-deep"],
)
async def test_a_body_that_cannot_be_read_as_json_is_400(
    client: Client, data: bytes, content_type: str
) -> None:
    response = await client.post("/api/tasks", data=data, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert (await error_of(response))["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("stored", "status", "state"),
    [("mark_as_failure", 409, "FAILURE"), ("mark_as_started", 202, "STARTED")],
)
async def test_revoking_never_overwrites_a_started_or_ended_task(
    client: Client, celery: Celery, stored: str, status: int, state: str
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    if stored == "mark_as_failure":
        celery.backend.mark_as_failure(task_id, ValueError("its own error"))
    else:
        celery.backend.mark_as_started(task_id)
    response = await client.delete(f"/api/tasks/{task_id}")
    assert response.status_code == status
    after = await snapshot(client, task_id)
    assert after["state"] == state
    if state == "FAILURE":
        assert after["error"] == {"type": "ValueError", "message": "its own error"}


@pytest.mark.parametrize("state", ["UPLOADING", "IGNORED", "REJECTED"])
async def test_a_state_the_task_records_itself_is_reported_with_its_meta(
    client: Client, celery: Celery, thread_worker: ThreadWorker, state: str
) -> None:
    meta = {"file": "a.txt", "percent": 40}
    with thread_worker(celery):
        task_id = (await submit(client, "tests.stays_in", state=state, meta=meta))["id"]
        body = await snapshot_in(client, task_id, state)
    assert body == {
        "id": task_id,
        "name": "tests.stays_in",
        "state": state,
        "progress": None,
        "result": None,
        "error": None,
        "meta": meta,
    }
    # Not ended: revoking it is accepted (it is not running, so nothing stops), and it says so.
    response = await client.delete(f"/api/tasks/{task_id}")
    assert response.status_code == 202
    assert (await response.get_json())["state"] == state


async def test_progress_passes_its_whole_meta(
    client: Client, celery: Celery, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.count", steps=1))["id"]
    meta = {"current": 3, "total": 10, "status": "reading the file"}
    celery.backend.store_result(task_id, meta, "PROGRESS")
    body = await snapshot(client, task_id)
    assert (body["state"], body["progress"], body["meta"]) == (
        "PROGRESS",
        {"current": 3, "total": 10},
        meta,
    )


@pytest.mark.parametrize(
    "recorded",
    [{"status": "no numbers"}, {"current": "3", "total": 10}, {"current": True, "total": 1}, 7],
)
async def test_progress_without_whole_numbers_has_no_progress_but_its_meta(
    client: Client, celery: Celery, recorded: Any
) -> None:
    task_id = (await submit(client, "tests.count", steps=1))["id"]
    celery.backend.store_result(task_id, recorded, "PROGRESS")
    body = await snapshot(client, task_id)
    assert (body["state"], body["progress"], body["meta"]) == ("PROGRESS", None, recorded)


async def test_a_stored_state_that_cannot_be_read_is_a_500(
    client: Client, redis_client: redis.Redis
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    redis_client.set(f"celery-task-meta-{task_id}", b"\xff not json")
    response = await client.get(f"/api/tasks/{task_id}")
    assert response.status_code == 500
    assert (await error_of(response))["code"] == "internal_error"

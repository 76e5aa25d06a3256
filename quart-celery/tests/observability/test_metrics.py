"""`GET /metrics` after real traffic: submissions by outcome, requests by route, sockets open,
states delivered; and who may read it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from celery import Celery
from quart import Quart
from quart.typing import TestClientProtocol as Client

from quart_celery._observability import metrics
from quart_celery.testing import ThreadWorker, free_port, messages_until_closed, submit
from tests.metrics import MESSAGES, label_values, sample

SUBMITTED = "probe_app_tasks_submitted_total"
REQUESTS = "probe_app_http_request_duration_seconds_count"


async def scrape(client: Client, **headers: str) -> str:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, await response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain")
    return await response.get_data(as_text=True)


async def test_submissions_are_counted_by_task_and_outcome(client: Client) -> None:
    await submit(client, "tests.echo", message="hi")
    await submit(client, "tests.echo", message="again")
    refused = [
        {"name": "tests.echo", "kwargs": {"message": 7}},  # its arguments do not fit
        {"name": "no-such-task", "kwargs": {}},
        {"kwargs": {}},
    ]
    for body in refused:
        assert (await client.post("/api/tasks", json=body)).status_code == 422
    not_json = await client.post(
        "/api/tasks", data="{", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 400

    text = await scrape(client)
    assert sample(text, SUBMITTED, task="tests.echo", outcome="accepted") == 2
    assert sample(text, SUBMITTED, task="tests.echo", outcome="invalid") == 1
    assert sample(text, SUBMITTED, task="unknown", outcome="invalid") == 3
    # A label takes no name a client made up.
    assert "no-such-task" not in label_values(text, SUBMITTED, "task")


@pytest.mark.settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
async def test_a_submission_the_broker_cannot_take_is_counted_unavailable(client: Client) -> None:
    body = {"name": "tests.echo", "kwargs": {"message": "hi"}}
    response = await client.post("/api/tasks", json=body)
    assert response.status_code == 503
    text = await scrape(client)
    assert sample(text, SUBMITTED, task="tests.echo", outcome="unavailable") == 1
    assert sample(text, SUBMITTED, task="tests.echo", outcome="accepted") == 0


async def test_requests_are_timed_by_route_pattern_never_by_raw_path(client: Client) -> None:
    task_id = str(uuid.uuid4())
    assert (await client.get(f"/api/tasks/{task_id}")).status_code == 404
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/no/such/page")).status_code == 404

    text = await scrape(client)
    labels = {"method": "GET", "route": "/api/tasks/<uuid:task_id>", "status": "404"}
    assert sample(text, REQUESTS, **labels) == 1
    assert sample(text, REQUESTS, method="GET", route="/healthz", status="200") == 1
    assert sample(text, REQUESTS, method="GET", route="unmatched", status="404") == 1
    assert task_id not in text
    assert "/no/such/page" not in text


async def test_sockets_open_and_states_delivered(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    task_id = (await submit(client, "tests.count", steps=3, delay=0.05))["id"]
    with thread_worker(celery):
        async with client.websocket(f"/ws/tasks/{task_id}") as socket:
            first = await socket.receive_json()
            assert sample(await scrape(client), "probe_app_websockets_open") == 1
            received, code = await messages_until_closed(socket)
    assert code == 1000
    text = await scrape(client)
    assert sample(text, "probe_app_websockets_open") == 0
    # Every state pushed after the first snapshot (which was read, not pushed) was timed,
    # from the worker storing it: Celery's date_done for SUCCESS, date_stored for the rest.
    pushed = len(received) if first["state"] == "PENDING" else len(received) + 1
    assert sample(text, "probe_app_delivery_seconds_count") >= len(received)
    assert sample(text, "probe_app_delivery_seconds_count") <= pushed
    assert 0 < sample(text, "probe_app_delivery_seconds_sum") < 5 * pushed
    # Each message counted, the way it went: here by the handler (no hypercorn to write
    # straight), and `straight` shown at 0.
    assert label_values(text, MESSAGES, "path") == {"straight", "handler"}
    assert sample(text, MESSAGES, path="handler") >= 1 + len(received)
    assert sample(text, MESSAGES, path="straight") == 0


@pytest.mark.settings(API_TOKEN="api-token", METRICS_TOKEN="metrics-token")
async def test_with_a_metrics_token_only_its_bearer_may_scrape(client: Client) -> None:
    assert (await client.get("/metrics")).status_code == 401
    api = await client.get("/metrics", headers={"Authorization": "Bearer api-token"})
    assert api.status_code == 401
    await scrape(client, Authorization="Bearer metrics-token")


async def test_without_a_metrics_token_it_is_open_like_healthz(app: Quart) -> None:
    app.config["API_TOKEN"] = "api-token"  # the API's token does not close it
    async with app.test_app() as test_app:
        await scrape(test_app.test_client())


async def test_openmetrics_is_served_to_who_asks_for_it(client: Client) -> None:
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.content_type.startswith("application/openmetrics-text")
    assert (await response.get_data(as_text=True)).endswith("# EOF\n")


def test_a_server_of_one_process_keeps_its_samples_in_memory() -> None:
    assert metrics.multiprocess_directory("probe_app") == (None, False)  # pytest is no server


def test_the_live_gauges_of_processes_that_are_gone_are_dropped(tmp_path: Path) -> None:
    gone = tmp_path / "gauge_livesum_999999999.db"  # beyond any PID
    alive = tmp_path / f"gauge_livesum_{os.getpid()}.db"
    counted = tmp_path / "counter_999999999.db"
    for path in (gone, alive, counted):
        path.write_bytes(b"")
    metrics.forget_dead_processes(str(tmp_path))
    assert not gone.exists()
    assert alive.exists()
    assert counted.exists()  # what it counted still counts


async def test_a_method_a_client_makes_up_is_counted_as_other(client: Client) -> None:
    await client.open("/healthz", method="FROBNICATE")  # type: ignore[call-arg]
    text = await scrape(client)
    assert "FROBNICATE" not in text
    assert "other" in label_values(text, REQUESTS, "method")

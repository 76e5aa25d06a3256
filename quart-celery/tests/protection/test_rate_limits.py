"""`API_RATE_LIMIT`: each client's submissions are counted in Redis, 429 with `Retry-After`
beyond the limit; health checks, metrics and reads never count."""

from __future__ import annotations

import uuid

import pytest
from quart.typing import TestClientProtocol as Client

from quart_celery import ConfigurationError
from quart_celery.settings import read_settings
from quart_celery.testing import error_of

BODY = {"name": "tests.echo", "kwargs": {"message": "hi"}}


async def submit(client: Client, **headers: str) -> int:
    status: int = (await client.post("/api/tasks", json=BODY, headers=headers)).status_code
    return status


@pytest.mark.settings(API_RATE_LIMIT="3/minute")
async def test_past_the_limit_a_submission_is_429_with_retry_after(client: Client) -> None:
    for path in ("/healthz", "/metrics", f"/api/tasks/{uuid.uuid4()}", "/openapi.json") * 2:
        await client.get(path)  # none of these count
    assert [await submit(client) for _ in range(3)] == [202, 202, 202]
    refused = await client.post("/api/tasks", json=BODY)
    assert refused.status_code == 429
    assert (await error_of(refused))["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.settings(API_RATE_LIMIT="2/minute")
async def test_a_workflow_counts_as_one_submission(client: Client) -> None:
    workflow = {"group": [BODY, BODY, BODY]}
    assert (await client.post("/api/workflows", json=workflow)).status_code == 202
    assert await submit(client) == 202
    refused = await client.post("/api/workflows", json=workflow)
    assert refused.status_code == 429
    assert (await error_of(refused))["code"] == "rate_limited"


@pytest.mark.settings(API_RATE_LIMIT="2/minute", API_TOKEN="token-a,token-b")
async def test_with_tokens_each_token_has_its_own_count(client: Client) -> None:
    a, b = {"Authorization": "Bearer token-a"}, {"Authorization": "Bearer token-b"}
    assert [await submit(client, **a) for _ in range(3)] == [202, 202, 429]
    assert [await submit(client, **b) for _ in range(3)] == [202, 202, 429]


@pytest.mark.settings(API_RATE_LIMIT="2/hour")
async def test_a_route_of_the_apps_own_that_submits_counts_too(client: Client) -> None:
    refused = await client.post("/echo", json={})  # refused (no message): counted all the same
    assert refused.status_code == 400
    assert (await client.post("/echo", json={"message": "hi"})).status_code == 202
    assert await submit(client) == 429


async def test_without_the_setting_nothing_is_limited(client: Client) -> None:
    assert {await submit(client) for _ in range(20)} == {202}


@pytest.mark.parametrize("value", ["100/minute", " 5 / second ", "1/hour"])
def test_the_setting_takes_n_per_second_minute_or_hour(value: str) -> None:
    assert read_settings({}, {"API_RATE_LIMIT": value})["API_RATE_LIMIT"] == value


@pytest.mark.parametrize("value", ["100/day", "0/minute", "ten/minute", "100 per minute"])
def test_any_other_form_stops_start_up_naming_the_setting(value: str) -> None:
    with pytest.raises(ConfigurationError, match="API_RATE_LIMIT"):
        read_settings({}, {"API_RATE_LIMIT": value})


@pytest.mark.settings(API_RATE_LIMIT="2/hour", API_TOKEN="token-a")
async def test_a_made_up_token_counts_as_its_address(client: Client) -> None:
    # The app's own route takes no token, so a made-up one must not open a count of its own.
    statuses = []
    for n in range(3):
        headers = {"Authorization": f"Bearer made-up-{n}"}
        statuses.append((await client.post("/echo", json={}, headers=headers)).status_code)
    assert statuses == [400, 400, 429]

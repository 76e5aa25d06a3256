"""`Idempotency-Key` on `POST /api/tasks`: a repeat sends nothing and answers as the first did;
the same key with another request is refused; a key is the token's own; a task that could not
be sent leaves no claim."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from quart.typing import TestClientProtocol as Client

from quart_celery.testing import error_of, free_port

BODY = {"name": "tests.echo", "kwargs": {"message": "once"}}
CLAIMS = "probe_app:idempotency:*"


async def post(client: Client, body: Any = BODY, key: str | None = "k-1", **headers: str) -> Any:
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/api/tasks", json=body, headers=headers)


def messages(redis_client: redis.Redis) -> int:
    """How many task messages wait in the default queue."""
    waiting: int = redis_client.llen("celery")
    return waiting


async def test_a_repeat_answers_as_the_first_did_and_sends_nothing(
    client: Client, redis_client: redis.Redis
) -> None:
    first = await post(client)
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    for _ in range(3):
        again = await post(client)
        assert again.status_code == 202
        assert again.headers["Idempotent-Replayed"] == "true"
        assert await again.get_json() == await first.get_json()
        assert again.headers["Location"] == first.headers["Location"]
    assert messages(redis_client) == 1
    # Without a key, the same request is a new run.
    assert (await post(client, key=None)).status_code == 202
    assert messages(redis_client) == 2


async def test_the_same_key_with_another_request_is_refused(
    client: Client, redis_client: redis.Redis
) -> None:
    assert (await post(client)).status_code == 202
    other = await post(client, {"name": "tests.echo", "kwargs": {"message": "twice"}})
    assert other.status_code == 422
    assert (await error_of(other))["code"] == "idempotency_key_reused"
    assert messages(redis_client) == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
async def test_a_key_that_is_not_printable_ascii_of_1_to_255_is_400(
    client: Client, redis_client: redis.Redis, key: str
) -> None:
    response = await post(client, key=key)
    assert response.status_code == 400
    assert (await error_of(response))["code"] == "invalid_idempotency_key"
    assert messages(redis_client) == 0
    assert (await post(client, key="x" * 255)).status_code == 202


@pytest.mark.settings(API_TOKEN="token-a,token-b")
async def test_a_key_is_its_tokens_own(client: Client, redis_client: redis.Redis) -> None:
    first = await post(client, Authorization="Bearer token-a")
    other = await post(client, Authorization="Bearer token-b")
    again = await post(client, Authorization="Bearer token-a")
    assert [r.status_code for r in (first, other, again)] == [202, 202, 202]
    assert (await other.get_json())["id"] != (await first.get_json())["id"]
    assert (await again.get_json())["id"] == (await first.get_json())["id"]
    assert messages(redis_client) == 2
    # The claims name the tokens by digest, never the tokens themselves.
    assert not any(b"token-" in key for key in redis_client.keys(CLAIMS))


def unsend_claim(redis_client: redis.Redis, **changes: Any) -> bytes:
    """Make the one claim stand as it does while its task is being sent: its key."""
    (key,) = redis_client.keys(CLAIMS)
    raw = redis_client.get(key)
    assert isinstance(raw, bytes)
    unsent = {**json.loads(raw), "sent": False, **changes}
    redis_client.set(key, json.dumps(unsent, separators=(",", ":")), ex=60)  # as the app writes
    assert isinstance(key, bytes)
    return key


async def test_a_repeat_while_the_first_is_being_sent_is_409(
    client: Client, redis_client: redis.Redis
) -> None:
    assert (await post(client)).status_code == 202
    unsend_claim(redis_client, task_id=str(uuid.uuid4()))  # a task not recorded (yet)
    response = await post(client)
    assert response.status_code == 409
    assert (await error_of(response))["code"] == "idempotency_key_in_use"
    assert response.headers["Retry-After"] == "1"


async def test_a_claim_left_unsent_whose_task_was_recorded_replays_that_task(
    client: Client, redis_client: redis.Redis
) -> None:
    # As after a send that timed out once Redis had taken it: the task and its record exist.
    first = await post(client)
    key = unsend_claim(redis_client)
    again = await post(client)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (await again.get_json())["id"] == (await first.get_json())["id"]
    assert json.loads(redis_client.get(key) or b"{}")["sent"] is True
    assert redis_client.ttl(key) > 3600  # kept as long as the task, no longer as pending
    assert messages(redis_client) == 1


@pytest.mark.settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
async def test_a_task_that_could_not_be_sent_leaves_no_claim(
    client: Client, redis_client: redis.Redis
) -> None:
    response = await post(client)
    assert response.status_code == 503
    assert redis_client.keys(CLAIMS) == []  # a repeat may send it once the broker is back

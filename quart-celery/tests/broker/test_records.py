"""Every task the app publishes is recorded as it is published, whoever publishes it: the API,
a worker starting a subtask or the next link of a chain, `send_task` from a shell. Each is then
followed like a task submitted over HTTP; an id nobody published stays 404.

(`celery beat`, a process of its own, is in `tests/test_entry_points.py`.)
"""

from __future__ import annotations

import logging

import pytest
import redis
from celery import Celery, chain
from quart.typing import TestClientProtocol as Client

from quart_celery._broker import records
from quart_celery._broker.keys import Keys
from quart_celery.testing import (
    FINAL,
    ThreadWorker,
    finished,
    messages_until_closed,
    snapshot,
    submit,
    wait_for,
)
from tests.probe_app import KEYS, create_app
from tests.worker_tasks import echo


async def test_a_task_started_by_a_task_is_followed_like_any(
    client: Client, celery: Celery, thread_worker: ThreadWorker
) -> None:
    parent = (await submit(client, "tests.spawn", message="from a task"))["id"]
    with thread_worker(celery):
        child = (await finished(client, parent))["result"]
        async with client.websocket(f"/ws/tasks/{child}") as socket:
            received, code = await messages_until_closed(socket)
    assert code == 1000
    assert (received[-1]["name"], received[-1]["state"]) == ("tests.echo", "SUCCESS")
    assert received[-1]["result"] == "from a task"


async def test_the_next_link_of_a_chain_is_known_once_a_worker_publishes_it(
    client: Client, celery: Celery, thread_worker: ThreadWorker, redis_client: redis.Redis
) -> None:
    last = chain(echo.si("first"), echo.si("second")).apply_async().id
    # Only the first link is published now: the worker publishes the next one when it ends.
    assert (await client.get(f"/api/tasks/{last}")).status_code == 404
    with thread_worker(celery):
        wait_for(lambda: redis_client.exists(KEYS.task(last)), 20, "the next link's record")
        done = await finished(client, last)
    assert (done["name"], done["state"], done["result"]) == ("tests.echo", "SUCCESS", "second")


async def test_send_task_from_a_shell_is_known(client: Client, celery: Celery) -> None:
    task_id = celery.send_task("tests.echo", args=["from a shell"]).id
    assert (await snapshot(client, task_id))["name"] == "tests.echo"
    async with client.websocket("/ws/tasks") as socket:
        await socket.send_json({"subscribe": [task_id]})
        assert (await socket.receive_json())["state"] not in FINAL


async def test_the_api_writes_its_records_with_its_messages(
    client: Client, redis_client: redis.Redis, remembered: list[list[tuple[str, str]]]
) -> None:
    task_id = (await submit(client, "tests.echo", message="hi"))["id"]
    # In the batch's one MULTI/EXEC, from the event loop: no write of its own, no second one.
    assert remembered == []
    assert redis_client.get(KEYS.task(task_id)) == b"tests.echo"
    assert redis_client.llen("celery") == 1


def test_a_task_whose_record_cannot_be_written_is_still_published(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    create_app(
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",  # where the records go: nothing listens
            "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url,
        }
    )
    with caplog.at_level(logging.WARNING):
        task_id = echo.delay("still sent").id
    assert redis_client.llen("celery") == 1
    assert f"task {task_id} was published but not recorded" in caplog.text


@pytest.fixture
def remembered(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, str]]]:
    """Every write of records through `records.remember`, as it happens."""
    writes: list[list[tuple[str, str]]] = []
    remember = records.remember

    def counted(redis: redis.Redis, keys: Keys, tasks: list[tuple[str, str]], expires: int) -> None:
        writes.append(tasks)
        remember(redis, keys, tasks, expires)

    monkeypatch.setattr(records, "remember", counted)
    return writes


def test_where_the_broker_keeps_the_records_a_record_goes_with_its_message(
    celery: Celery, redis_client: redis.Redis, remembered: list[list[tuple[str, str]]]
) -> None:
    task_id = echo.delay("with its record").id
    assert redis_client.get(KEYS.task(task_id)) == b"tests.echo"
    assert 0 < redis_client.ttl(KEYS.task(task_id)) <= celery.conf.result_expires
    assert redis_client.llen("celery") == 1
    assert remembered == []  # no round trip of its own: the transport sent it with the message


def test_with_the_broker_elsewhere_the_record_is_written_after_the_publish(
    redis_url: str,
    other_redis_url: str,
    redis_client: redis.Redis,
    remembered: list[list[tuple[str, str]]],
) -> None:
    other = redis.Redis.from_url(other_redis_url)
    other.flushdb()
    try:
        create_app({"CELERY_BROKER_URL": other_redis_url})
        task_id = echo.delay("broker elsewhere").id
        assert other.llen("celery") == 1
    finally:
        other.flushdb()
        other.close()
    assert remembered == [[(task_id, "tests.echo")]]
    assert redis_client.get(KEYS.task(task_id)) == b"tests.echo"


def test_another_celery_app_in_the_process_is_not_recorded(
    celery: Celery, redis_url: str, redis_client: redis.Redis
) -> None:
    other = Celery("other", broker=redis_url, set_as_current=False)
    other.conf.broker_connection_retry_on_startup = True
    try:
        task_id = other.send_task("elsewhere", queue="other").id
    finally:
        other.close()
    assert redis_client.llen("other") == 1
    assert not redis_client.exists(KEYS.task(task_id))

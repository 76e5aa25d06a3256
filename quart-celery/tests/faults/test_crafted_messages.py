"""A message planted in the broker by someone who can write to Redis: a pickle must not run."""

from __future__ import annotations

import base64
import json
import pickle
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from quart_celery.testing import wait_for
from tests.faults.conftest import RedisServer, Worker

pytestmark = pytest.mark.e2e


class CreatesAFile:
    """Unpickling this opens (so creates) a file: the mark of code run from a message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def planted(body: bytes, content_type: str) -> bytes:
    """A task message for `tests.echo` as kombu's Redis transport stores it."""
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "binary",
            "content-type": content_type,
            "headers": {"lang": "py", "task": "tests.echo", "id": task_id, "root_id": task_id},
            "properties": {
                "correlation_id": task_id,
                "delivery_tag": str(uuid.uuid4()),
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "priority": 0,
            },
        }
    ).encode()


def test_a_pickled_message_in_the_broker_is_refused_not_run(
    redis_server: RedisServer, start_worker: Worker, tmp_path: Path
) -> None:
    mark = tmp_path / "pickle-ran"
    payload = pickle.dumps(((CreatesAFile(mark),), {}, {}))
    client = redis.Redis.from_url(redis_server.url())
    client.lpush("celery", planted(payload, "application/x-python-serialize"))
    client.close()

    worker = start_worker(redis_server.url())
    wait_for(
        lambda: "Refusing to deserialize untrusted content of type pickle" in worker.log(),
        30,
        "the worker to refuse the message",
    )
    assert not mark.exists(), "unpickling the planted message ran code"
    assert worker.running(), worker.log()

"""Configuring the placeholder again with another Redis moves both the broker and the backend."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from quart_celery.testing import ThreadWorker
from tests.probe_app import configure_celery, create_app
from tests.worker_tasks import echo

pytestmark = pytest.mark.integration


def test_reconfiguring_moves_the_broker_and_the_backend(
    celery: Celery, redis_client: redis.Redis, other_redis_url: str, thread_worker: ThreadWorker
) -> None:
    other = redis.Redis.from_url(other_redis_url)
    other.flushdb()
    try:
        echo.delay("stays queued in the first database")
        configure_celery(create_app({"REDIS_URL": other_redis_url}))
        with thread_worker(celery):
            result = echo.delay("runs from the second")
            assert result.get(timeout=20) == "runs from the second"
        assert redis_client.llen("celery") == 1
        assert other.llen("celery") == 0
        assert other.exists(f"celery-task-meta-{result.id}")
        assert not redis_client.exists(f"celery-task-meta-{result.id}")
    finally:
        other.flushdb()
        other.close()

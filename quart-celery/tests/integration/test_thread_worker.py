"""A real worker in a thread of the test process: tasks run in the app's context.

Running in this process lets a test see what happened inside the task: the teardown handlers
it registers on the app record every call.
"""

from __future__ import annotations

import flask
import pytest
import quart
from celery import Celery
from quart import Quart

from quart_celery.testing import ThreadWorker
from tests.probe_app import configure_celery
from tests.worker_tasks import (
    async_echo,
    count,
    echo,
    fail,
    flask_app_name,
    flask_app_name_async,
    web_app_name,
)

pytestmark = pytest.mark.integration

TIMEOUT = 20.0


@pytest.mark.parametrize(("pool", "concurrency"), [("asyncio", 10), ("solo", 1), ("threads", 2)])
def test_sync_and_async_tasks_run(
    app: Quart, celery: Celery, thread_worker: ThreadWorker, pool: str, concurrency: int
) -> None:
    with thread_worker(celery, pool=pool, concurrency=concurrency):
        assert echo.delay("hello").get(timeout=TIMEOUT) == "hello"
        assert count.delay(2, 0).get(timeout=TIMEOUT) == {"steps": 2}
        assert async_echo.delay("hi").get(timeout=TIMEOUT) == {"message": "hi", "app": app.name}
        with pytest.raises(ValueError, match=r"^boom$"):
            fail.delay("boom").get(timeout=TIMEOUT)


@pytest.mark.parametrize(("pool", "concurrency"), [("asyncio", 10), ("solo", 1), ("threads", 2)])
def test_tasks_see_the_app_and_its_teardown_runs_after_each(
    app: Quart, celery: Celery, thread_worker: ThreadWorker, pool: str, concurrency: int
) -> None:
    torn_down: list[tuple[str, str | None]] = []

    @app.teardown_appcontext
    async def record(error: BaseException | None) -> None:
        torn_down.append((quart.current_app.name, type(error).__name__ if error else None))

    with thread_worker(celery, pool=pool, concurrency=concurrency):
        assert web_app_name.delay().get(timeout=TIMEOUT) == app.name
        assert async_echo.delay("x").get(timeout=TIMEOUT)["app"] == app.name
        fail.delay("boom").get(timeout=TIMEOUT, propagate=False)
    assert torn_down == [(app.name, None), (app.name, None), (app.name, "ValueError")]


def test_a_flask_app_works_the_same(celery: Celery, thread_worker: ThreadWorker) -> None:
    flask_app = flask.Flask("flask_app")
    flask_app.config.update(CELERY_BROKER_URL=celery.conf.broker_url)
    flask_app.config.update(CELERY_RESULT_BACKEND=celery.conf.result_backend)
    torn_down: list[str] = []
    flask_app.teardown_appcontext(lambda error: torn_down.append(flask.current_app.name))

    configure_celery(flask_app)
    with thread_worker(celery):
        assert flask_app_name.delay().get(timeout=TIMEOUT) == "flask_app"
        assert flask_app_name_async.delay().get(timeout=TIMEOUT) == "flask_app"
        assert echo.delay("plain").get(timeout=TIMEOUT) == "plain"
    assert torn_down == ["flask_app"] * 3

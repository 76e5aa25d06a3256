"""Tasks called as functions: each runs in the app's context, sync or async (`ContextTask`)."""

from __future__ import annotations

import threading

import pytest
from quart import Quart, current_app

from quart_celery._worker.asyncio_pool import is_async_task
from tests.probe_app import create_app
from tests.worker_tasks import (
    async_autoretried,
    async_echo,
    calls_a_task_directly,
    echo,
    fail,
    retried_once,
    runs_its_own_loop,
    web_app_name,
)


def test_a_sync_task_sees_current_app(app: Quart) -> None:
    assert web_app_name() == app.name


def test_an_async_task_is_awaited_in_the_app_context(app: Quart) -> None:
    assert async_echo("hello") == {"message": "hello", "app": "probe_app"}


def test_a_sync_task_may_run_an_event_loop_of_its_own(app: Quart) -> None:
    assert runs_its_own_loop() == app.name


async def test_a_task_called_inside_a_running_loop_runs_beside_it(app: Quart) -> None:
    assert async_echo("from a loop") == {"message": "from a loop", "app": "probe_app"}
    assert web_app_name() == app.name


async def test_an_async_task_may_call_another_directly(app: Quart) -> None:
    assert calls_a_task_directly() == {"message": "inner", "app": "probe_app"}


def test_teardown_handlers_run_after_each_task_with_its_error(app: Quart) -> None:
    seen: list[tuple[str, BaseException | None]] = []

    @app.teardown_appcontext
    async def record(error: BaseException | None) -> None:
        seen.append((current_app.name, error))

    echo("one")
    async_echo("two")
    with pytest.raises(ValueError):
        fail("three")
    assert [name for name, _ in seen] == ["probe_app"] * 3
    assert seen[0][1] is None
    assert seen[1][1] is None
    assert isinstance(seen[2][1], ValueError)


def test_sync_teardown_handlers_run_too(app: Quart) -> None:
    threads: list[int] = []
    app.teardown_appcontext(lambda error: threads.append(threading.get_ident()))
    echo("one")
    assert len(threads) == 1


async def test_an_eager_call_from_async_code_keeps_its_request() -> None:
    create_app({"CELERY_TASK_ALWAYS_EAGER": True})
    result = retried_once.delay()
    assert result.get(timeout=10) == {"id": result.id, "eager": True, "retries": 1}


def test_a_failing_task_raises_its_own_error_alone(app: Quart) -> None:
    with pytest.raises(ValueError) as raised:
        fail("boom")
    assert raised.value.__context__ is None
    assert raised.value.__cause__ is None


def test_an_async_task_is_known_as_one_behind_wrappers() -> None:
    assert is_async_task(async_autoretried)  # Celery's autoretry_for wraps its body
    assert is_async_task(async_echo)
    assert not is_async_task(echo)

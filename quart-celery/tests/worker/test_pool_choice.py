"""Which pool a worker runs: the async pool where nothing names another (unit tests; the real
workers' pools are in `tests/integration/test_worker_process.py`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.core import ParameterSource

from quart_celery import AsyncPool
from quart_celery._worker import pool_choice
from quart_celery._worker.asyncio_pool import DEFAULT_CONCURRENCY


def worker(concurrency: int = 2) -> Any:
    """A stand-in for Celery's WorkController, as `worker_init` finds it."""
    return SimpleNamespace(
        pool_cls="prefork", concurrency=concurrency, app=SimpleNamespace(conf=SimpleNamespace())
    )


def command_line(**given: ParameterSource) -> click.Context:
    """The `celery worker` command's context, with `given` options' sources."""
    options: list[click.Parameter] = [click.Option(["--pool"]), click.Option(["--concurrency"])]
    context = click.Context(click.Command("worker", params=options))
    for name in ("pool", "concurrency"):
        context.params[name] = None
        context.set_parameter_source(name, given.get(name, ParameterSource.DEFAULT))
    return context


def test_a_worker_that_names_no_pool_runs_the_async_pool_with_its_concurrency() -> None:
    started = worker()
    with command_line():
        pool_choice.choose(started, {}, pool_set=False, concurrency_set=False)
    pool_choice.apply(started)
    assert (started.pool_cls, started.concurrency) == (AsyncPool, DEFAULT_CONCURRENCY)
    assert started.app.conf.worker_pool == "quart_celery._worker.asyncio_pool:AsyncPool"


@pytest.mark.parametrize(
    ("given", "pool_set"),
    [
        ({"pool": ParameterSource.COMMANDLINE}, False),  # --pool=prefork (or any)
        ({"pool": ParameterSource.ENVIRONMENT}, False),
        ({}, True),  # CELERY_WORKER_POOL
    ],
)
def test_a_pool_named_on_the_command_line_or_in_the_settings_is_kept(
    given: dict[str, ParameterSource], pool_set: bool
) -> None:
    started = worker()
    with command_line(**given):
        pool_choice.choose(started, {}, pool_set=pool_set, concurrency_set=False)
    pool_choice.apply(started)
    assert (started.pool_cls, started.concurrency) == ("prefork", 2)


@pytest.mark.parametrize("concurrency_set", [False, True])
def test_a_concurrency_given_is_kept(concurrency_set: bool) -> None:
    started = worker(concurrency=7)
    given = {} if concurrency_set else {"concurrency": ParameterSource.COMMANDLINE}
    with command_line(**given):
        pool_choice.choose(started, {}, pool_set=False, concurrency_set=concurrency_set)
    pool_choice.apply(started)
    assert (started.pool_cls, started.concurrency) == (AsyncPool, 7)


def test_a_worker_made_in_code_keeps_the_pool_it_is_given() -> None:
    given, default = worker(), worker()
    given.pool_cls = "solo"  # as WorkController(pool_cls="solo") has it
    pool_choice.choose(given, {"pool_cls": "solo"}, pool_set=False, concurrency_set=False)
    pool_choice.choose(default, {}, pool_set=False, concurrency_set=False)
    pool_choice.apply(given)
    pool_choice.apply(default)
    assert (given.pool_cls, default.pool_cls) == ("solo", AsyncPool)

"""Health checks for load balancers and orchestrators: `/healthz` (the process is up) and
`/readyz` (everything it needs answers)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from celery import Celery
from quart import Blueprint, current_app
from quart_schema import document_response, tag

from quart_celery._client.blocking import run_blocking
from quart_celery._client.connections import blocking_redis
from quart_celery._client.current import current_celery
from quart_celery.errors import APIError
from quart_celery.schemas import Healthy, NotReady, Ready

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@tag(["health"])
@document_response(Healthy, 200)
async def healthz() -> dict[str, str]:
    """The process is up: it answers without touching Redis or Celery."""
    return {"status": "ok"}


@blueprint.get("/readyz")
@tag(["health"])
@document_response(Ready, 200)
@document_response(NotReady, 503)
async def readyz() -> tuple[dict[str, Any], int]:
    """200 when Redis, the broker and the result backend answer and a worker answers a ping.

    Else 503, naming what failed. The three services are asked at once, the workers after
    (only if the broker answers), each for at most 1.5 times `READY_TIMEOUT`: the answer comes
    within three of those, and as soon as the first worker answers.
    """
    timeout = current_app.config["READY_TIMEOUT"]
    redis, celery = blocking_redis(), current_celery()
    redis_check, broker, backend = await asyncio.gather(
        _check("Redis", redis.ping, timeout=1.5 * timeout),
        _check("the broker", _check_broker, celery, timeout, timeout=1.5 * timeout),
        _check("the result backend", _check_result_backend, celery, timeout=1.5 * timeout),
    )
    checks = {"redis": redis_check, "broker": broker, "result_backend": backend}
    checks["workers"] = "not asked: the broker does not answer"
    if broker == "ok":
        checks["workers"] = await _check(
            "the workers", _a_worker_answers, celery, timeout, timeout=1.5 * timeout
        )
    failed = [f"{part}: {result}" for part, result in checks.items() if not result.startswith("ok")]
    if not failed:
        return {"status": "ready", "checks": checks}, 200
    error = {"code": "not_ready", "message": "; ".join(failed)}
    return {"error": error, "checks": checks}, 503


async def _check(what: str, function: Callable[..., Any], *args: Any, timeout: float) -> str:
    """How `what` answered `function(*args)` in time: "ok..." or what went wrong."""
    try:
        answer = await run_blocking(what, function, *args, timeout=timeout)
    except APIError as error:
        return f"unreachable: {error.message}"
    except Exception as error:
        return f"unreachable: {error}"
    if answer is False:  # the workers: none answered
        return "none answered"
    return "ok"


def _check_broker(celery: Celery, timeout: float) -> None:
    """Connect to the broker; raise if it does not answer (blocks: run it in the pool)."""
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))


def _check_result_backend(celery: Celery) -> None:
    """Read from the result backend; raise if it does not answer (blocks)."""
    celery.backend.get_task_meta("readiness-probe")


def _a_worker_answers(celery: Celery, timeout: float) -> bool:
    """Whether a worker answers a ping within `timeout` seconds (blocks). The first answer
    ends the wait: readiness needs one worker, and a ping waits out its whole timeout for
    more."""
    return bool(celery.control.ping(timeout=timeout, limit=1))

"""Health checks for load balancers and orchestrators, and metrics for Prometheus."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from quart import Blueprint, Response, current_app, request
from quart_schema import document_response, tag

from quart_app.bridge import access, metrics, records
from quart_app.bridge.errors import APIError
from quart_app.bridge.pool import run_in_pool
from quart_app.bridge.schemas import ErrorBody, Healthy, NotReady, Ready
from quart_app.extensions import celery

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
    within three of those.
    """
    timeout = current_app.config["READY_TIMEOUT"]
    redis = records.client()
    redis_check, broker, backend = await asyncio.gather(
        _check("Redis", redis.ping, timeout=1.5 * timeout),
        _check("the broker", _check_broker, timeout, timeout=1.5 * timeout),
        _check("the result backend", _check_result_backend, timeout=1.5 * timeout),
    )
    checks = {"redis": redis_check, "broker": broker, "result_backend": backend}
    checks["workers"] = "not asked: the broker does not answer"
    if broker == "ok":
        checks["workers"] = await _check(
            "the workers", _count_workers, timeout, timeout=1.5 * timeout
        )
    failed = [f"{part}: {result}" for part, result in checks.items() if not result.startswith("ok")]
    if not failed:
        return {"status": "ready", "checks": checks}, 200
    error = {"code": "not_ready", "message": "; ".join(failed)}
    return {"error": error, "checks": checks}, 503


@blueprint.get("/metrics")
@tag(["health"])
@document_response(ErrorBody, 401)
async def prometheus_metrics() -> Response:
    """The server's metrics, every process's, in Prometheus's text format (or OpenMetrics if
    asked for); with `METRICS_TOKEN` set, for a bearer of it only."""
    await access.require_metrics_token()
    served = metrics.current()
    if served is None:
        raise APIError(503, "not_serving", "Metrics are kept while the app serves.")
    body, content_type = await run_in_pool(
        "the metrics", served.exposition, request.headers.get("Accept")
    )
    return Response(body, content_type=content_type)


async def _check(what: str, function: Callable[..., Any], *args: Any, timeout: float) -> str:
    """How `what` answered `function(*args)` in time: "ok..." or what went wrong."""
    try:
        answer = await run_in_pool(what, function, *args, timeout=timeout)
    except APIError as error:
        return f"unreachable: {error.message}"
    except Exception as error:
        return f"unreachable: {error}"
    if isinstance(answer, int) and not isinstance(answer, bool):  # workers that answered
        return f"ok, {answer} answered" if answer else "none answered"
    return "ok"


def _check_broker(timeout: float) -> None:
    """Connect to the broker; raise if it does not answer (blocks: run it in the pool)."""
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=math.ceil(timeout))


def _check_result_backend() -> None:
    """Read from the result backend; raise if it does not answer (blocks)."""
    celery.backend.get_task_meta("readiness-probe")


def _count_workers(timeout: float) -> int:
    """How many workers answer a ping within `timeout` seconds (blocks)."""
    return len(celery.control.ping(timeout=timeout) or [])

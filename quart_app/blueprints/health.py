"""Health checks for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from quart import Blueprint, current_app
from quart_schema import tag

from quart_app import celery_calls
from quart_app.blocking import run_blocking
from quart_app.errors import APIError

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@tag(["health"])
async def healthz() -> dict[str, str]:
    """The process is up: it answers without touching Redis or Celery."""
    return {"status": "ok"}


@blueprint.get("/readyz")
@tag(["health"])
async def readyz() -> tuple[dict[str, Any], int]:
    """200 when the broker and the result backend answer and a worker answers a ping; else 503.

    The broker and the backend are asked at once, each for at most three ping timeouts, and
    the workers only if the broker answers: the answer comes within five seconds.
    """
    timeout = current_app.config["READY_TIMEOUT"]
    broker, backend = await asyncio.gather(
        _check("the broker", celery_calls.check_broker, timeout, timeout=3 * timeout),
        _check("the result backend", celery_calls.check_result_backend, timeout=3 * timeout),
    )
    checks = {"broker": broker, "result_backend": backend, "workers": "not asked"}
    if broker == "ok":
        workers = await run_blocking(
            "the broker", celery_calls.count_workers, timeout, timeout=2 * timeout
        )
        checks["workers"] = f"ok, {workers} answered" if workers else "none answered"
    failed = [f"{part}: {result}" for part, result in checks.items() if not result.startswith("ok")]
    if not failed:
        return {"status": "ready", "checks": checks}, 200
    error = {"code": "not_ready", "message": "; ".join(failed)}
    return {"error": error, "checks": checks}, 503


async def _check(what: str, function: Callable[..., None], *args: Any, timeout: float) -> str:
    """ "ok" if `function(*args)` returns in time, else why not."""
    try:
        await run_blocking(what, function, *args, timeout=timeout)
    except APIError as error:
        return f"unreachable: {error.message}"
    except Exception as error:
        return f"unreachable: {error}"
    return "ok"

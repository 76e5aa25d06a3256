"""Health checks for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, current_app
from quart_schema import tag

from quart_app import celery_calls
from quart_app.blocking import run_blocking

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@tag(["health"])
async def healthz() -> dict[str, str]:
    """The process is up: it answers without touching Redis or Celery."""
    return {"status": "ok"}


@blueprint.get("/readyz")
@tag(["health"])
async def readyz() -> tuple[dict[str, Any], int]:
    """200 when the broker and the result backend answer and a worker answers a ping; else 503."""
    checks = await run_blocking(
        "the broker", celery_calls.readiness, current_app.config["READY_TIMEOUT"]
    )
    failed = [f"{part}: {result}" for part, result in checks.items() if not result.startswith("ok")]
    if not failed:
        return {"status": "ready", "checks": checks}, 200
    error = {"code": "not_ready", "message": "; ".join(failed)}
    return {"error": error, "checks": checks}, 503

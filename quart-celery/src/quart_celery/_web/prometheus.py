"""`GET /metrics`: the server's metrics, in Prometheus's text format, for a scraper."""

from __future__ import annotations

from quart import Blueprint, Response, request
from quart_schema import document_response, tag

from quart_celery._client.blocking import run_blocking
from quart_celery._observability import metrics
from quart_celery._protection import access
from quart_celery._web import frames
from quart_celery.errors import APIError
from quart_celery.schemas import ErrorBody

blueprint = Blueprint("prometheus", __name__)


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
    frames.count_sent(served)  # this process's, up to now
    body, content_type = await run_blocking(
        "the metrics", served.exposition, request.headers.get("Accept")
    )
    return Response(body, content_type=content_type)

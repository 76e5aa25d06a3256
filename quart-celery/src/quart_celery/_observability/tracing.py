"""Traces across the queue, with OpenTelemetry: a request, the task it submits, and the
worker's run of that task, in one trace.

Optional: the `tracing` extra installs OpenTelemetry's SDK, its OTLP exporter (HTTP) and its
ASGI and Celery instrumentations. It is on where the extra is installed and

- `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`), or an OTLP endpoint is set
  (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): the SDK is then set up
  from the standard `OTEL_*` variables by OpenTelemetry's own configurator, as
  `opentelemetry-instrument` does (the exporter `otlp` by default, over HTTP);
- or the program set up a tracer provider itself before building the app
  (`opentelemetry-instrument`, or a test with an in-memory exporter);

and never with `OTEL_SDK_DISABLED=true`. Without the extra, nothing of OpenTelemetry is
imported. The web server's requests get server spans (named by the route's pattern), each
submission a producer span, and a worker's run of the task a consumer span, its parent
carried in the task message's headers (W3C `traceparent`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import urllib.parse
from typing import Any

from quart import Quart, request

#: What the extra installs, found without importing it.
INSTRUMENTATIONS = ("opentelemetry.instrumentation.asgi", "opentelemetry.instrumentation.celery")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
#: Query parameters that carry secrets, and the span attributes a URL with its query goes in.
SECRET_PARAMETERS = frozenset({"token", "ticket"})
URL_ATTRIBUTES = frozenset({"http.url", "http.target", "url.full"})


def installed() -> bool:
    """Whether the `tracing` extra is installed."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in INSTRUMENTATIONS)
    except ModuleNotFoundError:  # no `opentelemetry` package at all
        return False


def configured_by_environment() -> bool:
    """Whether the `OTEL_*` variables ask for traces to be exported."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter) or any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def init_app(app: Quart) -> None:
    """Trace the app's requests and its tasks, where tracing is on (see above)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    provider_set = _provider_set()
    if not provider_set and not configured_by_environment():
        return  # off: nothing of OpenTelemetry is imported
    if not installed():
        app.logger.warning(
            "OTEL_* variables ask for traces, but the tracing extra is not installed "
            "(pip install -e '.[tracing]'): nothing is traced"
        )
        return
    if not provider_set:
        _configure_sdk()
    _instrument(app)


def _provider_set() -> bool:
    """Whether the program has set up a tracer provider (it imported OpenTelemetry for it)."""
    if "opentelemetry.trace" not in sys.modules:
        return False
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def _configure_sdk() -> None:
    """Set up the SDK from the `OTEL_*` variables, with this extra's defaults."""
    from opentelemetry.distro import OpenTelemetryConfigurator

    # The extra installs the HTTP exporter, not gRPC's (the SDK's default for `otlp`); metrics
    # are Prometheus's here (`GET /metrics`) and logs stay in the logs, unless asked for.
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "otlp")
    os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    os.environ.setdefault("OTEL_METRICS_EXPORTER", "none")
    os.environ.setdefault("OTEL_LOGS_EXPORTER", "none")
    OpenTelemetryConfigurator().configure()  # type: ignore[no-untyped-call]


def _instrument(app: Quart) -> None:
    """Wrap the app in the ASGI middleware, and instrument Celery once per process."""
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    # Without spans of their own for each `receive` and `send` of a request: a trace shows
    # the request, the submission and the run, not the ASGI messages between them.
    app.asgi_app = OpenTelemetryMiddleware(  # type: ignore[method-assign, assignment]
        app.asgi_app, exclude_spans=["receive", "send"], server_request_hook=_redact_secrets
    )
    app.before_request(_name_span_by_route)
    instrumentor = CeleryInstrumentor()  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def _redact_secrets(span: Any, scope: dict[str, Any]) -> None:
    """Keep the query's tokens and watch tickets out of the span (a browser's websocket sends
    its token as `?token=`), where the middleware writes the whole URL."""
    query = scope.get("query_string", b"").decode("latin-1")
    if not span.is_recording() or not any(f"{name}=" in query for name in SECRET_PARAMETERS):
        return
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    redacted = urllib.parse.urlencode(
        [(name, "REDACTED" if name in SECRET_PARAMETERS else value) for name, value in pairs]
    )
    for key, value in dict(getattr(span, "attributes", None) or {}).items():
        if key == "url.query":
            span.set_attribute(key, redacted)
        elif key in URL_ATTRIBUTES and isinstance(value, str) and "?" in value:
            span.set_attribute(key, value.split("?", 1)[0] + "?" + redacted)


async def _name_span_by_route() -> None:
    """Name the request's span by its route's pattern (`POST /api/tasks`), as the semantic
    conventions ask: the middleware sees only the method, since Quart routes after it."""
    from opentelemetry import trace

    rule = request.url_rule
    span: Any = trace.get_current_span()
    if rule is not None and span.is_recording():
        span.update_name(f"{request.method} {rule.rule}")
        span.set_attribute("http.route", rule.rule)

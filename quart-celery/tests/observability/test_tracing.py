"""One trace for a `POST /api/tasks` and the worker's run of its task, seen with an in-memory
span exporter; and nothing of OpenTelemetry where tracing is off."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.test.globals_test import reset_trace_globals
from opentelemetry.trace import SpanKind

from quart_celery._observability import tracing
from quart_celery.testing import TIMEOUT, ThreadWorker, finished, submit, wait_for
from tests.probe_app import create_app


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """The spans of the test, through a tracer provider the test sets up (as a program that
    sets up its own does); the globals and Celery's instrumentation undone after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        CeleryInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        provider.shutdown()
        reset_trace_globals()


def only(spans: tuple[ReadableSpan, ...], kind: SpanKind, name: str) -> ReadableSpan:
    found = [span for span in spans if span.kind == kind and span.name == name]
    assert len(found) == 1, [(span.kind, span.name) for span in spans]
    return found[0]


@pytest.mark.parametrize(
    "settings",
    [{}, {"CELERY_TASK_COMPRESSION": "gzip"}],
    ids=["from-the-event-loop", "through-the-thread-pool"],
)
async def test_a_submission_and_its_run_are_one_trace(
    exported: InMemorySpanExporter,
    redis_client: redis.Redis,
    thread_worker: ThreadWorker,
    settings: dict[str, str],
) -> None:
    app = create_app({"TESTING": True, **settings})
    async with app.test_app() as test_app:
        client = test_app.test_client()
        with thread_worker(app.extensions["celery"]):
            task_id = (await submit(client, "tests.echo", message="traced"))["id"]
            await finished(client, task_id)

            def ran() -> tuple[ReadableSpan, ...] | None:
                spans = exported.get_finished_spans()
                return spans if any(span.kind == SpanKind.CONSUMER for span in spans) else None

            spans = wait_for(ran, TIMEOUT, "the worker's span to end")

    request = only(spans, SpanKind.SERVER, "POST /api/tasks")
    published = only(spans, SpanKind.PRODUCER, "apply_async/tests.echo")
    run = only(spans, SpanKind.CONSUMER, "run/tests.echo")
    assert request.attributes is not None and request.attributes["http.route"] == "/api/tasks"
    assert published.parent is not None and run.parent is not None
    assert published.parent.span_id == request.context.span_id
    assert run.parent.span_id == published.context.span_id
    assert len({request.context.trace_id, published.context.trace_id, run.context.trace_id}) == 1
    assert run.attributes is not None and run.attributes["celery.task_name"] == "tests.echo"


#: Builds the app, serves one request, and prints the OpenTelemetry modules imported. With
#: `block`, OpenTelemetry cannot be imported at all, as where the extra is not installed.
PROGRAM = """
import json, sys
class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}")
if sys.argv[1] == "block":
    sys.meta_path.insert(0, Uninstalled())
from tests.probe_app import create_app
app = create_app({"TESTING": True})
assert app.test_client  # the app is whole
print(json.dumps(sorted(name for name in sys.modules if name.startswith("opentelemetry"))))
"""
#: What tracing itself would import (redis-py imports OpenTelemetry's metrics where it can).
TRACING_MODULES = (
    "opentelemetry.distro",
    "opentelemetry.instrumentation.asgi",
    "opentelemetry.instrumentation.celery",
    "opentelemetry.sdk.trace",
)


async def test_a_token_in_the_query_stays_out_of_the_spans(
    exported: InMemorySpanExporter, redis_client: redis.Redis
) -> None:
    app = create_app({"TESTING": True, "API_TOKEN": "secret-token"})
    async with app.test_app() as test_app:
        client = test_app.test_client()
        async with client.websocket("/ws/tasks?token=secret-token&x=1") as socket:
            await socket.send_json({"subscribe": ["nope"]})
            assert (await socket.receive_json())["error"]["code"] == "not_found"
    spans = exported.get_finished_spans()
    assert spans
    values = [str(value) for span in spans for value in (span.attributes or {}).values()]
    assert not any("secret-token" in value for value in values)
    assert any("token=REDACTED" in value for value in values)


@pytest.mark.parametrize("extra", ["installed", "block"])
def test_where_tracing_is_off_nothing_of_it_is_imported(extra: str) -> None:
    environment = {"PATH": "", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    shown = subprocess.run(
        [sys.executable, "-c", PROGRAM, extra],
        cwd=Path(__file__).resolve().parents[2],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    imported = set(json.loads(shown.stdout.splitlines()[-1]))
    assert not imported & set(TRACING_MODULES)
    if extra == "block":
        assert not imported


def test_the_standard_variables_turn_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", *tracing.ENDPOINT_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    assert not tracing.configured_by_environment()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing.configured_by_environment()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert not tracing.configured_by_environment()


def test_asked_for_without_the_extra_it_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setattr(tracing, "installed", lambda: False)
    with caplog.at_level(logging.WARNING):
        app = create_app({"TESTING": True})
    assert "the tracing extra is not installed" in caplog.text
    assert not isinstance(app.asgi_app, OpenTelemetryMiddleware)

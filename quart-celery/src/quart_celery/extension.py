"""`QuartCelery`: the bridge between a Quart app and a Celery instance, as one Flask extension.

Created bare at import time beside the placeholder Celery instance, and configured at start-up,
as Flask extensions are:

    # extensions.py: bare instances, nothing connects
    celery = Celery("my_app", include=["my_app.tasks"])
    bridge = QuartCelery(celery)

    # the Celery factory: configure the placeholder from an app (Quart or Flask)
    def configure_celery(app):
        celery.config_from_object(bridge.celery_settings(app), force=True)
        bridge.init_celery(app)  # every task runs in `app`'s context
        return celery

    # the application factory
    configure_celery(app)
    bridge.init_app(app)  # the JSON API, websockets, health checks, metrics, ...

Everything the bridge needs comes from the app it is given: its name (which begins the bridge's
Redis keys and metric names), its settings, and the Celery instance the app was configured
with (`app.extensions["celery"]`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

from celery import Celery, signals
from flask import Flask
from quart import Quart

from quart_celery._broker import recording
from quart_celery._broker.address import RedisAddress
from quart_celery._broker.celery_settings import celery_settings, drop_connections, seconds
from quart_celery._broker.keys import Keys
from quart_celery._broker.recording import PublishRecorder, RecordingAMQP
from quart_celery._broker.transport import BrokerConnection
from quart_celery._client import blocking, connections, listener, reader, submitter
from quart_celery._client.exposure import exposed_tasks
from quart_celery._observability import metrics, tracing
from quart_celery._protection import access, admission, idempotency, rate_limits, sockets
from quart_celery._web import (
    api,
    connection,
    garbage,
    health,
    openapi,
    prometheus,
    send_deadlines,
    shutdown,
    websockets,
)
from quart_celery._web.error_handlers import register_error_handlers
from quart_celery._worker import cancellation, event_loops, pool_choice, revoked
from quart_celery._worker.task import ContextTask
from quart_celery.settings import ConfigurationError, read_settings

WebApp: TypeAlias = Quart | Flask

#: What `QuartCelery` gives the Celery instance it is created with, by name: the task base
#: class, so that every task gets the app context even if something touches it before the app
#: is configured; the messaging class, so that every task the app publishes is recorded.
TASK_CLASS = "quart_celery._worker.task:ContextTask"
MESSAGING_CLASS = "quart_celery._broker.recording:RecordingAMQP"
#: The setting that keeps a worker retrying to store a result while Redis is away.
ALWAYS_RETRY = "CELERY_RESULT_BACKEND_ALWAYS_RETRY"


class QuartCelery:
    """The bridge: Celery's tasks run in the app's context, and the app serves them over HTTP
    and websockets, submitting, following and cancelling them without blocking."""

    def __init__(self, celery: Celery, *, openapi_info: Mapping[str, Any] | None = None) -> None:
        """The bridge of `celery`, the app's placeholder Celery instance, not yet configured.

        Its tasks get the bridge's base class (`ContextTask`) and its messaging records every
        task it publishes, unless `celery` was given classes of its own, which must derive
        from those. `openapi_info` is the OpenAPI document's Info object (by default the app's
        name as its title).
        """
        if "Task" in vars(celery) and not issubclass(celery.Task, ContextTask):
            raise TypeError(
                "create QuartCelery(celery) before any task of it is used: its tasks were "
                f"made with {celery.Task.__mro__[1]!r}, not ContextTask"
            )
        if celery.task_cls == Celery.task_cls:
            celery.task_cls = TASK_CLASS
            celery._custom_task_cls_used = True  # type: ignore[attr-defined]
        if celery.amqp_cls == Celery.amqp_cls and "amqp" not in vars(celery):
            celery.amqp_cls = MESSAGING_CLASS
        self.celery = celery
        self.openapi_info = openapi_info
        #: Celery's configuration when `init_celery` last ran, to tell whether it changed.
        self._configuration: dict[str, Any] | None = None
        #: Whether a worker keeps retrying to store a result while Redis is away (not where the
        #: settings say otherwise).
        self._workers_retry_storing = True
        #: Whether the settings name the workers' pool, and their concurrency.
        self._pool_set = self._concurrency_set = False
        signals.celeryd_init.connect(
            self._on_worker_start, weak=False, dispatch_uid=f"quart_celery-{id(self)}"
        )
        signals.worker_init.connect(
            self._on_worker_init, weak=False, dispatch_uid=f"quart_celery-{id(self)}"
        )

    def celery_settings(self, app: WebApp) -> dict[str, Any]:
        """Celery's settings for `app`: its `CELERY_*` settings (from its config, else the
        environment) over the bridge's defaults, for `celery.config_from_object`.

        `ConfigurationError` for a setting that is malformed, or that Celery would take from
        the environment instead.
        """
        return celery_settings(read_settings(app.config), app.name, app.root_path)

    def init_celery(self, app: WebApp) -> Celery:
        """Bind the Celery instance, configured from `app`'s settings, to `app`; return it.

        Imports the modules that declare tasks (Celery's `include` and `imports`), as a worker
        does, so that the web app knows every task too; every task then runs inside `app`'s
        context. Also what workers do for the bridge: skip tasks revoked before they started,
        hear cancel requests, record the tasks they publish, close their event loops. Takes a
        Quart or a Flask app, and may be called again: connections made under other settings
        are dropped.
        """
        celery = self.celery
        task_class = celery.Task
        if not issubclass(task_class, ContextTask):
            raise ConfigurationError("task_cls", f"{task_class!r} must derive from {ContextTask!r}")
        if not isinstance(celery.amqp, RecordingAMQP):
            raise ConfigurationError("amqp", f"{celery.amqp!r} must derive from RecordingAMQP")
        configuration = dict(celery.conf)
        if self._configuration is not None and configuration != self._configuration:
            drop_connections(celery)
        self._configuration = configuration
        celery.loader.import_default_modules()
        for task in celery.tasks.values():
            if isinstance(task, ContextTask):
                type(task).take_settings_again(celery)
        task_class.web_app = app
        app.extensions["celery"] = celery
        celery.amqp.Connection = BrokerConnection  # names the transport `redis` in broker URLs
        settings = read_settings(app.config)
        self._workers_retry_storing = ALWAYS_RETRY not in settings
        self._pool_set = settings.get("CELERY_WORKER_POOL") is not None
        self._concurrency_set = settings.get("CELERY_WORKER_CONCURRENCY") is not None
        event_loops.init_celery()
        revoked.init_celery()
        # Records, and cancelling, need the app's Redis: a Quart app's (the bridge serves it),
        # or a Flask app's that names one. A plain Flask app has nothing that reads them.
        keys = Keys(app.name)
        address = None
        if isinstance(app, Quart) or app.config.get("REDIS_URL"):
            address = RedisAddress.of(settings)
        cancellation.init_celery(address, keys)
        recorder = None
        if address is not None:
            with_messages = celery.conf.broker_url == address.broker_url
            expires = seconds(celery.conf.result_expires)
            recorder = PublishRecorder(address, keys, expires, with_messages)
        recording.init_celery(recorder)
        return celery

    def init_app(self, app: Quart) -> None:
        """Serve the bridge in `app`: its settings in `app.config`, the JSON API, the
        websockets, the health checks and metrics, and what they open while the app serves.

        Call it after the Celery factory configured the Celery instance from `app`
        (`init_celery`): the API takes the tasks that factory imported.
        """
        if app.extensions.get("celery") is not self.celery:
            raise RuntimeError(
                "configure the Celery instance from the app (QuartCelery.init_celery(app), in "
                "your Celery factory) before QuartCelery.init_app(app)"
            )
        app.config.update(read_settings(app.config))
        app.extensions["quart_celery"] = self
        register_error_handlers(app)
        shutdown.init_app(app)  # first: a stop that has begun finishes (see its `init_app`)
        connection.init_app(app)
        send_deadlines.init_app(app)
        self._init_protection(app)
        self._init_resources(app)
        self._register_endpoints(app)
        tracing.init_app(app)  # where OTEL_* asks for it
        garbage.init_app(app)

    def _init_protection(self, app: Quart) -> None:
        """Who gets in, how many sockets, how many set up at once, how often one submits."""
        metrics.init_app(app)
        access.init_app(app)
        sockets.init_app(app)
        admission.init_app(app)
        idempotency.init_app(app)
        rate_limits.init_app(app)

    def _init_resources(self, app: Quart) -> None:
        """What opens while the app serves: the thread pool, the Redis client, the reader, the
        submitter and the result listener."""
        blocking.init_app(app)
        connections.init_app(app)
        reader.init_app(app)
        submitter.init_app(app)
        listener.init_app(app)

    def _register_endpoints(self, app: Quart) -> None:
        """The JSON API (for the exposed tasks), the websockets, the health checks, `/metrics`
        and the OpenAPI document."""
        openapi.init_app(app, self.openapi_info)
        app.register_blueprint(api.create_blueprint(exposed_tasks()))
        app.register_blueprint(websockets.blueprint)
        app.register_blueprint(health.blueprint)
        app.register_blueprint(prometheus.blueprint)

    def _on_worker_start(
        self, instance: Any = None, options: dict[str, Any] | None = None, **_: Any
    ) -> None:
        """A Celery signal receiver (`celeryd_init`) for a worker of this Celery instance.

        It runs the async pool unless told otherwise (`quart_celery._worker.pool_choice`). It
        keeps retrying to store a task's result while Redis is away, until Redis is back
        (Celery would otherwise record a FAILURE it cannot even store). Only workers: a web
        request gives up within `BLOCKING_TIMEOUT` and answers 503, and must not leave a pool
        thread retrying. `CELERY_RESULT_BACKEND_ALWAYS_RETRY` says otherwise."""
        if getattr(instance, "app", None) is not self.celery:
            return
        pool_choice.choose(instance, options or {}, self._pool_set, self._concurrency_set)
        if self._workers_retry_storing:
            self.celery.conf.result_backend_always_retry = True

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        """A Celery signal receiver (`worker_init`): the pool chosen at `celeryd_init`."""
        if getattr(sender, "app", None) is self.celery:
            pool_choice.apply(sender)

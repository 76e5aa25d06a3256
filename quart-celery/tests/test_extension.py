"""The Celery factory: the placeholder configured from an app's config, and the task base class.

These tests make no connection: configuring Celery only records its settings.
"""

from __future__ import annotations

import sys
from typing import Any

import flask
import pytest
from celery import Celery
from celery.backends.redis import SentinelManagedSSLConnection  # type: ignore[attr-defined]
from quart import Quart

from quart_celery import ConfigurationError
from quart_celery._broker.backends import RedisBackend, SentinelBackend
from quart_celery._broker.transport import SENTINEL_TRANSPORT
from quart_celery._worker.task import ContextTask
from tests import probe_app as extensions
from tests.probe_app import configure_celery, create_app
from tests.worker_tasks import acks_late_always, async_echo, count, echo, fail


def test_configures_and_returns_the_placeholder(app: Quart) -> None:
    celery = configure_celery(app)
    assert celery is extensions.celery
    assert app.extensions["celery"] is celery
    assert celery.Task.web_app is app


def test_configuring_twice_is_harmless(app: Quart) -> None:
    celery = configure_celery(app)
    settings = dict(celery.conf)
    assert configure_celery(app) is celery
    assert dict(celery.conf) == settings
    assert echo("again") == "again"


def test_every_task_derives_from_the_context_task() -> None:
    for task in (echo, count, async_echo, fail):
        assert isinstance(task, ContextTask)


def test_the_task_modules_are_imported(app: Quart) -> None:
    # Celery's `include` and `imports` (the probes', in the tests' settings), as a worker does.
    celery = configure_celery(app)
    modules = [*celery.conf.include, *celery.conf.imports]
    assert "tests.worker_tasks" in modules
    assert all(module in sys.modules for module in modules)
    assert {"tests.echo", "tests.count"} <= set(celery.tasks)


def test_broker_and_backend_default_to_redis_url() -> None:
    celery = configure_celery(create_app({"REDIS_URL": "redis://cache:6379/4"}))
    assert celery.conf.broker_url == "redis://cache:6379/4"
    assert celery.conf.result_backend == "redis://cache:6379/4"


def test_broker_and_backend_are_each_configurable() -> None:
    celery = configure_celery(
        create_app(
            {
                "REDIS_URL": "redis://cache:6379/4",
                "CELERY_BROKER_URL": "redis://broker:6379/5",
                "CELERY_RESULT_BACKEND": "redis://results:6379/6",
            }
        )
    )
    assert celery.conf.broker_url == "redis://broker:6379/5"
    assert celery.conf.result_backend == "redis://results:6379/6"


def test_with_sentinels_the_broker_and_backend_find_the_master_through_them() -> None:
    celery = configure_celery(
        create_app(
            {
                "REDIS_URL": "redis://:secret@ignored:6379/4",
                "REDIS_SENTINELS": "s1:26379,s2:26380",
                "REDIS_SENTINEL_MASTER": "main",
            }
        )
    )
    sentinels = "sentinel://:secret@s1:26379/4;sentinel://:secret@s2:26380/4"
    assert celery.conf.broker_url == celery.conf.result_backend == sentinels
    assert celery.conf.broker_transport == SENTINEL_TRANSPORT
    for options in (
        celery.conf.broker_transport_options,
        celery.conf.result_backend_transport_options,
    ):
        assert options["master_name"] == "main"
        assert options["sentinel_kwargs"]["socket_timeout"] == 2
    assert celery.conf.broker_transport_options["visibility_timeout"] == 3600
    assert isinstance(celery.backend, SentinelBackend)
    with celery.connection_for_write() as connection:
        assert connection.as_uri().startswith("sentinel://")  # the transport's name, not path


def test_with_sentinels_a_rediss_url_means_tls_to_the_master_for_celery_too() -> None:
    celery = configure_celery(
        create_app(
            {
                "REDIS_URL": "rediss://:secret@ignored:6380/2?ssl_ca_certs=/etc/ca.pem",
                "REDIS_SENTINELS": "s1:26379",
                "REDIS_SENTINEL_MASTER": "main",
            }
        )
    )
    tls = {"ssl_ca_certs": "/etc/ca.pem", "ssl_cert_reqs": "required"}
    assert celery.conf.broker_use_ssl == celery.conf.redis_backend_use_ssl == tls
    assert celery.backend.connparams["connection_class"] is SentinelManagedSSLConnection  # type: ignore[attr-defined]


def test_any_celery_setting_in_the_namespace_is_read() -> None:
    celery = configure_celery(
        create_app(
            {
                "CELERY_TASK_DEFAULT_QUEUE": "jobs",
                "CELERY_WORKER_PREFETCH_MULTIPLIER": "1",
                "CELERY_RESULT_EXPIRES": 60,
            }
        )
    )
    assert celery.conf.task_default_queue == "jobs"
    assert celery.conf.worker_prefetch_multiplier == 1
    assert celery.conf.result_expires == 60


def test_a_setting_dropped_from_the_config_returns_to_its_default() -> None:
    celery = configure_celery(create_app({"CELERY_TASK_DEFAULT_QUEUE": "jobs"}))
    configure_celery(create_app())
    assert celery.conf.task_default_queue == "celery"


def test_defaults_json_only_started_tracked_results_expire(app: Quart) -> None:
    conf = configure_celery(app).conf
    assert conf.task_serializer == conf.result_serializer == "json"
    assert conf.accept_content == conf.result_accept_content == ["json"]
    assert conf.task_track_started is True
    assert conf.result_expires == 24 * 60 * 60


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("CELERY_ACCEPT_CONTENT", ["json", "pickle"]),
        ("CELERY_RESULT_ACCEPT_CONTENT", ["pickle"]),
        ("CELERY_TASK_SERIALIZER", "pickle"),
        ("CELERY_RESULT_SERIALIZER", "yaml"),
    ],
)
def test_pickle_and_other_serializers_are_refused(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"^{key}: must be .*only JSON"):
        create_app({key: value})


def test_an_unknown_celery_setting_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^CELERY_TASK_TRACK_STARTD: is not a Celery"):
        create_app({"CELERY_TASK_TRACK_STARTD": True})


def test_a_malformed_url_in_the_app_config_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^CELERY_BROKER_URL: .* port"):
        create_app({"CELERY_BROKER_URL": "redis://localhost:port/0"})


def test_a_flask_app_configured_the_same_way_works() -> None:
    flask_app = flask.Flask("flask_app")
    flask_app.config.update(
        CELERY_BROKER_URL="redis://broker:6379/5",
        CELERY_RESULT_BACKEND="redis://results:6379/6",
        CELERY_TASK_DEFAULT_QUEUE="jobs",
    )
    celery = configure_celery(flask_app)
    assert celery is extensions.celery
    assert flask_app.extensions["celery"] is celery
    assert celery.conf.broker_url == "redis://broker:6379/5"
    assert celery.conf.result_backend == "redis://results:6379/6"
    assert celery.conf.task_default_queue == "jobs"
    assert celery.conf.accept_content == ["json"]


def test_a_task_of_an_unconfigured_app_says_so() -> None:
    unconfigured = Celery("unconfigured", task_cls=ContextTask, set_as_current=False)

    @unconfigured.task(name="lonely")
    def lonely() -> None:
        """Never runs."""

    with pytest.raises(RuntimeError, match="before the Celery factory bound it"):
        lonely()
    unconfigured.close()


def test_tasks_record_started_whenever_they_were_first_used() -> None:
    assert ContextTask.track_started is True
    assert count.track_started is True


def test_task_settings_follow_the_config_unless_a_task_sets_its_own() -> None:
    create_app({"CELERY_TASK_ACKS_LATE": False})
    assert echo.acks_late is False
    assert acks_late_always.acks_late is True
    create_app()
    assert echo.acks_late is True
    assert acks_late_always.acks_late is True


def test_tasks_are_acknowledged_when_they_end_and_come_back_after_the_visibility_timeout(
    app: Quart,
) -> None:
    conf = configure_celery(app).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    # An hour: longer than any task the example API starts may run (ten minutes).
    assert conf.broker_transport_options["visibility_timeout"] == 3600
    conf = configure_celery(create_app({"CELERY_VISIBILITY_TIMEOUT": "30"})).conf
    assert conf.broker_transport_options["visibility_timeout"] == 30
    # Swept for every 5 s, not every 100 s: a dead worker's task is back within 35 s.
    assert conf.broker_transport_options["unacked_restore_interval"] == 5
    assert conf.broker_transport_options["unacked_restore_throttle"] == 1
    assert conf.broker_transport_options["socket_timeout"] <= 2  # added to, not replaced
    assert "visibility_timeout" not in conf  # not passed on as a setting of Celery's


def test_an_environment_that_contradicts_the_app_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:secret@env:6379/0")
    with pytest.raises(ConfigurationError, match=r"^CELERY_BROKER_URL: the environment says") as e:
        create_app({"CELERY_BROKER_URL": "redis://config:6379/0"})
    assert "secret" not in str(e.value)
    assert create_app().config["CELERY_BROKER_URL"] == "redis://:secret@env:6379/0"


def test_calls_to_an_unanswering_broker_or_backend_are_bounded(app: Quart) -> None:
    conf = configure_celery(app).conf
    assert conf.broker_connection_timeout <= 2
    assert conf.broker_transport_options["socket_timeout"] <= 2
    assert conf.task_publish_retry_policy["max_retries"] <= 1
    assert conf.redis_socket_timeout <= 5


def test_transport_options_given_add_to_the_bounded_ones() -> None:
    options = {"visibility_timeout": 3600}
    conf = configure_celery(create_app({"CELERY_BROKER_TRANSPORT_OPTIONS": options})).conf
    assert conf.broker_transport_options["visibility_timeout"] == 3600
    assert conf.broker_transport_options["socket_timeout"] == 2


def test_the_result_backend_is_the_one_that_does_not_subscribe_on_send(app: Quart) -> None:
    assert isinstance(configure_celery(app).backend, RedisBackend)


def test_routes_and_queues_follow_the_config_when_it_changes() -> None:
    celery = configure_celery(create_app({"CELERY_TASK_ROUTES": {"tests.echo": "one"}}))
    assert celery.amqp.router.route({}, "tests.echo")["queue"].name == "one"
    configure_celery(create_app({"CELERY_TASK_ROUTES": {"tests.echo": "two"}}))
    assert celery.amqp.router.route({}, "tests.echo")["queue"].name == "two"
    configure_celery(create_app({}))  # routes left out: the default queue again
    assert celery.amqp.router.route({}, "tests.echo")["queue"].name == "celery"

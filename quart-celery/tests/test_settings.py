"""The bridge's settings, from the app's config, the environment and defaults, and the errors a
wrong one raises."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab

from quart_celery import ConfigurationError, exit_on_configuration_error
from quart_celery._broker.address import RedisAddress
from quart_celery._broker.celery_settings import celery_settings as celery_settings_of
from quart_celery.settings import DEFAULT_REDIS_URL, read_settings

ROOT = Path(__file__).resolve().parent.parent


def get_config(environ: dict[str, str]) -> dict[str, Any]:
    """The settings an app with an empty config reads from `environ`."""
    return read_settings({}, environ)


def celery_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Celery's settings for an app of the tests' with these settings."""
    return celery_settings_of(settings, "probe_app", str(ROOT))


def test_the_apps_config_overrides_the_environment_which_overrides_defaults() -> None:
    environ = {"REDIS_URL": "redis://from-env:6379/1", "CELERY_TASK_DEFAULT_QUEUE": "from-env"}
    settings = read_settings({"CELERY_TASK_DEFAULT_QUEUE": "from-config"}, environ)
    assert settings["REDIS_URL"] == "redis://from-env:6379/1"
    assert settings["CELERY_TASK_DEFAULT_QUEUE"] == "from-config"
    assert settings["WS_MAX_TASKS"] == 1000
    assert read_settings({"WS_MAX_TASKS": "5"}, {"WS_MAX_TASKS": "7"})["WS_MAX_TASKS"] == 5
    with pytest.raises(ConfigurationError, match="is not a Celery setting"):
        read_settings({"CELERY_TASK_ACKS_LAET": True}, {})  # a typo in the config is named


def test_defaults() -> None:
    config = get_config({})
    assert config["REDIS_URL"] == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert config["CELERY_BROKER_URL"] is None
    assert config["CELERY_RESULT_BACKEND"] is None
    assert config["CELERY_RESULT_EXPIRES"] == 24 * 60 * 60


def test_environment_overrides_the_urls() -> None:
    config = get_config(
        {
            "REDIS_URL": "redis://cache:6379/1",
            "CELERY_BROKER_URL": "amqp://guest:guest@rabbit:5672//",
            "CELERY_RESULT_BACKEND": "rediss://results:6380/2",
        }
    )
    assert config["REDIS_URL"] == "redis://cache:6379/1"
    assert config["CELERY_BROKER_URL"] == "amqp://guest:guest@rabbit:5672//"
    assert config["CELERY_RESULT_BACKEND"] == "rediss://results:6380/2"


def test_celery_settings_from_the_environment_are_cast() -> None:
    config = get_config(
        {
            "CELERY_RESULT_EXPIRES": "3600",
            "CELERY_WORKER_PREFETCH_MULTIPLIER": "1",
            "CELERY_TASK_ACKS_LATE": "true",
            "CELERY_BROKER_TRANSPORT_OPTIONS": '{"visibility_timeout": 30}',
            "CELERY_TASK_DEFAULT_QUEUE": "jobs",
            "CELERY_RESULT_COMPRESSION": "gzip",
            "CELERY_BROKER_URL": "redis://one:6379/0;redis://two:6379/0",
        }
    )
    assert config["CELERY_RESULT_EXPIRES"] == 3600
    assert config["CELERY_WORKER_PREFETCH_MULTIPLIER"] == 1
    assert config["CELERY_TASK_ACKS_LATE"] is True
    assert config["CELERY_BROKER_TRANSPORT_OPTIONS"] == {"visibility_timeout": 30}
    assert config["CELERY_TASK_DEFAULT_QUEUE"] == "jobs"
    assert config["CELERY_RESULT_COMPRESSION"] == "gzip"
    assert config["CELERY_BROKER_URL"] == "redis://one:6379/0;redis://two:6379/0"


def test_variables_of_celerys_command_line_are_not_settings() -> None:
    config = get_config({"CELERY_CONFIG_MODULE": "x", "CELERY_RDB_PORT": "6899", "HOME": "/"})
    assert "CELERY_CONFIG_MODULE" not in config
    assert "CELERY_RDB_PORT" not in config
    assert "HOME" not in config


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("CELERY_BROKER_URL", "redis://localhost:abc/0", "port that is not from 0 to 65535"),
        ("CELERY_BROKER_URL", "redis://localhost:99999/0", "port that is not from 0 to 65535"),
        ("CELERY_BROKER_URL", "redis://a:6379/0;redis://b:x/0", "'redis://b:x/0' has a port"),
        ("CELERY_BROKER_URL", "localhost:6379", "not a URL of a known kind"),
        ("CELERY_BROKER_URL", "carrier-pigeon://loft", "not a URL of a known kind"),
        ("CELERY_RESULT_BACKEND", "redis://localhost/zero", "database 'zero' that is not a number"),
        ("REDIS_URL", "http://localhost:6379", "not a URL of a known kind"),
        ("CELERY_RESULT_EXPIRES", "soon", "expected a number from 0 up, got 'soon'"),
        ("CELERY_RESULT_EXPIRES", "-1", "expected a number from 0 up, got '-1'"),
        ("CELERY_RESULT_EXPIRES", "nan", "expected a number from 0 up, got 'nan'"),
        ("CELERY_WORKER_PREFETCH_MULTIPLIER", "1.5", "expected a whole number from 0 up"),
        ("CELERY_TASK_ACKS_LATE", "maybe", "expected true or false, got 'maybe'"),
        ("CELERY_BROKER_TRANSPORT_OPTIONS", "{visibility", "expected a JSON dict"),
        ("REDIS_SENTINELS", "sentinel-1,sentinel-2:26379", "'sentinel-1' is not host:port"),
        ("REDIS_SENTINELS", "sentinel-1:99999", "'sentinel-1:99999' is not host:port"),
    ],
)
def test_a_malformed_setting_is_named(name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        get_config({name: value})
    assert raised.value.setting == name
    assert str(raised.value).startswith(f"{name}: ")
    assert problem in str(raised.value)


def test_a_password_in_a_malformed_url_is_not_shown() -> None:
    with pytest.raises(ConfigurationError) as raised:
        get_config({"CELERY_BROKER_URL": "redis://:hunter2@localhost:abc/0"})
    assert "hunter2" not in str(raised.value)
    assert "redis://:**@localhost:abc/0" in str(raised.value)


def test_start_up_stops_with_one_line_naming_the_setting() -> None:
    with pytest.raises(SystemExit) as raised, exit_on_configuration_error():
        get_config({"CELERY_RESULT_EXPIRES": "soon"})
    message = str(raised.value.code)
    expected = "CELERY_RESULT_EXPIRES: expected a number from 0 up, got 'soon'"
    assert message == f"configuration error: {expected}"
    assert raised.value.__cause__ is None


def test_a_beat_schedule_in_the_environment_becomes_celerys() -> None:
    entries = {
        "every-ten": {"task": "tests.echo", "schedule": 10, "args": ["x"]},
        "nightly": {"task": "tests.echo", "schedule": {"crontab": {"minute": 0, "hour": 3}}},
    }
    settings = celery_settings(get_config({"BEAT_SCHEDULE": json.dumps(entries)}))
    schedule = settings["beat_schedule"]
    assert schedule["every-ten"] == entries["every-ten"]
    assert schedule["nightly"]["schedule"] == crontab(minute=0, hour=3)


def test_a_schedule_given_in_a_mapping_keeps_celerys_own_types() -> None:
    config = {**get_config({}), "CELERY_BEAT_SCHEDULE": {"t": {"task": "x", "schedule": 2.5}}}
    assert celery_settings(config)["beat_schedule"] == {"t": {"task": "x", "schedule": 2.5}}


def test_celerys_schedule_variable_in_the_environment_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="give the schedule as BEAT_SCHEDULE instead"):
        get_config({"CELERY_BEAT_SCHEDULE": "{}"})


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ("[1]", "expected a mapping of named entries"),
        ('{"t": {"schedule": 1}}', "needs a task name"),
        ('{"t": {"task": "x", "schedule": "daily"}}', "must be seconds or"),
        ('{"t": {"task": "x", "schedule": 0}}', "over 0 seconds"),
        ('{"t": {"task": "x", "schedule": {"crontab": {"minute": "61"}}}}', "bad crontab"),
    ],
)
def test_a_malformed_beat_schedule_is_named(entries: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as error:
        celery_settings(get_config({"BEAT_SCHEDULE": entries}))
    assert error.value.setting == "BEAT_SCHEDULE"


def test_beat_keeps_its_state_outside_the_checkout() -> None:
    state_file = Path(celery_settings(get_config({}))["beat_schedule_filename"])
    assert ROOT not in state_file.parents
    assert state_file.parent == Path(tempfile.gettempdir())


@pytest.mark.parametrize(
    ("settings", "named", "problem"),
    [
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINELS", "needs REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "main"}, "REDIS_SENTINEL_MASTER", "needs REDIS_SENTINELS"),
        (
            {
                "REDIS_SENTINELS": "s1:26379",
                "REDIS_SENTINEL_MASTER": "main",
                "REDIS_URL": "unix:///run/redis.sock",
            },
            "REDIS_URL",
            "must be redis:// or rediss://",
        ),
    ],
)
def test_sentinel_settings_that_do_not_go_together_are_named(
    settings: dict[str, str], named: str, problem: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RedisAddress.of(settings)
    assert raised.value.setting == named
    assert problem in str(raised.value)

"""Messages built in the event loop are the ones kombu would push, and workers run them.

The first tests compare, call for call, what `MessageBuilder.message` builds with what
`apply_async` makes kombu push onto the same Redis list; only the delivery tag (a fresh uuid
each time) and the expiration (counted from "now") may differ. The rest run what this path
sends on a real worker: a retry, a countdown, a route to a second queue, a priority.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from celery.utils.saferepr import saferepr
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st
from kombu.utils.uuid import uuid
from quart import Quart

from quart_celery import queue
from quart_celery._broker.address import RedisAddress
from quart_celery._broker.batches import BatchWriter
from quart_celery._broker.messages import MessageBuilder, Unsupported, arguments_repr
from quart_celery.testing import ThreadWorker
from tests.probe_app import KEYS, create_app
from tests.worker_tasks import count, echo, retried_once

TIMEOUT = 20.0
ETA = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)


def builder_for(celery: Celery, redis_url: str) -> MessageBuilder:
    """The message builder of `celery`'s app, as the web app makes it where it sends from the
    event loop."""
    writer = BatchWriter.for_app(celery, RedisAddress(redis_url), KEYS)
    assert writer is not None
    return MessageBuilder(celery, writer.broker.database)


@pytest.fixture
def builder(celery: Celery, redis_url: str) -> Iterator[MessageBuilder]:
    """The message builder of the configured app."""
    yield builder_for(celery, redis_url)


def pushed(redis_client: redis.Redis, key: str) -> dict[str, Any]:
    """The one message kombu pushed onto `key`, taken off it."""
    raw = redis_client.rpop(key)
    assert isinstance(raw, bytes) and redis_client.llen(key) == 0, f"no single message on {key!r}"
    message: dict[str, Any] = json.loads(raw)
    return message


def comparable(message: dict[str, Any]) -> dict[str, Any]:
    """A message without what differs from one publish to the next; its body decoded."""
    properties = {
        name: value
        for name, value in message["properties"].items()
        if name not in ("delivery_tag", "expiration")
    }
    body = json.loads(base64.b64decode(message["body"]))
    return {**message, "body": body, "properties": properties}


CALLS = [
    pytest.param(echo, ("hi",), {}, {}, "celery", id="plain"),
    pytest.param(count, (), {"steps": 2, "delay": 0.5}, {}, "celery", id="keyword-arguments"),
    pytest.param(echo, ("x",), {}, {"priority": 6}, "celery\x06\x166", id="priority"),
    pytest.param(echo, ("x",), {}, {"eta": ETA}, "celery", id="eta"),
    pytest.param(echo, ("x",), {}, {"countdown": 30}, "celery", id="countdown"),
    pytest.param(echo, ("x",), {}, {"expires": ETA}, "celery", id="expires-at"),
    pytest.param(echo, ("x",), {}, {"expires": 60}, "celery", id="expires-in"),
    pytest.param(echo, ("x",), {}, {"queue": "second"}, "second", id="queue"),
    pytest.param(echo, ("x",), {}, {"headers": {"x-trace": "abc"}}, "celery", id="headers"),
    pytest.param(echo, ("x",), {}, {"headers": {"x-at": ETA}}, "celery", id="header-kombu-tags"),
    pytest.param(
        echo, ("x",), {}, {"time_limit": 30, "soft_time_limit": 20}, "celery", id="time-limits"
    ),
    pytest.param(echo, ("x",), {}, {"link": echo.si("next")}, "celery", id="link"),
    pytest.param(echo, ("x",), {}, {"ignore_result": True}, "celery", id="ignore-result"),
    pytest.param(echo, ("x",), {}, {"shadow": "shown-as"}, "celery", id="shadow"),
]


@pytest.mark.parametrize(("task", "args", "kwargs", "options", "key"), CALLS)
def test_the_message_is_the_one_kombu_pushes(
    builder: MessageBuilder,
    redis_client: redis.Redis,
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: dict[str, Any],
    key: str,
) -> None:
    task_id = uuid()
    task.apply_async(args, kwargs, task_id=task_id, **options)
    kombus = pushed(redis_client, key)
    ours = builder.message(task, args, kwargs, {**options, "task_id": task_id})
    assert ours.key == key
    built = json.loads(ours.payload)
    for header, relative in (("eta", "countdown"), ("expires", "expires")):
        if isinstance(options.get(relative), int):  # "now + so many seconds", a moment apart
            theirs = datetime.fromisoformat(kombus["headers"][header])
            mine = datetime.fromisoformat(built["headers"][header])
            assert abs(mine - theirs) < timedelta(seconds=5)
            built["headers"][header] = kombus["headers"][header]
    assert comparable(built) == comparable(kombus)
    assert ("expiration" in built["properties"]) == ("expiration" in kombus["properties"])


def test_a_route_of_the_app_is_followed(redis_url: str, redis_client: redis.Redis) -> None:
    app = create_app({"CELERY_TASK_ROUTES": {"tests.count": {"queue": "second"}}})
    builder = builder_for(app.extensions["celery"], redis_url)
    task_id = uuid()
    count.apply_async((), {"steps": 1}, task_id=task_id)
    kombus = pushed(redis_client, "second")
    ours = builder.message(count, (), {"steps": 1}, {"task_id": task_id})
    assert ours.key == "second"
    assert comparable(json.loads(ours.payload)) == comparable(kombus)


@pytest.mark.parametrize("options", [{}, {"queue": "second", "countdown": 30}])
def test_the_task_sent_event_is_the_one_celery_publishes(
    builder: MessageBuilder, redis_client: redis.Redis, options: dict[str, Any]
) -> None:
    # This database's channel only: pub/sub ignores database numbers, and another run of the
    # suite may publish in another.
    database = redis_client.connection_pool.connection_kwargs["db"]
    assert builder.event_topic == f"/{database}.celeryev/task.sent"
    events = redis_client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]
    events.subscribe(builder.event_topic)
    assert events.get_message(timeout=TIMEOUT) is None  # the confirmation, ignored
    task_id = uuid()
    echo.apply_async(("hi",), task_id=task_id, **options)
    celerys = events.get_message(timeout=TIMEOUT)
    events.close()
    assert celerys is not None
    ours = builder.message(echo, ("hi",), {}, {**options, "task_id": task_id})
    assert ours.event is not None

    def comparable_event(raw: bytes) -> dict[str, Any]:
        event = comparable(json.loads(raw))
        for varying in ("timestamp", "clock", "eta"):  # "now", and a count, a moment apart
            assert varying in event["body"]
            event["body"].pop(varying)
        return event

    assert comparable_event(ours.event) == comparable_event(celerys["data"])
    assert json.loads(base64.b64decode(json.loads(ours.event)["body"]))["uuid"] == task_id


def test_without_sent_events_no_event_is_made(redis_url: str) -> None:
    app = create_app({"CELERY_TASK_SEND_SENT_EVENT": False})
    builder = builder_for(app.extensions["celery"], redis_url)
    assert builder.message(echo, ("hi",), {}, {}).event is None


def test_what_this_path_does_not_send_goes_through_the_pool(celery: Celery, redis_url: str) -> None:
    builder = builder_for(celery, redis_url)
    with pytest.raises(Unsupported):
        builder.message(echo, ("x",), {}, {"compression": "zlib"})
    with pytest.raises(TypeError):  # the task's own check of its arguments, as apply_async's
        builder.message(echo, ("x", "y"), {}, {})
    app = create_app({"CELERY_TASK_COMPRESSION": "gzip"})
    assert BatchWriter.for_app(app.extensions["celery"], RedisAddress(redis_url), KEYS) is None
    other_broker = create_app({"CELERY_BROKER_URL": "amqp://guest@127.0.0.1//"})
    other_celery = other_broker.extensions["celery"]
    assert BatchWriter.for_app(other_celery, RedisAddress(redis_url), KEYS) is None


@pytest.fixture
async def routed(redis_client: redis.Redis) -> AsyncIterator[Quart]:
    """An app that routes `tests.count` to a second queue, serving, its context pushed."""
    app = create_app({"TESTING": True, "CELERY_TASK_ROUTES": {"tests.count": "second"}})
    async with app.test_app(), app.app_context():
        assert app.extensions["quart_celery.submitter"].writer is not None  # the loop's path
        yield app


async def test_a_real_worker_runs_what_this_path_sends(
    routed: Quart, redis_client: redis.Redis, thread_worker: ThreadWorker
) -> None:
    celery = routed.extensions["celery"]
    submitted_at = datetime.now(UTC)
    retried = await queue.submit(retried_once)
    later = await queue.submit(echo.s("later").set(countdown=1))
    urgent = await queue.submit(echo.s("urgent").set(priority=9))
    second = await queue.submit(count, steps=2)
    assert redis_client.llen("celery\x06\x169") == 1
    assert redis_client.llen("second") == 1
    with thread_worker(celery, queues=["celery", "second"]):
        assert (await queue.result(retried, timeout=TIMEOUT))["retries"] == 1
        assert await queue.result(urgent, timeout=TIMEOUT) == "urgent"
        assert await queue.result(second, timeout=TIMEOUT) == {"steps": 2}
        assert await queue.result(later, timeout=TIMEOUT) == "later"
    done = datetime.fromisoformat(celery.backend.get_task_meta(later)["date_done"])
    assert done - submitted_at >= timedelta(seconds=1)  # it waited for its countdown


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@given(
    st.one_of(
        st.tuples() | st.lists(_values, max_size=5).map(tuple),
        st.dictionaries(st.text(max_size=12), _values, max_size=5),
    ),
    st.sampled_from([8, 24, 1024]),
    st.sampled_from([0, 1, 3]),
)
@examples(max_examples=400, deadline=None)
def test_the_arguments_repr_is_celerys_saferepr(arguments: Any, maxsize: int, levels: int) -> None:
    assert arguments_repr(arguments, maxsize, levels) == saferepr(
        arguments, maxsize, maxlevels=levels
    )

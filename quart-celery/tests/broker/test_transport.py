"""kombu's Redis channel, publishing through one client instead of a new one per message."""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from quart_celery._broker.transport import Channel
from tests.probe_app import KEYS
from tests.worker_tasks import echo


def test_a_channel_publishes_through_one_client(celery: Celery) -> None:
    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second


def test_the_client_goes_with_the_pools_it_fronts(celery: Celery) -> None:
    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as before:
            pass
        channel._disconnect_pools()  # as after a fork
        with channel.conn_or_acquire() as after:
            assert after is not before
            assert after.ping()


def test_tasks_published_through_it_arrive(celery: Celery, redis_client: redis.Redis) -> None:
    for number in range(3):
        echo.delay(str(number))
    assert redis_client.llen("celery") == 3


def test_a_channel_whose_connection_is_gone_raises_a_connection_error(celery: Celery) -> None:
    # What closing a channel after the broker went away came to in kombu 5.7: putting
    # late-ack messages back needed a new pool from a connection already dropped, and the
    # AttributeError it raised killed the worker. A connection error is one it recovers from.
    with celery.connection_for_write() as connection:
        channel = connection.default_channel
        assert isinstance(channel, Channel)
        channel._disconnect_pools()
        transport_client, channel.connection.client = channel.connection.client, None
        try:
            with pytest.raises(channel.connection.connection_errors):
                channel.qos.restore_unacked()
        finally:
            channel.connection.client = transport_client


def test_a_message_and_its_record_go_together_also_after_redis_forgets_the_script(
    celery: Celery, redis_client: redis.Redis
) -> None:
    first = echo.delay("one").id
    redis_client.script_flush()  # as after a restart of Redis
    second = echo.delay("two").id
    assert redis_client.llen("celery") == 2
    assert redis_client.exists(KEYS.task(first), KEYS.task(second)) == 2

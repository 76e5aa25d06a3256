"""A worker's channel: messages taken from Redis in batches, recorded as kombu records them,
and acknowledged once per turn of the worker's event loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import redis
from celery import Celery
from kombu import Connection, Consumer, Message, Queue
from kombu.utils.json import dumps, loads

from quart_celery._broker import consuming as consuming_module
from quart_celery._broker.consuming import AcknowledgesOnEachTurn, QoS
from quart_celery._broker.transport import Channel
from tests.worker_tasks import echo


@contextmanager
def consuming(
    celery: Celery, prefetch: int, no_ack: bool = False, **transport_options: Any
) -> Iterator[tuple[Connection, Channel, list[Message]]]:
    """A consumer of the `celery` queue holding at most `prefetch` messages; what it received."""
    received: list[Message] = []
    with celery.connection_for_read(transport_options=transport_options) as connection:
        channel = connection.channel()
        assert isinstance(channel, Channel)
        channel.basic_qos(0, prefetch, False)
        consumer = Consumer(
            channel, [Queue("celery")], callbacks=[lambda _, m: received.append(m)], no_ack=no_ack
        )
        with consumer:
            yield connection, channel, received


def on_the_loop(connection: Connection) -> AcknowledgesOnEachTurn:
    """The connection's transport, as if this thread ran the worker's event loop."""
    transport = connection.transport
    assert isinstance(transport, AcknowledgesOnEachTurn)
    transport.loop_thread = threading.get_ident()
    return transport


def send(count: int) -> list[str]:
    return [echo.delay(str(number)).id for number in range(count)]


def recorded(redis_client: redis.Redis) -> dict[str, Any]:
    """The unacked hash, decoded, by delivery tag; checked against its index."""
    stored: dict[bytes, bytes] = redis_client.hgetall("unacked")  # type: ignore[assignment]
    entries = {tag.decode(): loads(value) for tag, value in stored.items()}
    index: list[bytes] = redis_client.zrange("unacked_index", 0, -1)  # type: ignore[assignment]
    indexed = {tag.decode() for tag in index}
    assert indexed == set(entries)
    return entries


def test_a_channel_takes_as_many_as_it_may_hold_in_one_read(
    celery: Celery, redis_client: redis.Redis
) -> None:
    sent = send(8)
    with consuming(celery, prefetch=5) as (connection, _, received):
        connection.drain_events(timeout=5)  # one BRPOP, and the batch after it
        assert [m.headers["id"] for m in received] == sent[:5]
        assert redis_client.llen("celery") == 3
        # Each recorded as kombu's QoS.append records it, so that kombu restores it.
        entries = recorded(redis_client)
        assert entries == {
            m.delivery_tag: [
                loads(dumps(m._raw)),  # type: ignore[attr-defined]  # kombu's virtual message
                m.delivery_info["exchange"],
                m.delivery_info["routing_key"],
            ]
            for m in received
        }
        for message in received[:2]:
            message.ack()  # off the event loop's thread: at once
        assert len(recorded(redis_client)) == 3
        connection.drain_events(timeout=5)  # room for two more, no more
        assert [m.headers["id"] for m in received] == sent[:7]
        assert redis_client.llen("celery") == 1
        for message in received[2:]:
            message.ack()
        assert recorded(redis_client) == {}


def test_messages_taken_without_acknowledgement_are_not_recorded(
    celery: Celery, redis_client: redis.Redis
) -> None:
    # Replies to control commands (`celery inspect`) are consumed so.
    send(3)
    with consuming(celery, prefetch=5, no_ack=True) as (connection, _, received):
        connection.drain_events(timeout=5)
        assert len(received) == 1  # one at a time, as kombu takes them
        assert redis_client.hlen("unacked") == 0


def test_a_message_that_is_not_kombus_stops_the_batch_and_stays_queued(
    celery: Celery, redis_client: redis.Redis
) -> None:
    first = send(1)
    redis_client.lpush("celery", b"not JSON")
    send(1)
    with consuming(celery, prefetch=5) as (connection, _, received):
        connection.drain_events(timeout=5)
        assert [m.headers["id"] for m in received] == first
        assert list(recorded(redis_client)) == [received[0].delivery_tag]
        assert redis_client.lindex("celery", -1) == b"not JSON"  # next in line, as it was
        assert redis_client.llen("celery") == 2


def test_a_first_message_that_is_not_kombus_fails_alone(
    celery: Celery, redis_client: redis.Redis
) -> None:
    redis_client.lpush("celery", b"not JSON")
    send(2)
    with consuming(celery, prefetch=5) as (connection, _, received):
        with pytest.raises(ValueError):
            connection.drain_events(timeout=5)  # as kombu's own read fails it
        assert received == []
        assert recorded(redis_client) == {}  # nothing taken behind it
        assert redis_client.llen("celery") == 2


def test_with_prefetch_disabled_it_takes_one_at_a_time(
    celery: Celery, redis_client: redis.Redis
) -> None:
    # Celery's `worker_disable_prefetch` patches the QoS's `can_consume` alone.
    send(3)
    with consuming(celery, prefetch=5) as (connection, channel, received):
        qos = channel.qos
        qos.can_consume = lambda: len(received) < 1  # type: ignore[method-assign]
        connection.drain_events(timeout=5)
        assert len(received) == 1
        assert len(recorded(redis_client)) == 1


def test_without_ack_emulation_it_reads_as_kombu_does(
    celery: Celery, redis_client: redis.Redis
) -> None:
    send(3)
    with consuming(celery, prefetch=5, ack_emulation=False) as (connection, _, received):
        connection.drain_events(timeout=5)
        assert len(received) == 1
        assert redis_client.hlen("unacked") == 0


def test_acknowledgements_on_the_event_loop_go_at_the_end_of_its_turn(
    celery: Celery, redis_client: redis.Redis
) -> None:
    send(3)
    with consuming(celery, prefetch=5) as (connection, channel, received):
        transport = on_the_loop(connection)  # as if this thread ran the worker's loop
        connection.drain_events(timeout=5)
        assert len(received) == 3
        for message in received:
            message.ack()
        assert channel.qos.can_consume()  # the worker may take more meanwhile
        assert len(recorded(redis_client)) == 3  # not yet in Redis
        transport.flush_acknowledged()  # the turn's end (the loop's on_tick)
        assert recorded(redis_client) == {}


def test_acknowledgements_held_are_sent_when_the_channel_closes(
    celery: Celery, redis_client: redis.Redis
) -> None:
    sent = send(2)
    with consuming(celery, prefetch=5) as (connection, channel, received):
        on_the_loop(connection)
        connection.drain_events(timeout=5)
        received[0].ack()
        qos = channel.qos
        assert isinstance(qos, QoS) and qos.acknowledged
        channel.close()
    # The acknowledged one is gone; the other goes back to its queue, as kombu does at shutdown.
    assert recorded(redis_client) == {}
    assert redis_client.llen("celery") == 1
    assert loads(redis_client.lindex("celery", 0) or b"{}")["headers"]["id"] == sent[1]


def test_acknowledgements_redis_did_not_take_are_held_with_a_warning_not_a_traceback(
    celery: Celery,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The module's logger, not caplog: a worker started in this process earlier (by another
    # test) may have set up logging so that nothing reaches the root logger.
    logged = mock.Mock(spec=logging.Logger)
    monkeypatch.setattr(consuming_module, "logger", logged)
    send(1)
    with consuming(celery, prefetch=5) as (connection, channel, received):
        transport = on_the_loop(connection)
        connection.drain_events(timeout=5)
        received[0].ack()

        @contextmanager
        def away() -> Iterator[Any]:
            raise redis.ConnectionError("Connection refused")
            yield  # a generator, as kombu's is

        with monkeypatch.context() as patched:
            patched.setattr(channel, "conn_or_acquire", away)
            transport.flush_acknowledged()  # Redis away (its reconnecting worker)
        qos = channel.qos
        assert isinstance(qos, QoS) and len(qos.acknowledged) == 1  # held for the next turn
        (warned,) = logged.warning.call_args_list
        assert "acknowledged yet" in warned.args[0]
        logged.exception.assert_not_called()
        transport.flush_acknowledged()  # Redis back
        assert recorded(redis_client) == {}

"""kombu's Redis transport (and its Sentinel variant), publishing through one Redis client per
channel, with records; and kombu's connection, naming them `redis` and `sentinel` in the
broker's URL.

kombu's Redis channel makes a new `redis.Redis` client for every message it publishes; building
one (with its table of response callbacks) cost about a quarter of each `apply_async` here.
The client is only a front for the channel's connection pool, which is thread-safe and already
shared, so one client per channel serves every publish just as well.

Where the broker is the Redis that keeps the tasks' records (`quart_celery._broker.recording`), each
task's message goes with its record, in one atomic command: a second round trip per task would
have cost a publishing worker a quarter of its rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import kombu
from kombu.transport import redis
from kombu.utils.json import dumps
from redis.exceptions import ConnectionError as RedisConnectionError

from quart_celery._broker import recording
from quart_celery._broker.consuming import AcknowledgesOnEachTurn, ReceivesInBatches

# The message onto its queue and the record of its task, atomically, in one command. A
# MULTI/EXEC pipeline would be as atomic, but redis-py took twice as long over its four replies:
# about 45 µs more than a bare LPUSH, where this script takes about 20 (measured here).
SEND_WITH_RECORD = """
redis.call("LPUSH", KEYS[1], ARGV[1])
redis.call("SET", KEYS[2], ARGV[2], "EX", ARGV[3])
"""


class Channel(ReceivesInBatches, redis.Channel):
    """A Redis channel that keeps the client it publishes with, and receives in batches
    (`quart_celery._broker.consuming`)."""

    @cached_property
    def _publishing_client(self) -> Any:
        """One client over the channel's connection pool, made on first use."""
        return self._create_client()  # type: ignore[attr-defined]  # missing from the stubs

    @cached_property
    def _send_with_record(self) -> Any:
        """`SEND_WITH_RECORD`, loaded into Redis on first use (again if Redis forgot it)."""
        return self._publishing_client.register_script(SEND_WITH_RECORD)

    def _disconnect_pools(self) -> None:
        """Forget the client with the pools it fronts (after fork, on close)."""
        self.__dict__.pop("_publishing_client", None)
        self.__dict__.pop("_send_with_record", None)
        self.__dict__.pop("_take_batch", None)
        super()._disconnect_pools()  # type: ignore[misc]  # missing from the stubs

    def _connparams(self, asynchronous: bool = False) -> Any:
        """The pool's connection parameters; a connection error once the connection is gone.

        When the broker goes away, kombu closes the channel, and closing it tries to put the
        unacknowledged (late-ack) messages back, through a pool it makes anew from a
        connection that has already been dropped: kombu 5.7 then raised AttributeError, which
        the worker took as unrecoverable and died. A connection error is what it is, and the
        worker reconnects; the messages stay in Redis's unacked set, to come back after the
        visibility timeout.
        """
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed")
        return super()._connparams(asynchronous)  # type: ignore[misc]  # missing from the stubs

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        """Deliver a message, with its task's record where this Redis keeps the records."""
        record = recording.record_with(message)
        queue_expires = getattr(self, "_expires", None) or {}
        if record is None or "_publish_batch" in kwargs or queue in queue_expires:
            super()._put(queue, message, **kwargs)
            return
        priority = self._get_message_priority(message, reverse=False)
        key = self._q_for_pri(queue, priority)  # type: ignore[attr-defined]
        record_key, name, expires = record
        with self.conn_or_acquire() as client:
            self._send_with_record(
                keys=[key, record_key], args=[dumps(message), name, expires], client=client
            )
        recording.recorded_with_message(message["headers"]["id"])

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """The client given, else the channel's own (kombu makes a new one each time)."""
        yield client or self._publishing_client


class SentinelChannel(Channel, redis.SentinelChannel):
    """The channel above, on the master Redis Sentinel names (kombu's `sentinel://`)."""


class Transport(AcknowledgesOnEachTurn, redis.Transport):
    """kombu's Redis transport, with the channel above."""

    Channel = Channel


class SentinelTransport(AcknowledgesOnEachTurn, redis.SentinelTransport):
    """kombu's Redis Sentinel transport, with the channel above."""

    Channel = SentinelChannel


#: Celery's `broker_transport` setting for a Redis broker, and for one reached through Sentinel.
TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"


class BrokerConnection(kombu.Connection):
    """kombu's connection, calling the transport above by the scheme it serves: `redis`.

    kombu writes a transport given by class path into the broker's URL as its scheme
    (`as_uri()`: the worker's banner, and Flower's broker page), and Flower picks its broker
    support by that scheme: `quart_celery._broker.transport:Transport://` was "'redis' broker is
    not supported". kombu maps its own aliases back the same way (`pyamqp` is `amqp`).
    """

    # A dict, as kombu's own is (an instance attribute there, to mypy).
    resolve_aliases = {  # noqa: RUF012
        **kombu.Connection.resolve_aliases,
        TRANSPORT: "redis",
        SENTINEL_TRANSPORT: "sentinel",
    }

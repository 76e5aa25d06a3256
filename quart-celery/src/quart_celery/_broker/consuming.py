"""How a worker takes its messages from a Redis broker, and acknowledges them: in batches.

kombu's Redis channel takes one message per round trip (BRPOP), records it as unacknowledged
in another (a pipeline), and acknowledges it in a third; each is a wait on Redis for the
worker's consumer thread, which every task of the process passes through. A worker running
hundreds of `async def` tasks at once (`quart_celery._worker.asyncio_pool`) received about 450
a second that way, however many it could have started (bench/async_tasks.py). Here:

- once BRPOP hands over a message, one script records it as unacknowledged and takes as many
  more from the same list as the worker may hold (its prefetch), recording each, atomically:
  those are never out of the list and not yet recorded, as each message was between kombu's
  two round trips (the first, taken by BRPOP, is lost if the connection fails before the
  script runs, as in kombu);
- the acknowledgements the consumer makes in one turn of its event loop go to Redis together,
  at the end of that turn.

What Redis holds is what kombu writes (the unacked hash and its index, in kombu's format), so
kombu's restoring of unacknowledged messages, at shutdown or after the visibility timeout, and
every other client of the broker see nothing new.
"""

from __future__ import annotations

import logging
import threading
from functools import cached_property
from queue import Empty
from time import time
from typing import Any

from kombu.transport import redis
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

#: The most messages one batch takes, where the worker's prefetch sets no bound.
MOST_AT_ONCE = 1000

#: KEYS: the list, the unacked hash, its index. ARGV: the message BRPOP took, the time, how
#: many more to take. Records each message as kombu's `QoS.append` does (`[message, exchange,
#: routing key]` under its delivery tag, the tag in the index at the time) and returns 1 then
#: the ones taken after the first, oldest first. A message that is not kombu's JSON stops the
#: batch and goes back where it was; where the first is not, it returns 0 and takes none (the
#: first, taken already, is left to fail as kombu fails it).
RECEIVE = """
local function record(payload)
    local decoded, message = pcall(cjson.decode, payload)
    if not decoded or type(message) ~= 'table' or type(message['properties']) ~= 'table' then
        return false
    end
    local properties = message['properties']
    local tag = properties['delivery_tag']
    if type(tag) ~= 'string' then
        return false
    end
    local info = properties['delivery_info']
    if type(info) ~= 'table' then
        info = {}
    end
    redis.call('ZADD', KEYS[3], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag, '[' .. payload .. ', '
        .. cjson.encode(info['exchange'] or cjson.null) .. ', '
        .. cjson.encode(info['routing_key'] or cjson.null) .. ']')
    return true
end
if not record(ARGV[1]) then
    return {0}
end
local taken = {1}
for _ = 1, tonumber(ARGV[3]) do
    local payload = redis.call('RPOP', KEYS[1])
    if not payload then
        break
    end
    if not record(payload) then
        redis.call('RPUSH', KEYS[1], payload)
        break
    end
    taken[#taken + 1] = payload
end
return taken
"""


class QoS(redis.QoS):
    """kombu's Redis QoS, acknowledging in batches on the worker's event loop, and told which
    messages the batch script has recorded already."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tags the batch script recorded as unacknowledged, not yet delivered.
        self.recorded: set[str] = set()
        #: Delivery tags acknowledged on the event loop, not yet removed from Redis.
        self.acknowledged: list[str] = []

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        """Acknowledge at the end of the event loop's turn, where called on its thread (as
        Celery's worker does); at once elsewhere."""
        if threading.get_ident() != getattr(self.channel.connection, "loop_thread", None):
            super().ack(delivery_tag)
            return
        self.acknowledged.append(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # the worker may take another message now

    def flush_acknowledged(self) -> None:
        """Remove the messages acknowledged since the last flush from Redis, in one round trip.

        Where that fails (Redis away) they are kept for the next flush; a worker that stops
        before one succeeds leaves them recorded as unacknowledged, to come back after the
        visibility timeout, as an acknowledgement that fails in kombu.
        """
        tags, self.acknowledged = self.acknowledged, []
        if not tags:
            return
        try:
            channel: Any = self.channel  # a Redis channel, which the stubs do not say
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags)
                pipe.execute()
        except Exception as error:
            self.acknowledged[:0] = tags  # again at the next turn's end
            if isinstance(error, RedisError | OSError):  # Redis away: expected, no traceback
                logger.warning("%d message(s) could not be acknowledged yet: %s", len(tags), error)
            else:
                logger.exception("%d message(s) could not be acknowledged yet", len(tags))

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        """Send the acknowledgements still held before the channel closes (kombu then puts
        back, or leaves for the visibility timeout, what was not acknowledged)."""
        self.flush_acknowledged()
        return super().restore_unacked_once(stderr)


class ReceivesInBatches(redis.Channel):
    """kombu's Redis channel, where BRPOP waits for a message, then one script records it and
    takes the others waiting, up to the worker's prefetch (the module's docstring)."""

    QoS = QoS

    @cached_property
    def unacknowledged_queues(self) -> set[str]:
        """The queues consumed without acknowledgement (`no_ack`: replies to control
        commands, ...), whose messages are never recorded."""
        return set()

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self.unacknowledged_queues.add(queue)
        else:
            self.unacknowledged_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _brpop_read(self, **options: Any) -> bool:
        if self.global_keyprefix or not isinstance(self.qos, QoS):  # or `ack_emulation=False`
            return super()._brpop_read(**options)  # type: ignore[misc,no-any-return]
        kombus: Any = self  # its private parts, which the stubs leave out
        try:
            try:
                taken = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except kombus.connection_errors:
                self.client.connection.disconnect()
                raise
            if not taken:
                raise Empty()
        finally:
            kombus._in_poll = None
            kombus._flush_brpop_reauth()
        key, first = taken
        queue = bytes_to_str(key).rsplit(self.sep, 1)[0]
        kombus._queue_cycle.rotate(queue)
        if queue in self.unacknowledged_queues:  # nothing to record: one at a time, as kombu
            self.connection._deliver(loads(bytes_to_str(first)), queue)
            return True
        qos: Any = self.qos
        if "can_consume" in vars(qos):
            more = 0  # Celery's worker_disable_prefetch, kept by patching can_consume alone
        else:
            room = 0 if kombus._closing else qos.can_consume_max_estimate()
            more = max(min(MOST_AT_ONCE if room is None else room, MOST_AT_ONCE) - 1, 0)
        keys = [key, qos.unacked_key, qos.unacked_index_key]
        recorded, *rest = self._take_batch(keys=keys, args=[first, time(), more])
        failed: BaseException | None = None
        for index, payload in enumerate([first, *rest]):
            try:
                message = loads(bytes_to_str(payload))
                if index > 0 or recorded:
                    qos.recorded.add(message["properties"]["delivery_tag"])
                self.connection._deliver(message, queue)
            except Exception as error:  # deliver the others all the same; raise the first
                failed = failed or error
        if failed is not None:
            raise failed
        return True

    @cached_property
    def _take_batch(self) -> Any:
        """`RECEIVE`, loaded into Redis on first use (again if Redis forgot it)."""
        with self.conn_or_acquire() as client:
            return client.register_script(RECEIVE)


class AcknowledgesOnEachTurn(redis.Transport):
    """kombu's Redis transport, where the acknowledgements of each turn of the worker's event
    loop go to Redis at the end of that turn (`QoS.flush_acknowledged`)."""

    #: The thread of the event loop the transport is registered with (the consumer's).
    loop_thread: int | None = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        self.loop_thread = threading.get_ident()
        loop.on_tick.add(self.flush_acknowledged)

    def flush_acknowledged(self) -> None:
        for channel in self.channels or ():
            qos = getattr(channel, "_qos", None)  # not `qos`, which makes one where none is
            if isinstance(qos, QoS):
                qos.flush_acknowledged()

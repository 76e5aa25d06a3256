"""Writing a batch of task messages to a Redis broker from the event loop, with their records.

A batch, its messages (built by `quart_celery._broker.messages`), their records and their
`task-sent` events, goes in one command of `redis.asyncio` (`BatchWriter.send`, the script
`SEND_BATCH`): one round trip and one reply for the batch, and the batch is in Redis whole or
not at all. A MULTI/EXEC pipeline was as atomic, but cost redis-py a parsed reply for each
command: under load, where batches are small, about 80 µs a submission.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from contextlib import suppress
from functools import cached_property
from typing import Any

from celery import Celery
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from quart_celery._broker.address import RedisAddress, aclose
from quart_celery._broker.keys import Keys
from quart_celery._broker.messages import Outgoing
from quart_celery._broker.workflow_records import Command

#: KEYS: the lists of the batch's messages, then the keys of its records. ARGV: how many
#: messages, the records' lifetime in seconds, how many words the other commands take, the
#: messages, the records' task names, the other commands (each its number of words, then its
#: words: a workflow's records and counters, and Celery's writes for it), then a channel and
#: an event for each task-sent event. The messages go last: a script is not undone where a
#: command of it fails, and a command that fails before them leaves nothing queued.
SEND_BATCH = """
local messages, expires, words = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = messages + 1, #KEYS do
    redis.call("SET", KEYS[i], ARGV[3 + i], "EX", expires)
end
local i, last = 4 + #KEYS, 3 + #KEYS + words
while i <= last do
    local count = tonumber(ARGV[i])
    redis.call(unpack(ARGV, i + 1, i + count))
    i = i + count + 1
end
for i = 1, messages do
    redis.call("LPUSH", KEYS[i], ARGV[3 + i])
end
for i = last + 1, #ARGV, 2 do
    redis.call("PUBLISH", ARGV[i], ARGV[i + 1])
end
"""


class BatchWriter:
    """Writes batches of messages, with their records, to the app's Redis broker."""

    def __init__(
        self,
        broker: RedisAddress,
        records: RedisAddress | None,
        keys: Keys,
        timeouts: Mapping[str, Any],
    ) -> None:
        """A writer to `broker`, with the records in `records` where it is another Redis
        (None: the broker keeps them); `timeouts` are the broker's (`socket_connect_timeout`,
        `socket_timeout`, as in Celery's `broker_transport_options`)."""
        self.broker = broker
        self.client = broker.async_client(
            socket_connect_timeout=timeouts.get("socket_connect_timeout", 2),
            socket_timeout=timeouts.get("socket_timeout", 2),
        )
        #: The records' own Redis where it is not the broker; None: the broker keeps them.
        self.records = None if records is None else records.async_client(socket_connect_timeout=2)
        self.keys = keys

    @classmethod
    def for_app(cls, celery: Celery, address: RedisAddress, keys: Keys) -> BatchWriter | None:
        """A writer for `celery`'s broker, with the records in the app's Redis at `address`;
        None where this path cannot send to the broker (the thread pool's path does)."""
        conf = celery.conf
        url = str(conf.broker_url or "")
        scheme = url.split("://", 1)[0]
        if url == address.broker_url and (address.sentinels or scheme in ("redis", "rediss")):
            broker = address  # the app's Redis (through Sentinel, where it is)
        elif scheme in ("redis", "rediss") and ";" not in url:
            broker = RedisAddress(url)
        else:
            return None
        if (
            conf.broker_use_ssl
            or conf.task_compression
            or conf.task_always_eager
            or conf.task_protocol != 2
        ):
            return None
        options = conf.broker_transport_options or {}
        return cls(broker, None if broker == address else address, keys, options)

    async def send(
        self,
        batch: list[Outgoing],
        expires: int,
        timeout: float,
        event_topic: str,
        commands: Sequence[Command] = (),
    ) -> None:
        """Write a batch with its records (and the `task-sent` events, on `event_topic`), in
        one round trip; raise if it cannot be written. `commands` go with the messages, in the
        same step (a workflow's: only where the broker keeps the records).

        Where the records have a Redis of their own, they are written first, and dropped again
        if the messages cannot be.
        """
        if self.records is not None:
            if commands:
                raise ValueError("a workflow is sent in one step only where the broker keeps it")
            await self._write(self.records, [], batch, expires, timeout, event_topic)
            try:
                await self._write(self.client, batch, [], expires, timeout, event_topic)
            except BaseException:
                await self._forget(batch)
                raise
        else:
            await self._write(self.client, batch, batch, expires, timeout, event_topic, commands)

    async def close(self) -> None:
        """Close the connections to the broker and to the records' Redis."""
        await aclose(self.client)
        if self.records is not None:
            await aclose(self.records)

    @cached_property
    def _send_batch(self) -> dict[Redis, AsyncScript]:
        """`SEND_BATCH` for each Redis written to, loaded on first use (again if Redis forgot)."""
        clients = [self.client] if self.records is None else [self.client, self.records]
        return {client: client.register_script(SEND_BATCH) for client in clients}

    async def _write(
        self,
        client: Redis,
        messages: list[Outgoing],
        records: list[Outgoing],
        expires: int,
        timeout: float,
        event_topic: str,
        commands: Sequence[Command] = (),
    ) -> None:
        """LPUSH each message, SET each record and run each command, in one command."""
        keys = [outgoing.key for outgoing in messages]
        keys += [self.keys.task(outgoing.task_id) for outgoing in records]
        words: list[str | bytes | int] = []
        for command in commands:
            words += [len(command), *command]
        args: list[str | bytes | int] = [len(messages), expires, len(words)]
        args += [outgoing.payload for outgoing in messages]
        args += [outgoing.name for outgoing in records]
        args += words
        for outgoing in messages:
            if outgoing.event is not None:
                args += [event_topic, outgoing.event]
        async with asyncio.timeout(timeout):
            await self._send_batch[client](keys=keys, args=args, client=client)

    async def _forget(self, batch: list[Outgoing]) -> None:
        """Drop the records of a batch that was not sent (they would expire anyway)."""
        if self.records is not None:
            keys = [self.keys.task(outgoing.task_id) for outgoing in batch]
            with suppress(Exception):  # they expire with the results anyway
                await asyncio.wait_for(self.records.delete(*keys), 1.0)

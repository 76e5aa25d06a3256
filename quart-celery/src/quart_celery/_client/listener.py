"""One Redis pub/sub connection per server process, fanning result updates out to followers.

Celery's Redis result backend publishes every state it stores on `celery-task-meta-<id>`, and
a task's chunks are published there too, a batch at a time (`quart_celery._broker.chunks`). The
listener subscribes to a task's channel when the first follower of its process starts
following that task (`quart_celery._client.following.Follower`), and unsubscribes when the last one
stops: a server hears only of the tasks its sockets watch, where a pattern subscription made
every server hear every state of every task in the system. Subscriptions asked for at the same
moment go in one SUBSCRIBE (and UNSUBSCRIBE) on the listener's one connection; a follower waits
for Redis to confirm its channel before it reads the stored state, so that no update falls in
between. A workflow's channel (`<app>:workflow:<id>`, where its tasks' changes are published
with its counts: `quart_celery._client.workflows`) is followed the same way, by its full name.

If Redis goes away the listener reconnects with backoff (counted in the metrics), subscribes
to every channel followed again, and, as each is confirmed, tells its followers to read the
task's state anew: an update published meanwhile is not lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import defaultdict
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from quart import Quart
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from quart_celery._broker.address import RedisAddress, aclosing_client
from quart_celery._broker.chunks import is_chunks
from quart_celery._client.current import celery_of
from quart_celery._observability import metrics

logger = logging.getLogger(__name__)

EXTENSION = "quart_celery.result_listener"
CHANNEL_PREFIX = "celery-task-meta-"
MAX_BACKOFF = 5.0
READ_TIMEOUT = 0.1
#: How the worker's script publishes a batch of chunks (`_broker.chunks.APPEND_CHUNKS`): its
#: start, and the list of chunks, as the worker encoded them, that ends it.
BATCH_START, CHUNKS_AT, BATCH_END = b'{"status":"STREAMING",', b',"chunks":[', b"]}"


@dataclass(slots=True)
class Update:
    """News of a task: the meta it published, or None for "read its stored state (and
    chunks) again"; and what the first of its followers made of it, for the others to reuse
    (the listener hands each follower of a task the same update)."""

    task_id: str
    meta: dict[str, Any] | None = None
    made: Any = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class Chunks:
    """Chunks a task streamed, as one batch was published (`_broker.chunks`): the offset of
    the first, and the chunks, each as JSON (`encoded`) or, as the listener takes a batch,
    their values, each encoded once for every recipient when one first asks (`each`); and the
    whole batch as one websocket message, for the sockets that take chunks in batches (made
    on first use, once for all of them, from the chunks as the worker encoded them where the
    batch came as the worker's script publishes it)."""

    task_id: str
    offset: int
    encoded: list[str] | None
    values: list[Any] | None = field(default=None, compare=False, repr=False)
    _body: str | None = field(default=None, compare=False, repr=False)
    _message: str | None = field(default=None, compare=False, repr=False)

    def count(self) -> int:
        """How many chunks the batch holds."""
        return len(self.encoded if self.encoded is not None else self.values or ())

    def each(self) -> list[str]:
        """Each chunk, as JSON."""
        if self.encoded is None:
            self.encoded = [orjson.dumps(value).decode() for value in self.values or ()]
        return self.encoded

    def body(self) -> str:
        """The chunks, comma-separated: the inside of the message's list."""
        if self._body is None:
            self._body = ",".join(self.each())
        return self._body

    def message(self) -> str:
        """The batch as `{"id", "offset", "chunks": [...]}`."""
        if self._message is None:
            self._message = batch_message(self.task_id, self.offset, self.body())
        return self._message


def published_chunks(task_id: str, data: bytes) -> Chunks | None:
    """A batch of a task's chunks as the worker's script publishes it
    (`_broker.chunks.APPEND_CHUNKS`), or None if it is not one.

    Parsed with orjson (the worker encodes the chunks with it: no NaN), the chunks kept as
    values, and, as they came, as the body of the message that sends them in batches. Parsed
    with `json`, each chunk encoded again and joined, a batch of 1,000 small chunks took the
    listener 610 to 650 µs; this way, 87 (236 once a follower takes them one at a time),
    timed on 2026-12-04.
    """
    try:
        meta = orjson.loads(data)
        offset, values = int(meta["offset"]), meta["chunks"]
    except (orjson.JSONDecodeError, LookupError, TypeError, ValueError):
        return None
    if not is_chunks(meta):
        return None
    at = data.find(CHUNKS_AT)  # the task's id, encoded before it, has its quotes escaped
    body = None
    if at >= 0 and data.endswith(BATCH_END):
        body = data[at + len(CHUNKS_AT) : -len(BATCH_END)].decode()
    return Chunks(task_id, offset, None, values, body)


def batch_message(task_id: str, offset: int, body: str) -> str:
    """Consecutive chunks of a task (`body`: each as JSON, comma-separated) as one websocket
    message: `{"id", "offset" (the first's), "chunks": [...]}`."""
    encoded_id = orjson.dumps(task_id).decode()
    return f'{{"id":{encoded_id},"offset":{offset},"chunks":[{body}]}}'


class Recipient(Protocol):
    """What the listener hands a task's updates to: a follower's inbox."""

    def deliver(self, update: Update | Chunks) -> None:
        """Take an update, without waiting."""


class ResultListener:
    """Subscribes to the channels of the tasks followed, and hands each update to its recipients."""

    def __init__(
        self,
        address: RedisAddress,
        namespace: str,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """A listener on the result backend's Redis at `address`, whose connection is named
        after `namespace` (the app's name)."""
        self.address = address
        #: Called each time the listener has connected again after losing its connection.
        self.on_reconnect = on_reconnect
        #: The name its Redis connection goes by (CLIENT LIST), one per listener.
        self.client_name = f"{namespace}-results-{os.getpid()}-{id(self):x}"
        self.recipients: defaultdict[str, set[Recipient]] = defaultdict(set)
        #: Set while connected: the channels followed are (being) subscribed to.
        self.subscribed = asyncio.Event()
        #: Set to stop listening (within `READ_TIMEOUT`).
        self.stopping = asyncio.Event()
        #: Set when a subscription is to be asked for, or given up.
        self.changed = asyncio.Event()
        #: Tasks whose channel this connection has asked for (SUBSCRIBE sent since the last
        #: UNSUBSCRIBE), with the confirmations still to come for each.
        self.asked: dict[str, int] = {}
        #: Tasks whose channel Redis has confirmed: their updates reach the recipients.
        self.confirmed: set[str] = set()
        #: Followers waiting for their task's channel to be confirmed.
        self.confirming: dict[str, asyncio.Future[None]] = {}
        #: Tasks followed before a reconnection: their followers read again once confirmed.
        self.to_read_again: set[str] = set()

    async def subscribe(self, task_id: str, recipient: Recipient) -> None:
        """Deliver the task's updates to `recipient` from now on; return once Redis has
        confirmed its channel, from which moment nothing published is missed."""
        self.recipients[task_id].add(recipient)
        if task_id in self.confirmed:
            return
        confirmed = self.confirming.get(task_id)
        if confirmed is None:
            confirmed = self.confirming[task_id] = asyncio.get_running_loop().create_future()
            self.changed.set()
        # Shielded: one waiter that goes (its socket closed) must not cancel the others' wait.
        await asyncio.shield(confirmed)

    def unsubscribe(self, task_id: str, recipient: Recipient) -> None:
        """Stop delivering the task's updates to `recipient`; the channel goes with the last."""
        recipients = self.recipients.get(task_id)
        if recipients is not None:
            recipients.discard(recipient)
            if not recipients:
                del self.recipients[task_id]
                self.changed.set()

    async def run(self) -> None:
        """Listen until `stopping` is set, reconnecting with backoff whenever Redis goes away
        (or anything else goes wrong: it is logged).

        It reads with a timeout rather than waiting to be cancelled: a redis-py pub/sub read
        cancelled at the wrong moment was seen to swallow the cancellation and hang shutdown.
        """
        backoff = 0.1
        connected_before = False
        while not self.stopping.is_set():
            try:
                # A socket timeout bounds the hand-shake (CLIENT SETNAME): a Redis that accepts
                # and never answers held the listener, and the server's shutdown, for good.
                # Reads of messages wait `READ_TIMEOUT` each, as `get_message` says.
                client = self.address.async_client(
                    socket_connect_timeout=2, socket_timeout=2, client_name=self.client_name
                )
                async with aclosing_client(client), client.pubsub() as pubsub:
                    await pubsub.connect()  # type: ignore[no-untyped-call, unused-ignore]  # untyped in redis-py 8.2
                    if connected_before and self.on_reconnect is not None:
                        self.on_reconnect()
                    connected_before = True
                    self.subscribed.set()
                    asking = asyncio.create_task(self.ask(pubsub))
                    try:
                        while not self.stopping.is_set():
                            if asking.done():
                                asking.result()  # it only ends on an error: raise it here
                            message = await pubsub.get_message(timeout=READ_TIMEOUT)
                            if message is not None:
                                self.handle(message)
                                backoff = 0.1
                    finally:
                        asking.cancel()
                        with suppress(asyncio.CancelledError):
                            await asking
            except Exception as error:
                # Anything else is logged, and the listener goes on: with it gone, no socket
                # of this process would hear of its tasks again.
                if not isinstance(error, RedisError | OSError):
                    logger.exception("the result listener failed; it connects again")
                self.lost_connection()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
        self.subscribed.clear()

    async def ask(self, pubsub: PubSub) -> None:
        """Send the subscriptions asked for and given up since the last time, each kind in
        one command, whenever there are some."""
        while True:
            await self.changed.wait()
            self.changed.clear()
            wanted = set(self.recipients) | set(self.confirming)
            subscribe = [task_id for task_id in wanted if task_id not in self.asked]
            unsubscribe = [task_id for task_id in self.asked if task_id not in wanted]
            if subscribe:
                for task_id in subscribe:
                    self.asked[task_id] = self.asked.get(task_id, 0) + 1
                await _sent(pubsub.subscribe(*map(channel_of, subscribe)))
            if unsubscribe:  # never none: UNSUBSCRIBE without a channel drops them all
                for task_id in unsubscribe:
                    del self.asked[task_id]
                    self.confirmed.discard(task_id)
                await _sent(pubsub.unsubscribe(*map(channel_of, unsubscribe)))

    def lost_connection(self) -> None:
        """The connection is gone, and its subscriptions with it: ask for all again."""
        self.subscribed.clear()
        self.to_read_again |= self.confirmed
        self.asked.clear()
        self.confirmed.clear()
        self.changed.set()

    def handle(self, message: dict[str, Any]) -> None:
        """Take a confirmation, or hand a published meta to the task's recipients."""
        kind = message["type"]
        if kind not in ("subscribe", "message"):
            return
        task_id = message["channel"].decode().removeprefix(CHANNEL_PREFIX)
        if kind == "subscribe":
            self.confirm(task_id)
            return
        recipients = self.recipients.get(task_id)
        if not recipients:
            return
        data = message["data"]
        if data.startswith(BATCH_START):
            update: Update | Chunks | None = published_chunks(task_id, data)
        else:
            try:
                meta = json.loads(data)
            except ValueError:
                return
            update = Update(task_id, meta) if isinstance(meta, dict) else None
            if update is not None and is_chunks(meta):  # published otherwise than by the script
                update = published_chunks(task_id, data)
        if update is None:
            return
        for recipient in list(recipients):
            recipient.deliver(update)

    def confirm(self, task_id: str) -> None:
        """Redis confirmed one SUBSCRIBE of the task's channel; once it has confirmed the last
        one asked for, the channel's followers hear what is published (and those from before
        a reconnection read the task's state again)."""
        outstanding = self.asked.get(task_id)
        if outstanding is None:  # given up meanwhile
            return
        self.asked[task_id] = outstanding = outstanding - 1
        if outstanding > 0:
            return
        self.confirmed.add(task_id)
        waiting = self.confirming.pop(task_id, None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        if task_id in self.to_read_again:
            self.to_read_again.discard(task_id)
            for recipient in self.recipients.get(task_id, ()):
                recipient.deliver(Update(task_id))
        if task_id not in self.recipients:  # its follower went while it was confirmed
            self.changed.set()


def channel_of(topic: str) -> str:
    """The channel of what is followed: a task's id (its result channel), or a channel named
    in full (a workflow's, which has a colon where no task id has one)."""
    return topic if ":" in topic else CHANNEL_PREFIX + topic


async def _sent(command: Awaitable[Any]) -> None:
    """Send a (un)subscription; a connection error if its connection went meanwhile.

    redis-py's pub/sub reconnects inside `get_message`: a command sent by `ask` while it does
    found the connection's stream gone (AttributeError: 'NoneType' object has no attribute
    'writelines', seen under a Sentinel failover), which ended the listener for good.
    """
    try:
        await command
    except AttributeError as error:
        raise RedisConnectionError("the pub/sub connection went while sending") from error


def init_app(app: Quart) -> None:
    """Run the listener while the app serves."""

    @app.while_serving
    async def listener() -> AsyncGenerator[None, None]:
        # Celery publishes on the result backend's Redis: the app's, unless one of its own.
        url = str(celery_of(app).conf.result_backend)
        address = RedisAddress.of(app.config)
        if url.startswith(("redis://", "rediss://")):
            address = RedisAddress(url)
        served = metrics.of(app)
        reconnected = served.listener_reconnects.inc if served is not None else None
        result_listener = ResultListener(address, app.name, reconnected)
        app.extensions[EXTENSION] = result_listener
        running = asyncio.create_task(result_listener.run())
        yield
        result_listener.stopping.set()
        await running
        del app.extensions[EXTENSION]

"""Celery's task messages, built in the event loop as kombu's Redis transport would store them.

On the thread pool's path (`quart_celery._client.submitter.publish`) each batch costs a
hand-over of the GIL to a pool thread and back, and each message kombu's producer machinery
(entity declarations, retry wrappers, copies): about 250 µs of a `delay()`'s 330 here. Where
the broker is Redis, the web app instead

- builds each message with Celery's own code: the app's router and its message builder
  (`app.amqp.router.route`, `app.amqp.create_task_message`), so queues, routes, priorities,
  countdown/eta, expires, time limits and headers are exactly Celery's, and fires Celery's
  `before_task_publish` and `after_task_publish` signals as `apply_async` does;
- wraps it as kombu's Redis transport does (a JSON envelope, its body base64-encoded, for the
  queue's list, or the list of its priority step), which `tests/broker/test_messages.py`
  compares with what kombu itself pushes;
- makes each message's `task-sent` event where `task_send_sent_event` is on (as it is by
  default here, for Flower), as Celery's event dispatcher does on a Redis broker: for the
  fanout channel of the `celeryev` exchange;
- and has `quart_celery._broker.batches` write a whole batch, messages, records and events, in
  one command.

Written by hand because no maintained library publishes Celery tasks to a Redis broker from
asyncio (aio-celery speaks only AMQP, and kombu blocks). What this path does not cover keeps
the thread pool's: another broker, a broker given as a failover list (Sentinel's list of the
app's Redis aside) or with TLS options, compression, exchanges other than direct (fanout,
topic routes), queues that expire, and eager mode.
"""

from __future__ import annotations

import os
from bisect import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from celery import Celery, signals
from celery.events import Event
from celery.local import Proxy
from celery.utils.functional import maybe_list
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from celery.utils.time import maybe_iso8601, utcoffset
from kombu import Queue
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual.base import Base64
from kombu.utils.json import JSONEncoder
from kombu.utils.uuid import uuid

#: The options Celery's `send_task` takes by name; the rest go into the message's properties.
NAMED_OPTIONS = (
    "countdown",
    "eta",
    "link",
    "link_error",
    "group_id",
    "group_index",
    "retries",
    "chord",
    "reply_to",
    "root_id",
    "parent_id",
    "shadow",
    "chain",
    "replaced_task_nesting",
    "route_name",
)
#: The named arguments of `send_task_message` (the sender `app.amqp` makes).
SENDER_OPTIONS = (
    "exchange",
    "routing_key",
    "queue",
    "event_dispatcher",
    "retry",
    "retry_policy",
    "serializer",
    "delivery_mode",
    "compression",
    "declare",
    "headers",
    "exchange_type",
    "timeout",
    "confirm_timeout",
)
#: The named arguments of kombu's `Producer.publish` that Celery passes in the properties.
PUBLISH_OPTIONS = (
    "mandatory",
    "immediate",
    "priority",
    "content_type",
    "content_encoding",
    "expiration",
)
JSON = "application/json"
SENT_ROUTING_KEY = "task.sent"
_BASE64 = Base64()
#: kombu's JSON encoder, made once rather than for every message as `kombu.utils.json.dumps`
#: makes it: the same text.
_ENVELOPE = JSONEncoder()
_DELIVERY_MODES = {"transient": 1, "persistent": 2}


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field the slow way
class Outgoing:
    """A task's message as it goes to Redis, and what Celery's publish signals are told of it."""

    task_id: str
    name: str
    #: The Redis list it goes onto: its queue's, or its queue's priority step's.
    key: str
    #: The envelope, as kombu's Redis transport stores it.
    payload: str | bytes
    body: Any
    exchange: str
    routing_key: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    declare: list[Queue]
    #: Its `task-sent` event, as kombu publishes it; None where events are off.
    event: bytes | None = None


def arguments_repr(arguments: Any, maxsize: int, maxlevels: int) -> str:
    """Celery's `saferepr` of a task's arguments, as `as_task_v2` makes it for the message's
    `argsrepr` and `kwargsrepr`: by `repr` where that is the same text.

    `saferepr` streams tokens in Python (8 µs for `()` and `{"message": "x"}`, a twentieth of
    the event loop's work for a submission); for a flat tuple or dict of the types below whose
    `repr` fits in `maxsize`, it writes what `repr` writes (`test_publisher.py` compares the
    two on generated arguments). Anything else still goes through `saferepr`.
    """
    kind = type(arguments)
    plain = maxlevels >= 1 and (
        (kind is tuple and all(map(_plain, arguments)))
        or (kind is dict and all(map(_plain, arguments)) and all(map(_plain, arguments.values())))
    )
    if plain and len(text := repr(arguments)) < maxsize:
        return text
    return saferepr(arguments, maxsize, maxlevels=maxlevels)


def _plain(value: Any) -> bool:
    """Whether `saferepr` writes `value` as `repr` does: None, a bool, an int, a float, or a
    printable string with no quote or backslash (`saferepr` escapes only quotes)."""
    kind = type(value)
    if kind is str:
        return value.isprintable() and "'" not in value and "\\" not in value
    return value is None or kind in (bool, int, float)


class Unsupported(Exception):
    """A message this path does not send: the thread pool's path sends it instead."""


class MessageBuilder:
    """Builds the app's task messages as kombu's Redis transport stores them."""

    def __init__(self, celery: Celery, database: int) -> None:
        """A builder for `celery`'s messages to its Redis broker, whose database is `database`."""
        self.celery = celery
        conf, amqp = celery.conf, celery.amqp
        self.amqp = amqp  # `celery.amqp` takes a lock on each read
        # Read once: each look-up in Celery's settings costs about 15 µs here, and `amqp.router`
        # and `amqp.create_task_message` read them anew on every access. They change only
        # when the app is configured again, and a builder lives as long as one serving.
        self.router = amqp.router
        #: Whether the app routes any task (the stubs leave `Router.routes` out).
        self.has_routes = bool(getattr(self.router, "routes", True))
        self.build = amqp.create_task_message
        self.default_queue = amqp.default_queue
        self.serializer: str = conf.task_serializer
        self.default_delivery_mode: Any = conf.task_default_delivery_mode
        self.retry_policy: dict[str, Any] = dict(conf.task_publish_retry_policy or {})
        self.inherit_parent_priority: bool = conf.task_inherit_parent_priority
        self.repr_maxlevels: int = conf.task_repr_maxlevels
        options: Mapping[str, Any] = conf.broker_transport_options or {}
        self.sep: str = options.get("sep", kombu_redis.Channel.sep)
        self.priority_steps: list[int] = list(
            options.get("priority_steps", kombu_redis.Channel.priority_steps)
        )
        self.prefix: str = options.get("global_keyprefix", "")
        self.body_encoding: str = options.get("body_encoding", "base64")
        self.sent_events: bool = conf.task_send_sent_event
        # Where Celery's event dispatcher publishes on a Redis broker: the `celeryev` exchange
        # is a fanout there (`celery.events.event.get_exchange`), which kombu's Redis channel
        # publishes to the channel `_get_publish_topic` names.
        fanout_prefix = options.get("fanout_prefix", kombu_redis.Channel.fanout_prefix)
        if isinstance(fanout_prefix, str):
            prefix = fanout_prefix
        else:
            prefix = f"/{database}." if fanout_prefix else ""
        self.event_exchange: str = conf.event_exchange
        topic = self.prefix + prefix + self.event_exchange
        if options.get("fanout_patterns", kombu_redis.Channel.fanout_patterns):
            topic += f"/{SENT_ROUTING_KEY}"
        self.event_topic = topic
        # Who sent it, as the dispatcher names a process that is no worker.
        self.event_hostname = anon_nodename()
        self.event_pid = os.getpid()
        self.clock = celery.clock  # type: ignore[attr-defined]  # missing from the stubs

    def message(
        self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]
    ) -> Outgoing:
        """The message `task.apply_async(args, kwargs, **options)` would send; `Unsupported`
        where its route leads where this path does not go.

        The steps, and their order, are those of Celery's `Task.apply_async`, `Celery.send_task`
        and `send_task_message`, and of kombu's `Producer.publish` and Redis channel.
        """
        celery, amqp = self.celery, self.amqp
        if isinstance(task, Proxy):  # a task as declared: each attribute through the proxy
            task = task._get_current_object()
        options = dict(options)
        task_id = options.pop("task_id", None) or uuid()
        # Task.apply_async
        if task.typing:
            task.__header__(*args, **kwargs)
        shadow = options.pop("shadow", None) or task.shadow_name(args, kwargs, options)
        options = {**task._get_exec_options(), **options}
        if task._dump_pydantic_arguments is not None:
            args, kwargs = task._dump_pydantic_arguments(args, kwargs)
        options.setdefault("ignore_result", task.ignore_result)
        # Celery.send_task
        named = {name: options.pop(name, None) for name in NAMED_OPTIONS}
        time_limit = options.pop("time_limit", None)
        soft_time_limit = options.pop("soft_time_limit", None)
        expires = options.pop("expires", None)
        ignore_result = options.pop("ignore_result", None)
        if not self.has_routes and options.get("queue") is None:
            # What the router falls back on, given rather than looked up in the settings
            # again: with no routes, its answer is the same.
            options["queue"] = self.default_queue
        options = self.router.route(options, named["route_name"] or task.name, args, kwargs, task)
        if expires is not None:
            if isinstance(expires, datetime | str):
                expires_at: datetime = maybe_iso8601(expires)  # type: ignore[assignment]
                expires_s = (expires_at - celery.now()).total_seconds()
            else:
                expires_s = expires
            options["expiration"] = max(expires_s, 0)
        root_id, parent_id = named["root_id"], named["parent_id"]
        parent: Any = celery.current_worker_task
        if parent and (not root_id or not parent_id):
            root_id = root_id or parent.request.root_id or parent.request.id
            parent_id = parent_id or parent.request.id
            if self.inherit_parent_priority:
                options.setdefault("priority", parent.request.delivery_info.get("priority"))
        headers, properties, body, sent_event = self.build(
            task_id,
            task.name,
            args,
            kwargs,
            named["countdown"],
            named["eta"],
            named["group_id"],
            named["group_index"],
            expires,
            named["retries"] or 0,
            named["chord"],
            maybe_list(named["link"]),
            maybe_list(named["link_error"]),
            named["reply_to"] or celery.thread_oid,
            time_limit,
            soft_time_limit,
            self.sent_events,
            root_id,
            parent_id,
            shadow,
            named["chain"],
            ignore_result=ignore_result,
            replaced_task_nesting=named["replaced_task_nesting"] or 0,
            # As Celery makes them, with the setting it would look up twice more.
            argsrepr=options.pop("argsrepr", None)
            or arguments_repr(args, amqp.argsrepr_maxsize, self.repr_maxlevels),
            kwargsrepr=options.pop("kwargsrepr", None)
            or arguments_repr(kwargs, amqp.kwargsrepr_maxsize, self.repr_maxlevels),
            **options,
        )
        for stamp in options.pop("stamped_headers", []):
            options.pop(stamp)
        # send_task_message: its named arguments, and the rest into the properties
        sent = {name: options.pop(name, None) for name in SENDER_OPTIONS}
        if sent["compression"] or sent["exchange"]:
            raise Unsupported("compression, or a named exchange")
        if sent["headers"]:
            headers.update(sent["headers"])
        own_values_only = not sent["headers"] and not headers.get("stamped_headers")
        properties.update(options)
        queue: Any = sent["queue"] if sent["queue"] is not None else self.default_queue
        if isinstance(queue, str):
            queue = amqp.queues[queue]
        exchange_type = sent["exchange_type"] or queue.exchange.type
        if exchange_type != "direct" or queue.expires is not None:
            raise Unsupported("a queue this path does not send to")
        delivery_mode: Any = sent["delivery_mode"] or queue.exchange.delivery_mode
        delivery_mode = delivery_mode or self.default_delivery_mode
        exchange, routing_key = "", queue.name  # the anonymous exchange: straight to the queue
        declare = [queue]
        signals.before_task_publish.send(
            sender=task.name,
            body=body,
            exchange=exchange,
            routing_key=routing_key,
            declare=declare,
            headers=headers,
            properties=properties,
            retry_policy=dict(self.retry_policy),
        )
        # kombu's Producer.publish: its named arguments out of the properties
        published = {name: properties.pop(name, None) for name in PUBLISH_OPTIONS}
        if published["content_type"]:
            raise Unsupported("a body serialized by the caller")
        properties["delivery_mode"] = _DELIVERY_MODES.get(delivery_mode, delivery_mode)
        if published["expiration"] is not None:
            properties["expiration"] = str(int(published["expiration"] * 1000))
        serializer = sent["serializer"] or self.serializer
        if serializer != "json":
            raise Unsupported(f"the {serializer} serializer")
        # kombu's json serializer, with its encoder made once (the same text, no registry).
        content_type, content_encoding, data = JSON, "utf-8", _ENVELOPE.encode(body)
        # kombu's virtual channel: prepare_message, then basic_publish
        properties.setdefault("delivery_info", {})
        properties.setdefault("priority", published["priority"] or 0)
        properties["body_encoding"] = self.body_encoding
        properties["delivery_tag"] = uuid()
        properties["delivery_info"].update(exchange=exchange, routing_key=routing_key)
        envelope = {
            "body": _BASE64.encode(data) if self.body_encoding == "base64" else data,
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers,
            "properties": properties,
        }
        event = None
        if sent_event is not None:
            event = self._sent_event(sent_event, queue.name, exchange, routing_key)
        return Outgoing(
            task_id=task_id,
            name=task.name,
            key=self.prefix + self._list_for(queue.name, properties["priority"]),
            # orjson where every value is Celery's own (strings, numbers, lists): the same JSON
            # as kombu's encoder, in a tenth of the time (11 against 0.8 µs here). Values of the
            # caller's (headers, stamps) may be types kombu tags, and keep its encoder.
            payload=orjson.dumps(envelope) if own_values_only else _ENVELOPE.encode(envelope),
            body=body,
            exchange=exchange,
            routing_key=routing_key,
            headers=headers,
            properties=properties,
            declare=declare,
            event=event,
        )

    def _sent_event(
        self, fields: dict[str, Any], queue: str, exchange: str, routing_key: str
    ) -> bytes:
        """The `task-sent` event of a message, as Celery's event dispatcher and kombu's Redis
        channel publish it (`send_task_message`, `EventDispatcher.publish`)."""
        fields.update(queue=queue, exchange=exchange, routing_key=routing_key)
        event = Event(
            "task-sent",
            hostname=self.event_hostname,
            utcoffset=utcoffset(),
            pid=self.event_pid,
            clock=self.clock.forward(),
            **fields,
        )
        envelope = {
            "body": _BASE64.encode(_ENVELOPE.encode(event)),
            "content-encoding": "utf-8",
            "content-type": JSON,
            "headers": {"hostname": self.event_hostname},
            "properties": {
                "delivery_mode": _DELIVERY_MODES["transient"],
                "delivery_info": {"exchange": self.event_exchange, "routing_key": SENT_ROUTING_KEY},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": uuid(),
            },
        }
        return orjson.dumps(envelope)

    @staticmethod
    def published(outgoing: Outgoing) -> None:
        """Fire `after_task_publish` for a message that was sent.

        Called by the task that submitted it, as `before_task_publish` was: a receiver may
        keep state between the two in a context variable, as OpenTelemetry's Celery
        instrumentation keeps its span, and contexts are a task's own.
        """
        signals.after_task_publish.send(
            sender=outgoing.name,
            body=outgoing.body,
            headers=outgoing.headers,
            exchange=outgoing.exchange,
            routing_key=outgoing.routing_key,
        )

    def _list_for(self, queue: str, priority: Any) -> str:
        """The Redis list of `queue` for a message of `priority`, as kombu names it."""
        try:
            level = max(min(int(priority), 9), 0)
        except (TypeError, ValueError):
            level = 0
        step = self.priority_steps[bisect(self.priority_steps, level) - 1]
        return f"{queue}{self.sep}{step}" if step else queue

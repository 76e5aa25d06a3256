"""The Redis round trips of the async pool's tracers, made together.

Celery's tracer makes a task's Redis calls one at a time and waits for each: the revocation
check, STARTED, the cancel mark, the result. The async pool runs the tracers of hundreds of
tasks in greenlets on one thread (`quart_celery._worker.asyncio_pool`), and waiting there for
each call in turn paced the whole worker: 1,000 tasks that each await 1 s started about 300 a
second, though the worker held them all (bench/async_tasks.py).

Here a call made from a tracer's greenlet, through a client made with `shares_round_trips`,
does not wait on its own: the greenlet steps aside with its command, the thread goes on with
the other tracers, and once it has nothing else to do (`RoundTrips.flush`) it sends every
command waiting in one pipeline and hands each greenlet its reply, or its error. Each tracer
still makes its calls in order, each one done before the next, as Celery expects; only the
waiting is shared. A pipeline is not a transaction: the commands of different tasks are
independent, and one's error is that task's alone.

Written by hand: gevent does this for all sockets, but only by patching the whole process,
which the web server and the asyncio loop of the same worker cannot have.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any, TypeVar

import greenlet

logger = logging.getLogger(__name__)

_here = threading.local()
C = TypeVar("C")


class RoundTrips:
    """The Redis commands the greenlets of one thread wait on, to be sent together."""

    def __init__(self) -> None:
        self.waiting: list[tuple[greenlet.greenlet, Any, tuple[Any, ...], dict[str, Any]]] = []

    def install(self) -> None:
        """Share the round trips of this thread's greenlets through this instance."""
        _here.round_trips = self

    def make(self, client: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """Send a command with the others waiting, and return its reply (in a greenlet)."""
        current = greenlet.getcurrent()
        self.waiting.append((current, client, args, options))
        assert current.parent is not None
        return current.parent.switch()

    def flush(self) -> None:
        """Send the commands waiting, one pipeline per connection pool, and resume each
        greenlet with its reply (in the thread's main greenlet)."""
        waiting, self.waiting = self.waiting, []
        by_pool: dict[int, list[tuple[greenlet.greenlet, Any, tuple[Any, ...], dict[str, Any]]]]
        by_pool = defaultdict(list)
        for call in waiting:
            by_pool[id(call[1].connection_pool)].append(call)
        for calls in by_pool.values():
            pipe = calls[0][1].pipeline(transaction=False)
            for _, _, args, options in calls:
                pipe.execute_command(*args, **options)
            try:
                replies: list[Any] = pipe.execute(raise_on_error=False)
            except Exception as error:  # the connection: every command of the pipeline failed
                replies = [error] * len(calls)
            for (waiter, _, _, _), reply in zip(calls, replies, strict=True):
                if waiter.dead:
                    continue  # stopped meanwhile (`_Job.unwind`)
                try:
                    if isinstance(reply, Exception):
                        waiter.throw(reply)
                    else:
                        waiter.switch(reply)
                except Exception:
                    logger.exception("a task's tracer failed")


def shares_round_trips(client: C) -> C:
    """`client`, a redis-py client, whose commands made from a greenlet of a thread with
    `RoundTrips` installed wait for their reply with the others (elsewhere, as usual)."""
    plain = client.execute_command  # type: ignore[attr-defined]

    def execute_command(*args: Any, **options: Any) -> Any:
        round_trips: RoundTrips | None = getattr(_here, "round_trips", None)
        if round_trips is None or greenlet.getcurrent().parent is None:
            return plain(*args, **options)
        return round_trips.make(client, args, options)

    client.execute_command = execute_command  # type: ignore[attr-defined]
    return client

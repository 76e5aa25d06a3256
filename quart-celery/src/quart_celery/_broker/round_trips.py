"""The Redis round trips of the async pool's tracers, made together.

Celery's tracer makes a task's Redis calls one at a time and waits for each: the revocation
check, STARTED, the cancel mark, the result. The async pool runs the tracers of hundreds of
tasks in greenlets on one thread (`quart_celery._worker.asyncio_pool`), and waiting there for
each call in turn paced the whole worker: 1,000 tasks that each await 1 s started about 300 a
second, though the worker held them all (bench/async_tasks.py).

Here a call made from a tracer's greenlet inside `sharing()`, through a client made with
`shares_round_trips`, does not wait on its own: the greenlet steps aside with its command, the
thread goes on with the other tracers, and once it has nothing else to do (`RoundTrips.flush`)
it sends every command waiting in one pipeline and hands each greenlet its reply, or its
error. Each tracer still makes its calls in order, each one done before the next, as Celery
expects; only the waiting is shared. A pipeline is not a transaction: the commands of different
tasks are independent, and one's error is that task's alone.

Only calls known to be safe share: the bridge's own (storing a state, reading one, the cancel
mark), each idempotent, made holding nothing another tracer could wait for. A greenlet that
stepped aside holding a lock, or a producer from Celery's pool, would block the next tracer
wanting it, and with it the one thread that could let it go.

Written by hand: gevent does this for all sockets, but only by patching the whole process,
which the web server and the asyncio loop of the same worker cannot have.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import greenlet

logger = logging.getLogger(__name__)

#: How long a command may wait for others before it is sent anyway, in seconds.
LONGEST_WAIT = 0.005

_here = threading.local()
#: Whether Redis calls made here may share their round trips (per greenlet: each greenlet has
#: a context of its own).
_sharing: contextvars.ContextVar[bool] = contextvars.ContextVar("sharing", default=False)
C = TypeVar("C")
_Waiting = tuple[greenlet.greenlet, Any, tuple[Any, ...], dict[str, Any]]


class RoundTrips:
    """The Redis commands, and the sleeps, that the greenlets of one thread wait on."""

    def __init__(self) -> None:
        self.waiting: list[_Waiting] = []
        #: When the oldest command waiting began to wait (`time.monotonic`).
        self.since = 0.0
        #: Greenlets asleep (Celery's backoff before a retry), and when each wakes.
        self.sleeping: list[tuple[float, greenlet.greenlet]] = []

    def install(self) -> None:
        """Share the round trips of this thread's greenlets through this instance."""
        _here.round_trips = self

    def make(self, client: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """Send a command with the others waiting, and return its reply (in a greenlet)."""
        current = greenlet.getcurrent()
        assert current.parent is not None
        entry = (current, client, args, options)
        if not self.waiting:
            self.since = time.monotonic()
        self.waiting.append(entry)
        try:
            return current.parent.switch()
        except BaseException:
            # Its error, or the greenlet stopped while it waited (`_Job.unwind`): then its
            # command is not sent, nor its reply handed to a later call.
            self.waiting = [each for each in self.waiting if each is not entry]
            raise

    def sleep(self, seconds: float) -> None:
        """Let the thread's other greenlets run for `seconds` (in a greenlet)."""
        current = greenlet.getcurrent()
        assert current.parent is not None
        self.sleeping.append((time.monotonic() + seconds, current))
        current.parent.switch()

    def overdue(self) -> bool:
        """Whether the commands waiting have waited long enough: send them even though the
        thread has more to do."""
        return bool(self.waiting) and time.monotonic() - self.since >= LONGEST_WAIT

    def next_wake(self) -> float | None:
        """Seconds until the next sleeper wakes, if any sleeps."""
        if not self.sleeping:
            return None
        return max(min(at for at, _ in self.sleeping) - time.monotonic(), 0.0)

    def wake(self) -> None:
        """Resume the greenlets whose sleep is over (in the thread's main greenlet)."""
        now = time.monotonic()
        due = [each for at, each in self.sleeping if at <= now]
        self.sleeping = [(at, each) for at, each in self.sleeping if at > now]
        for each in due:
            _resume(each, None)

    def flush(self) -> None:
        """Send the commands waiting, one pipeline per connection pool, and resume each
        greenlet with its reply (in the thread's main greenlet)."""
        waiting, self.waiting = [each for each in self.waiting if not each[0].dead], []
        by_pool: dict[int, list[_Waiting]] = defaultdict(list)
        for call in waiting:
            by_pool[id(call[1].connection_pool)].append(call)
        for calls in by_pool.values():
            pipe = calls[0][1].pipeline(transaction=False)
            for _, _, args, options in calls:
                pipe.execute_command(*args, **options)
            try:
                replies: list[Any] = pipe.execute(raise_on_error=False)
            except Exception as error:  # the connection: each command's error, its own copy
                replies = [copy.copy(error) for _ in calls]
            for (waiter, _, _, _), reply in zip(calls, replies, strict=True):
                _resume(waiter, reply)


def _resume(waiter: greenlet.greenlet, reply: Any) -> None:
    if waiter.dead:
        return  # stopped meanwhile (`_Job.unwind`)
    try:
        if isinstance(reply, Exception):
            waiter.throw(reply)
        else:
            waiter.switch(reply)
    except Exception:
        logger.exception("a task's tracer failed")


@contextmanager
def sharing() -> Iterator[None]:
    """Let the Redis calls of the block share their round trips, where they can (the
    module's docstring says which may)."""
    token = _sharing.set(True)
    try:
        yield
    finally:
        _sharing.reset(token)


def _round_trips_here() -> RoundTrips | None:
    """This thread's `RoundTrips`, where the calls here may share them: in a greenlet (not the
    thread's main one), inside `sharing()`."""
    if not _sharing.get():
        return None
    round_trips: RoundTrips | None = getattr(_here, "round_trips", None)
    if round_trips is None or greenlet.getcurrent().parent is None:
        return None
    return round_trips


def shares_round_trips(client: C) -> C:
    """`client`, a redis-py client, whose commands made inside `sharing()` from a greenlet of
    a thread with `RoundTrips` installed wait for their reply with the others (elsewhere, as
    usual)."""
    plain = client.execute_command  # type: ignore[attr-defined]

    def execute_command(*args: Any, **options: Any) -> Any:
        round_trips = _round_trips_here()
        if round_trips is None:
            return plain(*args, **options)
        return round_trips.make(client, args, options)

    client.execute_command = execute_command  # type: ignore[attr-defined]
    return client


def cooperative_sleep(seconds: float) -> None:
    """Sleep, letting the thread's other greenlets run where round trips are shared here (a
    backoff before a retry); elsewhere, `time.sleep`."""
    round_trips = _round_trips_here()
    if round_trips is None:
        time.sleep(seconds)
    else:
        round_trips.sleep(seconds)

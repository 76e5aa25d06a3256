"""Redis commands of greenlets on one thread, sent together: each greenlet gets its own reply,
or its own error, in order."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import greenlet
import pytest
import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from quart_celery._broker.round_trips import (
    RoundTrips,
    cooperative_sleep,
    shares_round_trips,
    sharing,
)
from quart_celery.testing import free_port


def in_greenlets(*bodies: Callable[[], Any], share: bool = True) -> tuple[list[Any], list[int]]:
    """Run each body in a greenlet of a new thread with `RoundTrips` installed (inside
    `sharing()`, with `share`), flushing until none waits: what each returned (or raised),
    and how many commands each flush sent."""
    outcomes: list[Any] = [None] * len(bodies)
    batches: list[int] = []

    def run(index: int, body: Callable[[], Any]) -> None:
        try:
            with sharing() if share else nullcontext():
                outcomes[index] = body()
        except Exception as error:
            outcomes[index] = error

    def thread() -> None:
        round_trips = RoundTrips()
        round_trips.install()
        for index, body in enumerate(bodies):
            greenlet.greenlet(run).switch(index, body)
        while round_trips.waiting or round_trips.sleeping:
            if round_trips.waiting:
                batches.append(len(round_trips.waiting))
                round_trips.flush()
            else:
                time.sleep(round_trips.next_wake() or 0)
                round_trips.wake()

    runner = threading.Thread(target=thread)
    runner.start()
    runner.join(30)
    return outcomes, batches


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return shares_round_trips(redis.Redis(connection_pool=redis_client.connection_pool))


def test_the_commands_of_greenlets_go_together_each_reply_to_its_own(client: redis.Redis) -> None:
    def body(number: int) -> Callable[[], Any]:
        def run() -> Any:
            client.set(f"round-trips:{number}", number)
            value = client.get(f"round-trips:{number}")
            return value, client.incr("round-trips:count")

        return run

    outcomes, batches = in_greenlets(*(body(number) for number in range(3)))
    assert batches == [3, 3, 3]  # three round trips, not nine
    assert [value for value, _ in outcomes] == [b"0", b"1", b"2"]
    assert sorted(count for _, count in outcomes) == [1, 2, 3]


def test_an_error_is_the_greenlets_own(client: redis.Redis) -> None:
    client.set("round-trips:text", "not a number")
    outcomes, _ = in_greenlets(
        lambda: client.incr("round-trips:text"), lambda: client.incr("round-trips:number")
    )
    assert isinstance(outcomes[0], redis.ResponseError)
    assert outcomes[1] == 1


def test_a_script_redis_never_saw_is_loaded_then_run(client: redis.Redis) -> None:
    script = Script(client, f"return ARGV[1] -- {uuid.uuid4()}")  # unknown to Redis
    outcomes, batches = in_greenlets(lambda: script(args=["a"]), lambda: script(args=["b"]))
    assert outcomes == [b"a", b"b"]
    assert batches == [2, 2, 2]  # NOSCRIPT, SCRIPT LOAD, EVALSHA


def test_a_connection_that_fails_fails_each_command(redis_client: redis.Redis) -> None:
    nowhere = shares_round_trips(redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0)))
    outcomes, _ = in_greenlets(lambda: nowhere.get("a"), lambda: nowhere.get("b"))
    assert all(isinstance(outcome, redis.ConnectionError) for outcome in outcomes)


def test_on_a_thread_without_them_the_client_waits_as_usual(client: redis.Redis) -> None:
    client.set("round-trips:plain", "1")
    assert client.get("round-trips:plain") == b"1"


def test_a_greenlet_stopped_while_it_waits_sends_nothing_and_gets_nothing(
    client: redis.Redis,
) -> None:
    got: list[Any] = []

    def thread() -> None:
        round_trips = RoundTrips()
        round_trips.install()

        def stopped() -> None:
            try:
                with sharing():
                    client.set("round-trips:stopped", "sent")
            finally:  # unwinding, it reads: its own reply, not the SET's
                got.append(client.get("round-trips:stopped"))

        waiting = greenlet.greenlet(stopped)
        waiting.switch()
        assert len(round_trips.waiting) == 1
        waiting.throw(greenlet.GreenletExit)  # as `_Job.unwind` stops it
        assert round_trips.waiting == []
        round_trips.flush()

    runner = threading.Thread(target=thread)
    runner.start()
    runner.join(30)
    assert got == [None]
    assert client.get("round-trips:stopped") is None


def test_outside_sharing_a_greenlets_command_waits_as_usual(client: redis.Redis) -> None:
    # Celery's own calls (a producer held while it sets a chord's size, a lock held while it
    # reads results): a greenlet stepping aside there could block the others for good.
    def body() -> Any:
        return client.incr("round-trips:plain-count")

    outcomes, batches = in_greenlets(body, body, share=False)
    assert outcomes == [1, 2]
    assert batches == []  # none waited


def test_greenlets_sleep_side_by_side() -> None:
    # Celery's backoff before a retry (`Backend._sleep`): the others run meanwhile.
    ended: list[str] = []

    def sleeper(name: str, seconds: float) -> Callable[[], Any]:
        def run() -> None:
            cooperative_sleep(seconds)
            ended.append(name)

        return run

    in_greenlets(sleeper("long", 0.2), sleeper("short", 0.01))
    assert ended == ["short", "long"]

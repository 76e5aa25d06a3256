"""Capturing a workflow: what Celery's canvas would send, kept rather than sent, with every
task of it (sent now or carried in a message), where its result comes from, and Celery's
writes for it."""

from __future__ import annotations

import threading

import redis
from celery import Celery, chain, chord, group

from quart_celery._broker.canvas import capture, captured
from tests.worker_tasks import echo, square, total


def test_a_chain_sends_its_first_link_and_carries_the_rest(
    celery: Celery, redis_client: redis.Redis
) -> None:
    workflow = capture(celery, chain(square.s(x=2), square.s(), echo.si(message="end")))
    (sent,) = workflow.sends
    record = workflow.record
    assert record.kind == "chain"
    assert [name for _, name in record.members] == ["tests.square", "tests.square", "tests.echo"]
    assert record.members[0][0] == sent.task_id
    assert record.workflow_id == record.result == record.members[-1][0]  # Celery's: the last
    assert len(sent.options["chain"]) == 2
    assert redis_client.llen("celery") == 0  # nothing was sent
    assert workflow.commands == []


def test_a_group_and_a_chord_give_their_ids_and_results_as_celery_does(celery: Celery) -> None:
    grouped = capture(celery, group(square.s(x=value) for value in range(3)), "my-group")
    assert grouped.record.workflow_id == "my-group"
    assert grouped.record.result == [send.task_id for send in grouped.sends]
    assert {send.options["group_id"] for send in grouped.sends} == {"my-group"}

    chorded = capture(celery, chord([square.s(x=1), chain(square.s(x=2), square.s())], total.s()))
    names = [name for _, name in chorded.record.members]
    assert names == ["tests.square", "tests.square", "tests.square", "tests.total"]  # body last
    assert chorded.record.result == chorded.record.workflow_id == chorded.record.members[-1][0]
    written = [command[:2] for command in chorded.commands]
    assert [verb for verb, _ in written] == ["DEL", "SET"]  # the chord's size, as Celery writes it
    assert str(written[1][1]).endswith(".s'")  # the chord's size, under its group's key


def test_a_group_of_one_is_still_a_list(celery: Celery) -> None:
    workflow = capture(celery, group([square.s(x=3)]))
    assert workflow.record.result == [workflow.sends[0].task_id]


def test_only_the_capturing_thread_captures(celery: Celery, redis_client: redis.Redis) -> None:
    sent: list[str] = []
    with captured() as capture_here:
        square.s(x=1).apply_async()
        other = threading.Thread(target=lambda: sent.append(echo.delay("sent").id))
        other.start()
        other.join()
    assert len(capture_here.sends) == 1
    assert redis_client.llen("celery") == 1 and len(sent) == 1

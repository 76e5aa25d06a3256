"""Workflows over HTTP and one websocket, against a real worker: submitted as JSON, followed as
one, cancelled as one; bad workflows refused where they are wrong, with nothing sent."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from quart.typing import TestClientProtocol as Client

from quart_celery.testing import (
    ProcessWorker,
    error_of,
    messages_until_closed,
    snapshot,
    wait_for_async,
)
from tests.probe_app import KEYS

pytestmark = pytest.mark.integration

TIMEOUT = 30


def step(name: str, **kwargs: Any) -> dict[str, Any]:
    return {"name": name, "kwargs": kwargs}


def squares(*values: int) -> list[dict[str, Any]]:
    return [step("tests.square", x=value) for value in values]


MAP_AND_REDUCE = {"chord": {"header": squares(1, 2, 3, 4), "body": step("tests.total")}}


async def submitted(client: Client, workflow: Any, **headers: str) -> dict[str, Any]:
    response = await client.post("/api/workflows", json=workflow, headers=headers)
    assert response.status_code == 202, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    assert response.headers["Location"] == body["url"]
    return body


async def workflow_of(client: Client, workflow_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/workflows/{workflow_id}")
    assert response.status_code == 200, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def followed(client: Client, accepted: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    async with client.websocket(accepted["websocket"]) as socket:
        return await messages_until_closed(socket)


async def followed_from_the_start(
    client: Client, accepted: dict[str, Any], process_worker: ProcessWorker
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The workflow's first snapshot, taken before a worker starts (so it cannot be its last,
    however slow the socket is to connect), then its changes to the end, and the close code."""
    async with client.websocket(accepted["websocket"]) as socket:
        first = await socket.receive_json()
        assert first["state"] == "PENDING"
        process_worker()
        changes, code = await messages_until_closed(socket)
        return first, changes, code


async def test_a_chord_maps_and_reduces_over_one_socket(
    client: Client, process_worker: ProcessWorker
) -> None:
    accepted = await submitted(client, MAP_AND_REDUCE)
    assert set(accepted) == {"id", "url", "websocket", "tasks"}
    assert [task["name"] for task in accepted["tasks"]] == ["tests.square"] * 4 + ["tests.total"]
    assert accepted["tasks"][-1]["id"] == accepted["id"]  # a chord's id is its body's

    first, changes, code = await followed_from_the_start(client, accepted, process_worker)

    assert code == 1000
    assert set(first) == {"id", "state", "total", "done", "failed", "result", "tasks"}
    assert first["total"] == 5
    final = changes[-1]
    assert (final["state"], final["done"], final["failed"], final["result"]) == (
        "SUCCESS",
        5,
        0,
        30,
    )
    for change in changes:
        assert set(change) - {"result"} == {"id", "state", "total", "done", "failed", "task"}
        assert ("result" in change) == (change is final)
        assert change["task"]["id"] in {task["id"] for task in accepted["tasks"]}
    done = [change["done"] for change in changes]
    assert done == sorted(done)
    ended = {change["task"]["id"] for change in changes if change["task"]["state"] == "SUCCESS"}
    assert ended | {task["id"] for task in first["tasks"] if task["state"] == "SUCCESS"} == {
        task["id"] for task in accepted["tasks"]
    }
    after = await workflow_of(client, accepted["id"])
    assert (after["state"], after["result"], after["done"]) == ("SUCCESS", 30, 5)
    assert {task["state"] for task in after["tasks"]} == {"SUCCESS"}


async def test_a_chain_gives_each_step_the_result_before_it(
    client: Client, process_worker: ProcessWorker
) -> None:
    chain = {
        "chain": [
            step("tests.square", x=3),
            step("tests.square"),
            {"name": "tests.echo", "kwargs": {"message": "unmoved"}, "immutable": True},
            step("tests.echo"),
        ]
    }
    accepted = await submitted(client, chain)
    last = accepted["tasks"][-1]["id"]
    assert last == accepted["id"]
    # Every link is known at once, though only the first was queued: it is no 404.
    assert (await snapshot(client, last))["state"] == "PENDING"
    async with client.websocket("/ws/tasks") as socket:
        await socket.send_json({"subscribe": [last]})
        assert (await socket.receive_json())["state"] == "PENDING"
        process_worker()
        messages, code = await followed(client, accepted)
        while (message := await socket.receive_json())["state"] != "SUCCESS":
            pass
    assert message["result"] == "unmoved"
    assert code == 1000
    assert (messages[-1]["state"], messages[-1]["result"]) == ("SUCCESS", "unmoved")
    states = await workflow_of(client, accepted["id"])
    assert states["done"] == 4


async def test_a_group_gives_its_results_in_order(
    client: Client, process_worker: ProcessWorker
) -> None:
    process_worker()
    nested = {
        "group": [*squares(5, 6), {"chain": [step("tests.square", x=2), step("tests.square")]}]
    }
    accepted = await submitted(client, nested)
    messages, code = await followed(client, accepted)
    assert code == 1000
    assert (messages[-1]["state"], messages[-1]["result"]) == ("SUCCESS", [25, 36, 16])


async def test_a_failed_step_fails_the_workflow(
    client: Client, process_worker: ProcessWorker
) -> None:
    chain = {"chain": [step("tests.fail", message="broken"), step("tests.echo")]}
    accepted = await submitted(client, chain)
    _, changes, code = await followed_from_the_start(client, accepted, process_worker)
    assert code == 1000
    final = changes[-1]
    assert (final["state"], final["task"]["name"]) == ("FAILURE", "tests.fail")

    async def propagated() -> bool:  # Celery stores the failure on the links after it
        after = await workflow_of(client, accepted["id"])
        return [task["state"] for task in after["tasks"]] == ["FAILURE", "FAILURE"]

    await wait_for_async(propagated, TIMEOUT, "the failure on the link after it")


@pytest.mark.parametrize(
    "workflow",
    [
        # What runs after the failure is a group, or a chord nested in a body: Celery stores
        # the failure under an id that is no task's, and those tasks never get a state.
        {"chain": [step("tests.fail", message="no"), {"group": [step("tests.square")] * 2}]},
        {
            "chord": {
                "header": [step("tests.fail", message="no"), *squares(1)],
                "body": {"chord": {"header": [step("tests.total")], "body": step("tests.square")}},
            }
        },
    ],
    ids=["before a group", "before a nested chord"],
)
async def test_a_failure_ends_the_workflow_whatever_comes_after(
    client: Client, process_worker: ProcessWorker, workflow: dict[str, Any]
) -> None:
    process_worker()
    messages, code = await followed(client, await submitted(client, workflow))
    assert (messages[-1]["state"], code) == ("FAILURE", 1000)


async def test_a_link_revoked_on_its_own_ends_the_workflow_revoked(
    client: Client, process_worker: ProcessWorker
) -> None:
    chain = {"chain": [*squares(2), step("tests.square"), step("tests.square")]}
    accepted = await submitted(client, chain)
    second = accepted["tasks"][1]["id"]
    assert (await client.delete(f"/api/tasks/{second}")).status_code == 202
    process_worker()
    messages, code = await followed(client, accepted)
    assert (messages[-1]["state"], code) == ("REVOKED", 1000)


async def test_a_workflow_a_task_sends_is_followed_as_one(
    client: Client, process_worker: ProcessWorker
) -> None:
    process_worker()
    sender = await client.post(
        "/api/tasks", json={"name": "tests.fans_out", "kwargs": {"count": 3}}
    )
    sender_id = (await sender.get_json())["id"]
    sent = await wait_for_async(
        lambda: _succeeded(client, sender_id), TIMEOUT, "the task to send its workflow"
    )
    workflow_id = sent["result"]
    messages, code = await followed(client, {"websocket": f"/ws/workflows/{workflow_id}"})
    assert code == 1000
    assert (messages[-1]["state"], messages[-1]["result"], messages[-1]["total"]) == (
        "SUCCESS",
        5,
        4,
    )


async def _succeeded(client: Client, task_id: str) -> dict[str, Any] | None:
    body = await snapshot(client, task_id)
    return body if body["state"] == "SUCCESS" else None


async def test_a_late_follower_gets_the_final_snapshot_and_a_normal_close(
    client: Client, process_worker: ProcessWorker
) -> None:
    process_worker()
    accepted = await submitted(client, MAP_AND_REDUCE)
    await followed(client, accepted)
    messages, code = await followed(client, accepted)
    assert code == 1000
    assert [(message["state"], message["result"]) for message in messages] == [("SUCCESS", 30)]


async def test_cancelling_revokes_every_task_not_ended(
    client: Client, process_worker: ProcessWorker
) -> None:
    process_worker()
    slow = [step("tests.async_square", x=value, delay=5) for value in range(3)]
    accepted = await submitted(client, {"chord": {"header": slow, "body": step("tests.total")}})

    async def running() -> bool:
        tasks = (await workflow_of(client, accepted["id"]))["tasks"]
        return all(task["state"] == "STARTED" for task in tasks[:3])

    await wait_for_async(running, TIMEOUT, "the header to run")
    async with client.websocket(accepted["websocket"]) as socket:
        assert (await socket.receive_json())["state"] == "STARTED"
        response = await client.delete(f"/api/workflows/{accepted['id']}")
        assert response.status_code == 202
        messages, code = await messages_until_closed(socket)
    assert code == 1000
    assert messages[-1]["state"] == "REVOKED"

    after = await workflow_of(client, accepted["id"])
    assert after["state"] == "REVOKED"
    assert {task["state"] for task in after["tasks"][:3]} == {"REVOKED"}
    again = await client.delete(f"/api/workflows/{accepted['id']}")
    assert again.status_code == 409
    assert (await error_of(again))["code"] == "workflow_finished"


async def test_an_unknown_workflow_is_404_everywhere(client: Client) -> None:
    unknown = str(uuid.uuid4())
    for method in (client.get, client.delete):
        response = await method(f"/api/workflows/{unknown}")
        assert response.status_code == 404
        assert (await error_of(response))["code"] == "workflow_not_found"
    async with client.websocket(f"/ws/workflows/{unknown}") as socket:
        messages, code = await messages_until_closed(socket)
    assert (messages[0]["error"]["code"], code) == ("not_found", 4404)


async def test_an_idempotency_key_names_a_workflow_whose_result_is_a_group(
    client: Client,
) -> None:
    # Celery does not give the id asked for to a group that ends a chain: the record must.
    workflow = {"chain": [*squares(2), {"group": [step("tests.square"), step("tests.square")]}]}
    accepted = await submitted(client, workflow, **{"Idempotency-Key": "nested"})
    assert (await workflow_of(client, accepted["id"]))["total"] == 3


@pytest.mark.settings(WORKFLOW_MAX_BYTES=4096)
async def test_a_workflow_whose_messages_are_too_large_is_413_and_sends_nothing(
    client: Client, redis_client: redis.Redis
) -> None:
    # Celery copies a chord's body into each message of its header.
    echo = {"name": "tests.echo", "kwargs": {"message": "x" * 90}, "immutable": True}
    body = {"group": [echo] * 10}
    workflow = {"chord": {"header": squares(*range(10)), "body": body}}
    response = await client.post("/api/workflows", json=workflow)
    assert response.status_code == 413
    assert (await error_of(response))["code"] == "workflow_too_large"
    assert redis_client.llen("celery") == 0


async def test_a_repeat_with_the_same_idempotency_key_sends_nothing(
    client: Client, redis_client: redis.Redis
) -> None:
    first = await submitted(client, MAP_AND_REDUCE, **{"Idempotency-Key": "map-1"})
    response = await client.post(
        "/api/workflows", json=MAP_AND_REDUCE, headers={"Idempotency-Key": "map-1"}
    )
    assert response.status_code == 202
    assert response.headers["Idempotent-Replayed"] == "true"
    assert await response.get_json() == first
    assert redis_client.llen("celery") == 4  # the header, once
    other = await client.post(
        "/api/workflows", json={"group": squares(1)}, headers={"Idempotency-Key": "map-1"}
    )
    assert other.status_code == 422


BAD_WORKFLOWS: list[tuple[Any, str]] = [
    ({"group": []}, "group: must have at least one step"),
    ({"chain": "square"}, "chain: must be a list"),
    ({"sequence": [step("tests.echo", message="x")]}, "workflow: 'sequence' is no kind"),
    ({"group": squares(1), "chain": squares(2)}, "workflow: has more than one kind"),
    ({"group": [*squares(1, 2), step("tests.square", x="3")]}, "group[2].kwargs.x: "),
    ({"group": [step("tests.nothing")]}, "group[0].name: there is no task 'tests.nothing'"),
    ({"group": [step("tests.web_app_name")]}, "group[0].name: there is no task"),  # not exposed
    ({"group": [{"name": "tests.echo", "kwargs": {"message": "x"}, "later": 1}]}, "group[0].later"),
    ({"group": [{"name": "tests.echo", "kwargs": ["x"]}]}, "group[0].kwargs: must be an object"),
    ({"group": [{"name": "tests.echo", "kwargs": {}, "immutable": "yes"}]}, "group[0].immutable"),
    ({"group": [step("tests.echo")]}, "group[0].kwargs.message: Field required"),
    ({"chord": {"header": squares(1)}}, "chord: has no body"),
    ({"chord": {"header": squares(1), "body": 5}}, "chord.body: must be a task"),
    ({"chord": {"header": squares(1), "body": []}}, "chord.body: must be a task"),
    ({"chord": [squares(1)]}, "chord: must be an object"),
    ({"chord": {"header": [], "body": step("tests.total")}}, "chord.header: must have at least"),
    (
        {"chord": {"header": squares(1), "body": step("tests.total", values=[1])}},
        "chord.body.kwargs.values: is given",
    ),
    (
        {"chain": [*squares(1), step("tests.square", x=2)]},
        "chain[1].kwargs.x: is given by the result",
    ),
    (
        {"chain": [*squares(1), {"group": [step("tests.echo", message="x")]}]},
        "chain[1].group[0].kwargs.message: is given",
    ),
    ({"chain": [{"chain": squares(1)}, 3]}, "chain[1]: must be a task"),
    ([MAP_AND_REDUCE], "workflow: must be"),
]


@pytest.mark.parametrize(("workflow", "fault"), BAD_WORKFLOWS)
async def test_a_bad_workflow_says_where_and_sends_nothing(
    client: Client, redis_client: redis.Redis, workflow: Any, fault: str
) -> None:
    response = await client.post("/api/workflows", json=workflow)
    assert response.status_code == 422, await response.get_data(as_text=True)
    error = await error_of(response)
    assert error["code"] == "invalid_workflow"
    assert error["message"].startswith(fault), error["message"]
    assert redis_client.llen("celery") == 0
    assert not redis_client.keys(f"{KEYS.namespace}:*")


@pytest.mark.settings(WORKFLOW_MAX_TASKS=3, WORKFLOW_MAX_DEPTH=2)
async def test_limits_keep_one_request_from_flooding_the_queue(
    client: Client, redis_client: redis.Redis
) -> None:
    too_many = await client.post("/api/workflows", json={"group": squares(1, 2, 3, 4)})
    assert (await error_of(too_many))["message"] == "group[3]: a workflow may have 3 tasks at most"
    too_deep = {"group": [{"chain": [{"group": squares(1)}]}]}
    response = await client.post("/api/workflows", json=too_deep)
    assert (await error_of(response))["message"].startswith("group[0].chain[0]: workflows may nest")
    assert redis_client.llen("celery") == 0
    await submitted(client, {"group": [{"chain": [*squares(1), step("tests.square")]}]})


async def test_a_body_that_is_not_json_is_400(client: Client) -> None:
    response = await client.post(
        "/api/workflows", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert (await error_of(response))["code"] == "invalid_json"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
names = st.sampled_from(["tests.square", "tests.total", "tests.echo", "celery.ping"])
steps = st.recursive(
    st.fixed_dictionaries(
        {"name": names},
        optional={
            "kwargs": st.dictionaries(st.sampled_from(["x", "values", "message"]), json_values),
            "immutable": json_values,
        },
    ),
    lambda children: st.dictionaries(
        st.sampled_from(["chain", "group", "chord", "other"]),
        st.lists(children, max_size=3)
        | st.fixed_dictionaries(
            {"header": st.lists(children, max_size=2)}, optional={"body": children}
        )
        | json_values,
        min_size=1,
        max_size=2,
    ),
    max_leaves=6,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(workflow=steps | json_values)
async def test_generated_workflows_are_accepted_or_refused_cleanly(
    client: Client, workflow: Any
) -> None:
    response = await client.post("/api/workflows", json=workflow)
    body = await response.get_json()
    if response.status_code == 202:
        assert (await workflow_of(client, body["id"]))["total"] == len(body["tasks"])
        return
    assert response.status_code in range(400, 500), (response.status_code, body)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}

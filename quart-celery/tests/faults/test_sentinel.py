"""Redis Sentinel replaces a master that died by its replica while the app serves, a worker
works and a client watches: the server and the worker find the new master by themselves."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets

from quart_celery.testing import Server, http, post_task, wait_for, wait_for_async
from tests.faults.conftest import SentinelSetUp, Worker
from tests.metrics import sample

pytestmark = pytest.mark.e2e

FINAL = ("SUCCESS", "FAILURE", "REVOKED")
#: Redis Sentinel's promotion took 2.4 s here; the issue's bound on the whole recovery.
RECOVERY_TIMEOUT = 15.0
#: The pause between two submissions of the trickle.
TRICKLE_PAUSE = 0.05


@dataclass
class Trickle:
    """Submissions, one after another, each watched on one many-task websocket."""

    server: str
    socket: Any
    #: (when asked, task id) of each accepted submission, in order: one asked before the
    #: kill and answered after it counts as before.
    accepted: list[tuple[float, str]] = field(default_factory=list)
    refused: list[tuple[float, int]] = field(default_factory=list)
    #: The states the socket sent of each task, in order.
    states: dict[str, list[str]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self) -> None:
        n = 0
        while not self.stopping.is_set():
            asked = time.monotonic()
            status, body = await asyncio.to_thread(
                http,
                "POST",
                f"{self.server}/api/tasks",
                {"name": "tests.async_echo", "kwargs": {"message": f"trickle {n}"}},
                {"Idempotency-Key": f"trickle-{n}"},
            )
            if status == 202:
                self.accepted.append((asked, body["id"]))
                await self.socket.send(json.dumps({"subscribe": [body["id"]]}))
            else:
                assert body["error"]["code"] == "service_unavailable", body
                self.refused.append((asked, status))
            n += 1
            await asyncio.sleep(TRICKLE_PAUSE)  # a steady pace, not a wait for anything

    async def read(self) -> None:
        async for message in self.socket:
            update = json.loads(message)
            if "state" in update:
                self.states.setdefault(update["id"], []).append(update["state"])

    def accepted_after(self, moment: float) -> list[str]:
        return [task_id for asked, task_id in self.accepted if asked > moment]

    def ended(self, task_ids: list[str]) -> bool:
        return all(self.states.get(task_id, [""])[-1] in FINAL for task_id in task_ids)


async def test_a_failover_to_the_replica_is_found_without_restarting_anything(
    sentinel_set_up: SentinelSetUp, start_server: Server, start_worker: Worker
) -> None:
    # Only REDIS_URL's database counts: the sentinels say where the master is.
    url, settings = sentinel_set_up.master.url(), sentinel_set_up.settings()
    # Each submission goes through all of the app's Redis clients: its idempotency key, its
    # client's rate limit, the publisher, and the listener for its socket.
    server = start_server(url, API_RATE_LIMIT="100000/minute", **settings)
    worker = start_worker(url, "--pool", "threads", "--concurrency", "4", **settings)
    socket_url = server.replace("http://", "ws://") + "/ws/tasks"

    # One task runs across the failover, and ends while the master is gone; its own socket
    # watches it too.
    status, across = post_task(server, "tests.async_echo", message="across", delay=3.0)
    assert status == 202, across
    one_task_url = server.replace("http://", "ws://") + across["websocket"]
    async with websockets.connect(socket_url) as socket, websockets.connect(one_task_url) as one:
        trickle = Trickle(server, socket)
        reading = asyncio.create_task(trickle.read())
        across_states = asyncio.create_task(_states_until_closed(one))
        await socket.send(json.dumps({"subscribe": [across["id"]]}))
        submitting = asyncio.create_task(trickle.submit())
        await wait_for_async(
            _true(
                lambda: (
                    len(trickle.accepted) >= 20
                    and "STARTED" in trickle.states.get(across["id"], [])
                )
            ),
            30,
            "20 submissions, and the long task to start",
        )

        sentinel_set_up.master.kill()
        killed_at = time.monotonic()
        before = [task_id for _, task_id in trickle.accepted]
        await wait_for_async(
            _true(lambda: trickle.accepted_after(killed_at)),
            RECOVERY_TIMEOUT,
            "a submission to be accepted after the master was killed",
        )
        recovered_at = next(asked for asked, _ in trickle.accepted if asked > killed_at)
        await wait_for_async(
            _true(lambda: len(trickle.accepted_after(killed_at)) >= 20),
            30,
            "20 submissions after the failover",
        )
        trickle.stopping.set()
        await submitting
        after = trickle.accepted_after(killed_at)

        await wait_for_async(
            _true(lambda: trickle.ended([across["id"], *after])),
            60,
            "every task accepted after the failover, and the long one, to end on the socket",
        )
        assert not reading.done(), reading.result()  # raises what ended it, if anything did
        reading.cancel()
        async with asyncio.timeout(10):
            assert (await across_states)[-1] == "SUCCESS"
        assert one.close_code == 1000

    assert sentinel_set_up.current_master_port() == sentinel_set_up.replica.port
    with urllib.request.urlopen(f"{server}/metrics", timeout=10) as response:
        assert sample(response.read().decode(), "probe_app_listener_reconnects_total") >= 1
    wait_for(lambda: http("GET", f"{server}/readyz")[0] == 200, 30, "/readyz to answer 200")
    assert trickle.states[across["id"]][-1] == "SUCCESS"
    assert all(trickle.states[task_id][-1] == "SUCCESS" for task_id in after)
    # Of the tasks accepted before the kill, what the replica had been sent survives.
    ended_before = [
        task_id
        for task_id in before
        if http("GET", f"{server}/api/tasks/{task_id}")[1].get("state") == "SUCCESS"
    ]
    print(  # for docs/reliability.md
        f"recovered {recovered_at - killed_at:.1f} s after the kill; "
        f"refused meanwhile: {len(trickle.refused)}; "
        f"accepted before the kill: {len(before)}, of which SUCCESS: {len(ended_before)}; "
        f"accepted after: {len(after)}, all SUCCESS"
    )
    assert worker.running(), worker.log()
    assert "Unrecoverable error" not in worker.log()


async def _states_until_closed(socket: Any) -> list[str]:
    """The states a one-task socket sends, until it closes."""
    return [json.loads(message)["state"] async for message in socket]


def _true(condition: Any) -> Any:
    """`condition` as the awaitable `wait_for_async` takes."""

    async def check() -> Any:
        return condition()

    return check

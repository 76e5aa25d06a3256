"""The server is stopped gracefully while websockets are open."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
import redis
import websockets

from quart_celery.testing import accepted_task, serving, wait_for
from tests.connections import connections
from tests.probe_app import ASGI_APP, ROOT

pytestmark = pytest.mark.e2e


async def test_open_sockets_are_closed_with_1001_and_nothing_is_left_running(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    with serving(ASGI_APP, redis_url, tmp_path, root=ROOT) as (server, url):
        accepted = accepted_task(url, "tests.echo", message="x")  # no worker: stays PENDING
        ws = url.replace("http://", "ws://")
        async with (
            websockets.connect(ws + accepted["websocket"]) as one,
            websockets.connect(f"{ws}/ws/tasks") as many,
        ):
            assert json.loads(await one.recv())["state"] == "PENDING"
            await many.send(json.dumps({"subscribe": [accepted["id"]]}))
            assert json.loads(await many.recv())["state"] == "PENDING"
            listeners = [c for c in client_names(redis_client) if "results" in c]
            assert listeners, "the server's pub/sub listener is not connected"

            stopped_at = time.monotonic()
            server.send_signal(signal.SIGTERM)
            for socket in (one, many):
                async with asyncio.timeout(10):
                    last = json.loads(await socket.recv())
                    assert last["error"]["code"] == "going_away"
                    await socket.wait_closed()
                assert socket.close_code == 1001
        # Well within hypercorn's graceful timeout (3 s), after which it cuts them (1011).
        assert time.monotonic() - stopped_at < 3
        assert server.wait(30) == 0
        # Nothing left: no process of the server's group (hypercorn's worker, the
        # multiprocessing resource tracker), no listener connection in Redis.
        wait_for(lambda: group_gone(server.pid), 10, "the server's processes to exit")
        assert not set(listeners) & set(client_names(redis_client))


def group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def client_names(client: redis.Redis) -> list[str]:
    """The names of the connections Redis has open now to the tests' database."""
    return [str(entry.get("name", "")) for entry in connections(client)]

"""A client that stops reading its websocket, against the real server, beside one that reads."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import datetime
from typing import Any

import pytest
import redis
import websockets

from quart_celery.testing import ProcessWorker, Server, accepted_task, task_in, wait_for

pytestmark = pytest.mark.e2e


async def everything(connection: websockets.ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    return [json.loads(message) async for message in connection]


async def test_a_stuck_client_is_dropped_as_too_slow_and_holds_up_no_one(
    start_server: Server, process_worker: ProcessWorker, redis_client: redis.Redis
) -> None:
    server = start_server(WS_SEND_TIMEOUT="2")
    ws = server.replace("http://", "ws://")
    # More updates (30,000 of some 200 bytes) than every buffer on the way holds: the
    # server's socket buffer alone may grow to 4 MiB.
    flood = [accepted_task(server, "tests.count", steps=1000, delay=0.0) for _ in range(30)]
    followed = accepted_task(server, "tests.count", steps=100, delay=0.01)

    # The stuck client: a small receive buffer, and it never reads; nor does it ping, as the
    # websockets library does every 20 s: with its reading paused it would miss the pong and
    # drop the connection itself (1006), once the test ran longer than that.
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    raw.connect(("127.0.0.1", int(server.rsplit(":", 1)[1])))
    async with (
        websockets.connect(
            f"{ws}/ws/tasks", sock=raw, max_queue=1, compression=None, ping_interval=None
        ) as stuck,
        websockets.connect(ws + followed["websocket"]) as reader,
    ):
        await stuck.send(json.dumps({"subscribe": [task["id"] for task in flood]}))
        stuck.transport.pause_reading()  # stuck: nothing more is read from the network
        first = json.loads(await reader.recv())
        process_worker(pool="prefork", concurrency=2)

        # The reader gets every update of its task, and its end, while the other is stuck.
        received = [first, *await asyncio.wait_for(everything(reader), 120)]
        ended_at = time.time()
        assert reader.close_code == 1000
        progress = [m for m in received if m["state"] == "PROGRESS"]
        assert [m["progress"]["current"] for m in progress][-1] == 100
        assert received[-1]["state"] == "SUCCESS"
        stored = json.loads(redis_client.get(f"celery-task-meta-{followed['id']}") or b"{}")
        done_at = datetime.fromisoformat(stored["date_done"]).timestamp()
        assert ended_at - done_at < 2, "the reader was held up"

        def flood_done() -> bool:
            return all(task_in(server, task["id"], ("SUCCESS",)) for task in flood)

        wait_for(flood_done, 120, "the flooding tasks to end")
        # When the stuck client reads at last: what was buffered, then why it was dropped.
        stuck.transport.resume_reading()
        leftovers: list[dict[str, Any]] = []
        with pytest.raises(websockets.ConnectionClosedError):
            async with asyncio.timeout(30):
                while True:
                    leftovers.append(json.loads(await stuck.recv()))
        assert stuck.close_code == 1013
        assert leftovers[-1] == {
            "error": {"code": "too_slow", "message": "The client fell too far behind."}
        }
        assert len(leftovers) < 30_000  # it was not sent everything

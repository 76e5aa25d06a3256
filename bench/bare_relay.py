"""A bare relay for bench/latency.py and bench/streams.py: Redis pub/sub to websockets, with no
Quart and no bridge.

What delivering a task's states and chunks through one more process costs under the same
hypercorn, the baseline the app's delivery is measured against. Its `/ws/tasks/<id>` subscribes
to the task's channel on one shared pub/sub connection, sends `{"state": "PENDING"}`, then
`{"state": ...}` for each state Celery publishes, and closes after the final one. A batch of
chunks the worker publishes (`{"status":"STREAMING", ..., "offset", "chunks": [...]}`) goes to
the socket as it was published, not parsed: one message a batch, as the app's
`?chunks=batched` sends it, without the app's reading from the stream or joining of batches
for a socket that fell behind. Everything else (submitting, `GET`s, lifespan) is the app's, so
the benchmarks' clients run unchanged: `hypercorn bare_relay:app` from this directory, with the
project's root on `PYTHONPATH`.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from asgi import app as project_app

FINAL = ("SUCCESS", "FAILURE", "REVOKED")
CHANNEL = b"celery-task-meta-"
BATCH = b'{"status":"STREAMING"'  # how the worker's script publishes a batch of chunks
inboxes: dict[bytes, set[asyncio.Queue[bytes]]] = {}
shared: dict[str, Any] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Relay `/ws/tasks/<id>`; hand everything else to the project's app."""
    if scope["type"] != "websocket" or not scope["path"].startswith("/ws/tasks/"):
        await project_app(scope, receive, send)  # type: ignore[arg-type]
        return
    pubsub = await _pubsub()
    channel = CHANNEL + scope["path"].rsplit("/", 1)[1].encode()
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    inboxes.setdefault(channel, set()).add(inbox)
    await pubsub.subscribe(channel)
    if "listener" not in shared:
        shared["listener"] = asyncio.create_task(_listen(pubsub))
    await send({"type": "websocket.send", "text": json.dumps({"state": "PENDING"})})
    try:
        while True:
            published = await inbox.get()
            if published.startswith(BATCH):
                await send({"type": "websocket.send", "text": published.decode()})
                continue
            status = json.loads(published)["status"]
            await send({"type": "websocket.send", "text": json.dumps({"state": status})})
            if status in FINAL:
                await send({"type": "websocket.close", "code": 1000})
                return
    finally:
        inboxes[channel].discard(inbox)


async def _pubsub() -> PubSub:
    """The process's one pub/sub connection, made when the first socket comes."""
    if "pubsub" not in shared:  # kept before connecting: sockets come at the same moment
        shared["pubsub"] = Redis.from_url(os.environ["REDIS_URL"]).pubsub()
        shared["connected"] = asyncio.ensure_future(shared["pubsub"].connect())
    await asyncio.shield(shared["connected"])
    made: PubSub = shared["pubsub"]
    return made


async def _listen(pubsub: PubSub) -> None:
    """Hand each published state to the sockets of its channel."""
    while True:
        message = await pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "message":
            for inbox in inboxes.get(message["channel"], ()):
                inbox.put_nowait(message["data"])

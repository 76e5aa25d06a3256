"""Websockets that push a task's every change of state as it happens.

`/ws/tasks/<id>` follows one task: its snapshot on connect, then one message per change, then
a close (1000) after the final state. `/ws/tasks` follows many: the client sends
`{"subscribe": [ids]}` and `{"unsubscribe": [ids]}`, and every message carries its task's `id`.
State messages are the snapshots of `GET /api/tasks/<id>`; error messages carry `error` and
never `state`. Waiting costs no thread: the updates come from the process's one pub/sub
listener (`quart_app.result_listener`); only reading a stored state uses the thread pool.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from celery import states
from quart import Blueprint, current_app, websocket

from quart_app import access, celery_calls, shutdown, task_records
from quart_app.blocking import run_blocking
from quart_app.errors import APIError
from quart_app.result_listener import EXTENSION, Inbox, ResultListener
from quart_app.schemas import TaskSnapshot
from quart_app.snapshots import snapshot_from_meta

blueprint = Blueprint("websockets", __name__)
access.protect_websockets(blueprint)

NORMAL, GOING_AWAY, TOO_BIG, SERVER_ERROR, TOO_SLOW = 1000, 1001, 1009, 1011, 1013
NOT_FOUND = 4404


@dataclass
class Watch:
    """A task a socket watches, and the last snapshot it sent of it."""

    name: str
    last: TaskSnapshot | None = None


class Watcher:
    """The tasks one socket watches, and the updates for them, in the order they came."""

    def __init__(self) -> None:
        self.listener: ResultListener = current_app.extensions[EXTENSION]
        self.inbox = Inbox(current_app.config["WS_QUEUE_SIZE"])
        self.watches: dict[str, Watch] = {}
        self.debug = current_app.debug

    def add(self, task_id: str, name: str) -> None:
        """Watch a task: updates from now on, then (queued behind them) its stored state."""
        self.watches[task_id] = Watch(name)
        self.listener.watch(task_id, self.inbox)
        self.inbox.deliver((task_id, None))

    def remove(self, task_id: str) -> None:
        """Stop watching a task."""
        self.watches.pop(task_id, None)
        self.listener.unwatch(task_id, self.inbox)

    def remove_all(self) -> None:
        """Stop watching every task: the socket is gone, and leaves nothing behind."""
        for task_id in list(self.watches):
            self.remove(task_id)

    async def next_change(self) -> TaskSnapshot:
        """The next snapshot that differs from the last one sent for its task.

        Raises `APIError` if the socket fell too far behind, or a stored state can't be read.
        """
        while True:
            if self.inbox.overflowed.is_set():
                raise _too_slow()
            task_id, meta = await self.inbox.updates.get()
            watch = self.watches.get(task_id)
            if watch is None:  # unsubscribed meanwhile
                continue
            if meta is None:
                snapshot = await run_blocking(
                    "the result backend",
                    celery_calls.snapshot,
                    UUID(task_id),
                    watch.name,
                    self.debug,
                )
            else:
                snapshot = snapshot_from_meta(task_id, watch.name, meta, self.debug)
            if snapshot != watch.last:
                watch.last = snapshot
                return snapshot


async def accepted_task(task_id: object) -> tuple[str, str] | None:
    """The id (in its usual, lower-case form) and name of a task the app accepted as
    `task_id`; None for any other, and for anything that is not a task id."""
    uuid = task_records.parse_id(task_id)
    if uuid is None:
        return None
    name = await run_blocking("Redis", task_records.name_of, task_records.client(), uuid)
    return None if name is None else (str(uuid), name)


@blueprint.websocket("/ws/tasks/<task_id>")
async def watch_task(task_id: str) -> None:
    """One task: its snapshot, then each change; closed (1000) after the final state."""
    await websocket.accept()
    watcher = Watcher()
    accepted = await accepted_task(task_id)
    if accepted is None:
        await _send_error("not_found", f"No task {task_id} was submitted here.")
        await websocket.close(NOT_FOUND)
        return
    watcher.add(*accepted)
    try:
        await _until_either_ends(_send_changes(watcher, close_after_final=True), _ignore_messages())
    except APIError as error:
        await _close_with(error)
    finally:
        watcher.remove_all()


@blueprint.websocket("/ws/tasks")
async def watch_tasks() -> None:
    """Many tasks on one socket, as the client subscribes and unsubscribes."""
    await websocket.accept()
    watcher = Watcher()
    try:
        await _until_either_ends(_send_changes(watcher), _handle_requests(watcher))
    except APIError as error:
        await _close_with(error)
    finally:
        watcher.remove_all()


async def _until_either_ends(sending: Awaitable[None], receiving: Awaitable[None]) -> None:
    """Run both halves of a socket until one ends, or the server begins to shut down; stop
    the rest; raise what the half that ended raised, or `APIError` (1001) on shutdown."""
    halves = [asyncio.ensure_future(sending), asyncio.ensure_future(receiving)]
    stopping = asyncio.ensure_future(shutdown.going_away())
    try:
        done, _ = await asyncio.wait([*halves, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*halves, stopping]:
            task.cancel()
        await asyncio.gather(*halves, stopping, return_exceptions=True)
    if stopping in done:
        raise APIError(GOING_AWAY, "going_away", "The server is shutting down; connect again.")
    for half in done:
        half.result()


async def _send_changes(watcher: Watcher, *, close_after_final: bool = False) -> None:
    """Send every change; after a task's final state, drop the task, or close the socket
    (1000) if it follows that one task."""
    while True:
        snapshot = await watcher.next_change()
        await _send(snapshot.model_dump(mode="json"))
        if snapshot.state in states.READY_STATES:
            if close_after_final:
                await websocket.close(NORMAL)
                return
            watcher.remove(snapshot.id)


async def _ignore_messages() -> None:
    """Read and drop what a client sends where nothing is expected, so it cannot pile up."""
    while True:
        await _receive()


async def _handle_requests(watcher: Watcher) -> None:
    """Apply each message the client sends."""
    while True:
        await _handle_request(watcher, await _receive())


async def _receive() -> str | bytes:
    """The client's next message; `APIError` (closing with 1009) if it is too large."""
    message: str | bytes | None = await websocket.receive()
    if message is None:  # Quart hands an empty binary message on as None
        return b""
    limit = current_app.config["WS_MAX_MESSAGE_SIZE"]
    if len(message) > limit:
        raise APIError(TOO_BIG, "message_too_big", f"A message may be {limit} bytes at most.")
    return message


async def _send(message: dict[str, Any]) -> None:
    """Send a message; `APIError` (1013) if the client does not take it within
    `WS_SEND_TIMEOUT`: a client that stops reading must not hold its socket's updates, and
    its handler, for good."""
    try:
        async with asyncio.timeout(current_app.config["WS_SEND_TIMEOUT"]):
            await websocket.send_json(message)
    except TimeoutError:
        raise _too_slow() from None


def _too_slow() -> APIError:
    return APIError(TOO_SLOW, "too_slow", "The client fell too far behind.")


async def _close_with(error: APIError) -> None:
    """Say what went wrong, then close with its code (1001, 1009, 1013), or 1011 for the rest.

    A client that takes neither within `WS_SEND_TIMEOUT` is left as it is: the handler ends,
    and the frames wait in the server's buffer in case it ever reads again.
    """
    own_code = error.status in (GOING_AWAY, TOO_BIG, TOO_SLOW)
    timeout = current_app.config["WS_SEND_TIMEOUT"]
    # Each frame is in the server's buffer before the wait for the client to take it.
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await _send_error(error.code, error.message)
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await websocket.close(error.status if own_code else SERVER_ERROR)


async def _handle_request(watcher: Watcher, raw: str | bytes) -> None:
    """Apply one client message; answer a malformed one with an error, keeping the socket."""
    try:
        request = json.loads(raw)
        if not isinstance(request, dict) or not set(request) <= {"subscribe", "unsubscribe"}:
            raise ValueError
        subscribe, unsubscribe = request.get("subscribe", []), request.get("unsubscribe", [])
        if not all(isinstance(ids, list) for ids in (subscribe, unsubscribe)):
            raise ValueError
        if not all(isinstance(task_id, str) for task_id in [*subscribe, *unsubscribe]):
            raise ValueError
    except ValueError:
        await _send_error(
            "invalid_message",
            'Send {"subscribe": ["<task id>", ...]} or {"unsubscribe": ["<task id>", ...]}.',
        )
        return
    for task_id in unsubscribe:
        uuid = task_records.parse_id(task_id)
        if uuid is not None:
            watcher.remove(str(uuid))
    for task_id in subscribe:
        await _subscribe(watcher, task_id)


async def _subscribe(watcher: Watcher, task_id: str) -> None:
    """Start watching one task, or say why not."""
    uuid = task_records.parse_id(task_id)
    if uuid is not None and str(uuid) in watcher.watches:
        return
    limit = current_app.config["WS_MAX_TASKS"]
    if len(watcher.watches) >= limit:
        await _send_error("too_many_tasks", f"A socket may watch {limit} tasks at most.", task_id)
        return
    try:
        accepted = await accepted_task(task_id)
    except APIError as error:
        await _send_error(error.code, error.message, task_id)
        return
    if accepted is None:
        await _send_error("not_found", f"No task {task_id} was submitted here.", task_id)
        return
    watcher.add(*accepted)


async def _send_error(code: str, message: str, task_id: Any = None) -> None:
    """An error message: `error`, with the task's `id` when it concerns one; never `state`."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if task_id is not None:
        body = {"id": task_id, **body}
    await websocket.send_json(body)

"""Websockets that push a task's every change of state as it happens.

`/ws/tasks/<id>` follows one task: its snapshot on connect, then one message per change, then
a close (1000) after the final state. What the task streams comes between, each chunk as
`{"id", "offset", "chunk"}`, in order with its states: from offset 0 (or `?from=N`), the chunks
stored before the socket came first, then the live ones, each once; the final state comes after
the last chunk. With `?chunks=batched` (on either endpoint), chunks come as they were written,
many to a message: `{"id", "offset" (the first's), "chunks": [...]}`, one message where a fast
stream would take hundreds (and batches waiting for a socket that fell behind, one message).
`/ws/tasks` follows many: the client sends `{"subscribe": [ids]}` (with `"from": {id: N}` to
start a task's chunks at offset N) and `{"unsubscribe": [ids]}`, and every message carries its
task's `id`.
Every message a client sends there is answered: a subscription with the task's snapshot (or an
error), each unsubscribed id with `{"id", "unsubscribed": true}`, after which nothing more of
that task is sent, and anything else with an `invalid_message` error.

State messages are the snapshots of `GET /api/tasks/<id>`; error messages carry `error` and
never `state`. A task that cannot be served costs only itself: on `/ws/tasks` it gets an error
message with its `id` and is dropped, while the socket and its other tasks carry on; on
`/ws/tasks/<id>` the socket says why and closes with 1011, never with the normal 1000. Waiting
costs no thread: the changes come from `quart_celery._client.following.Follower`.

`/ws/workflows/<id>` follows a workflow: its snapshot (as `GET /api/workflows/<id>`), then a
message for each change of a task of it (the workflow's `state`, `total`, `done`, `failed`, and
the task under `task`), the last with the workflow's `result`, then a close (1000).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import Any

import orjson
from quart import Blueprint, Websocket, current_app, websocket

from quart_celery._broker.chunks import parse_offset
from quart_celery._broker.task_ids import parse_task_id
from quart_celery._client.following import (
    Follower,
    Inbox,
    StreamedBatch,
    StreamedChunk,
    TaskError,
    Unfollowed,
    Written,
)
from quart_celery._client.workflows import WorkflowFollower
from quart_celery._protection import access, sockets
from quart_celery._web import send_deadlines, shutdown
from quart_celery.errors import APIError, FellBehind, TaskNotFound, WorkflowNotFound
from quart_celery.schemas import WorkflowChange
from quart_celery.states import FINAL_STATES

blueprint = Blueprint("websockets", __name__)
access.protect_websockets(blueprint)
sockets.count_sockets(blueprint)  # after the access checks: a socket refused is not counted


NORMAL, GOING_AWAY, TOO_BIG, SERVER_ERROR, TOO_SLOW = 1000, 1001, 1009, 1011, 1013
BAD_REQUEST, NOT_FOUND = 4400, 4404
#: Chunks sent in one go, where that many are ready for a socket.
SENT_AT_ONCE = 64
INVALID_MESSAGE = (
    'Send {"subscribe": ["<task id>", ...]} or {"unsubscribe": ["<task id>", ...]}, '
    'naming at least one task; with "subscribe", "from": {"<task id>": <first chunk>} may '
    "say where each task's chunks start."
)


class CloseSocket(Exception):
    """End the socket: send the error message `code`/`message`, then close with `close_code`."""

    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message

    @classmethod
    def for_error(cls, error: APIError) -> CloseSocket:
        """An error that ends a one-task socket: a server error (1011), whatever its status."""
        return cls(SERVER_ERROR, error.code, error.message)


@blueprint.websocket("/ws/tasks/<task_id>")
async def follow_task(task_id: str) -> None:
    """One task: its snapshot, then each change and each chunk it streams (from offset
    `?from=N`, 0 if not given); closed (1000) after the final state."""
    await websocket.accept()
    follower = Follower()
    await _serve(follower, _follow_one(follower, task_id), _ignore_messages)


@blueprint.websocket("/ws/workflows/<workflow_id>")
async def follow_workflow(workflow_id: str) -> None:
    """One workflow: its snapshot, then a message for each change of a task of it; closed
    (1000) after the workflow's final state."""
    await websocket.accept()
    follower = WorkflowFollower()
    await _serve(follower, _follow_workflow(follower, workflow_id), _ignore_messages)


@blueprint.websocket("/ws/tasks")
async def follow_tasks() -> None:
    """Many tasks on one socket, as the client subscribes and unsubscribes."""
    await websocket.accept()
    follower = Follower()
    await _serve(follower, _follow_many(follower), partial(_handle_requests, follower))


async def _serve(
    follower: Follower | WorkflowFollower,
    sending: Awaitable[None],
    receiving: Callable[[], Awaitable[None]],
) -> None:
    """Send from the handler and read the client's messages in a task of its own, until
    either half ends or the server begins to shut down (1001); end the socket as
    `CloseSocket` says, or with 1011 for anything unexpected; stop following, whatever
    happened.

    The reader, and the server's shutdown, end the sending by interrupting the follower's
    inbox, which the sender reads from: one task per socket besides Quart's own, where a task
    for each half and one waiting for the shutdown cost 10,000 idle sockets 25 MiB.
    """
    inbox = follower.inbox
    reader = asyncio.create_task(_read(receiving, inbox))
    try:
        with shutdown.telling(lambda: inbox.interrupt(_going_away())):
            await sending
    except CloseSocket as closing:
        await _close_with(closing)
    except Exception:
        await _close_with(_internal_error())
    finally:
        reader.cancel()
        follower.close()


async def _read(receiving: Callable[[], Awaitable[None]], inbox: Inbox) -> None:
    """Read the client's messages; if that ends the socket, have the sender end it."""
    try:
        await receiving()
    except Exception as error:  # the sender raises it: `_serve` handles it there
        inbox.interrupt(error)


async def _follow_one(follower: Follower, task_id: str) -> None:
    """Follow the one task of `/ws/tasks/<id>` to its end; 4404 if nobody published it, 4400
    if `?from=` is not an offset."""
    _take_chunks_as_asked(follower)
    _write_straight(follower)
    try:
        start = parse_offset(websocket.args.get("from", "0"))
    except ValueError:
        message = "?from= takes the offset of the first chunk wanted: a whole number from 0 up."
        raise CloseSocket(BAD_REQUEST, "invalid_offset", message) from None
    try:
        await follower.follow(task_id, chunks_from=start)
    except TaskNotFound:
        message = f"No task {task_id} was submitted here."
        raise CloseSocket(NOT_FOUND, "not_found", message) from None
    except APIError as error:
        raise CloseSocket.for_error(error) from None
    await _send_changes(follower, one_task=True)


async def _follow_many(follower: Follower) -> None:
    """Send the changes of the tasks a `/ws/tasks` client subscribes to; 4400 if `?chunks=`
    is not a way to take chunks."""
    _take_chunks_as_asked(follower)
    _write_straight(follower)
    await _send_changes(follower)


def _take_chunks_as_asked(follower: Follower) -> None:
    """Have the follower give chunks as `?chunks=` asks: `each` (the default), one message a
    chunk, or `batched`, many to a message; `CloseSocket` (4400) for anything else."""
    asked = websocket.args.get("chunks", "each")
    if asked not in ("each", "batched"):
        message = "?chunks= takes each (one message a chunk, the default) or batched."
        raise CloseSocket(BAD_REQUEST, "invalid_chunks", message)
    follower.batched = asked == "batched"


def _write_straight(follower: Follower) -> None:
    """Have the listener write the follower's states and batches straight to the socket
    while it waits, where the server lets it (`quart_celery._web.frames`)."""
    writer = getattr(_current_socket(), "writer", None)
    if writer is not None:
        follower.write_with(writer)


async def _follow_workflow(follower: WorkflowFollower, workflow_id: str) -> None:
    """Follow the workflow of `/ws/workflows/<id>` to its end; 4404 if nobody submitted it.

    Each change carries the workflow's state and counts and the task that changed; the one
    that ends the workflow carries its `result` too."""
    try:
        snapshot = await follower.follow(workflow_id)
    except WorkflowNotFound:
        message = f"No workflow {workflow_id} was submitted here."
        raise CloseSocket(NOT_FOUND, "not_found", message) from None
    except APIError as error:
        raise CloseSocket.for_error(error) from None
    await _send_text(snapshot.model_dump_json())
    state = snapshot.state
    while state not in FINAL_STATES:
        try:
            change = await follower.next_change()
        except FellBehind:
            raise _too_slow() from None
        except APIError as error:
            raise CloseSocket.for_error(error) from None
        state = change.state
        ended = state in FINAL_STATES or not isinstance(change, WorkflowChange)
        await _send_text(change.model_dump_json(exclude=None if ended else {"result"}))
    await websocket.close(NORMAL)


async def _send_changes(follower: Follower, *, one_task: bool = False) -> None:
    """Send every change, unfollowed notice and task error. Following one task, close (1000)
    after its final state, and end the socket on its error."""
    # Looked up once, not at each send: through Quart's proxies, the two were a twentieth of
    # what a server spends sending a state to 100 sockets (`bench/followers.py`).
    socket, watch = _current_socket(), send_deadlines.current()
    while True:
        try:
            event = await follower.next_event()
        except FellBehind:
            raise _too_slow() from None
        if isinstance(event, StreamedChunk):
            chunks = [event, *follower.ready_chunks(SENT_AT_ONCE - 1)]
            await _send_on(socket, watch, [chunk.message() for chunk in chunks])
            del chunks
        elif isinstance(event, StreamedBatch):
            await _send_on(socket, watch, [follower.joined(event).message()])
        elif isinstance(event, Unfollowed):
            await _send({"id": event.task_id, "unsubscribed": True})
        elif isinstance(event, TaskError):
            if one_task:
                raise CloseSocket.for_error(event.error)
            await _send_error(event.error.code, event.error.message, event.task_id)
        else:  # a change, unless the listener has written it already (`Written`)
            if not isinstance(event, Written):
                await _send_on(socket, watch, [event.json])
            if one_task and event.state in FINAL_STATES:
                await _let_others_send()
                await websocket.close(NORMAL)
                return
        del event  # not kept while the socket waits: a server holds thousands that wait
        if follower.waiting():
            await asyncio.sleep(0)  # a backlog: let the loop come round between its messages


async def _let_others_send() -> None:
    """Let the sockets whose states came at the same moment send theirs before this one ends.

    Tasks often end together, and the listener wakes the follower of each in one turn of the
    event loop: each socket sent its final state, then closed and was torn down (Quart's and
    hypercorn's end of a connection, stopping its following), before the next socket sent.
    The last of 25 waited for 24 teardowns. With this turn given up, in 13 runs of
    `bench/latency.py` alternating with 13 without it (2026-12-04), the median of the app's p50
    over the bare relay's went from 1.33 to 1.15, and of the app's p99 from 11.8 to 8.5 ms.
    """
    await asyncio.sleep(0)


async def _ignore_messages() -> None:
    """Read and drop what a client sends where nothing is expected, so it cannot pile up."""
    while True:
        await _receive()


async def _handle_requests(follower: Follower) -> None:
    """Apply each message the client sends."""
    while True:
        await _handle_request(follower, await _receive())


async def _receive() -> str | bytes:
    """The client's next message; `CloseSocket` (1009) if it is too large."""
    message: str | bytes | None = await websocket.receive()
    if message is None:  # Quart hands an empty binary message on as None
        return b""
    limit = current_app.config["WS_MAX_MESSAGE_SIZE"]
    if len(message) > limit:
        raise CloseSocket(TOO_BIG, "message_too_big", f"A message may be {limit} bytes at most.")
    return message


async def _handle_request(follower: Follower, raw: str | bytes) -> None:
    """Apply one client message; answer a malformed one with an error, keeping the socket."""
    try:
        subscribe, unsubscribe, starts = _parse_request(raw)
    except (ValueError, RecursionError):
        await _send_error("invalid_message", INVALID_MESSAGE)
        return
    for task_id in unsubscribe:
        follower.unfollow(parse_task_id(task_id) or task_id)
    for task_id in subscribe:
        await _subscribe(follower, task_id, starts.get(task_id, 0))


def _parse_request(raw: str | bytes) -> tuple[list[str], list[str], dict[str, int]]:
    """The ids a message subscribes to and unsubscribes from, and the offset each task's
    chunks start at where it says; `ValueError` if it is not `{"subscribe": [...],
    "unsubscribe": [...], "from": {"<id>": N}}` (either list or both, and `from` only with
    `subscribe`) naming at least one task."""
    request = json.loads(raw)
    if not isinstance(request, dict) or not set(request) <= {"subscribe", "unsubscribe", "from"}:
        raise ValueError
    subscribe, unsubscribe = request.get("subscribe", []), request.get("unsubscribe", [])
    starts = request.get("from", {})
    if not all(isinstance(ids, list) for ids in (subscribe, unsubscribe)):
        raise ValueError
    if not all(isinstance(task_id, str) for task_id in [*subscribe, *unsubscribe]):
        raise ValueError
    if not subscribe and not unsubscribe:
        raise ValueError
    if not isinstance(starts, dict) or (starts and not subscribe):
        raise ValueError
    return subscribe, unsubscribe, {key: parse_offset(value) for key, value in starts.items()}


async def _subscribe(follower: Follower, task_id: str, start: int) -> None:
    """Start following one task, and its chunks from offset `start` (its snapshot follows),
    or say why not."""
    if parse_task_id(task_id) in follower.followed:
        return
    limit = current_app.config["WS_MAX_TASKS"]
    if len(follower.followed) >= limit:
        await _send_error("too_many_tasks", f"A socket may watch {limit} tasks at most.", task_id)
        return
    try:
        await follower.follow(task_id, chunks_from=start)
    except TaskNotFound:
        await _send_error("not_found", f"No task {task_id} was submitted here.", task_id)
    except APIError as error:
        await _send_error(error.code, error.message, task_id)


async def _send(message: dict[str, Any]) -> None:
    """Send a message, as JSON (`_send_text`)."""
    await _send_text(orjson.dumps(message).decode())


async def _send_text(text: str) -> None:
    """Send a message already encoded (a snapshot, as pydantic encodes it); `CloseSocket`
    (1013) if the client does not take it within `WS_SEND_TIMEOUT`: a client that stops
    reading must not hold its socket's updates, and its handler, for good."""
    await _send_texts([text])


async def _send_texts(texts: list[str]) -> None:
    """Send messages already encoded, one after another, all within `WS_SEND_TIMEOUT`."""
    await _send_on(_current_socket(), send_deadlines.current(), texts)


async def _send_on(socket: Websocket, watch: send_deadlines.SendWatch, texts: list[str]) -> None:
    """`_send_texts` on `socket`, within the deadline `watch` keeps (a few dozen chunks at
    most: a deadline for each message was a fifth of the server's time streaming chunks,
    `bench/streams.py`)."""
    try:
        await watch.send(socket, texts)
    except TimeoutError:
        raise _too_slow() from None


def _current_socket() -> Websocket:
    """The socket behind Quart's `websocket` proxy (which is typed as what it stands for)."""
    socket: Websocket = websocket._get_current_object()  # type: ignore[attr-defined]
    return socket


async def _send_error(code: str, message: str, task_id: Any = None) -> None:
    """An error message: `error`, with the task's `id` when it concerns one; never `state`."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if task_id is not None:
        body = {"id": task_id, **body}
    await _send(body)


def _going_away() -> CloseSocket:
    return CloseSocket(GOING_AWAY, "going_away", "The server is shutting down; connect again.")


def _too_slow() -> CloseSocket:
    return CloseSocket(TOO_SLOW, "too_slow", "The client fell too far behind.")


def _internal_error() -> CloseSocket:
    """Log the error being handled; the close that says the server failed (1011)."""
    current_app.logger.exception("unexpected error on a websocket")
    return CloseSocket(SERVER_ERROR, "internal_error", "The server failed; it is logged.")


async def _close_with(closing: CloseSocket) -> None:
    """Say what went wrong, then close with its code.

    A client that takes neither within `WS_SEND_TIMEOUT` is left as it is: the handler ends,
    and the frames wait in the server's buffer in case it ever reads again.
    """
    timeout = current_app.config["WS_SEND_TIMEOUT"]
    body = {"error": {"code": closing.code, "message": closing.message}}
    # Each frame is in the server's buffer before the wait for the client to take it.
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await websocket.send_json(body)
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await websocket.close(closing.close_code)

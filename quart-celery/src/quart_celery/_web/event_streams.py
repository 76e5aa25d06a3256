"""`GET /api/tasks/<id>/stream`: what a task streams, as server-sent events.

One event per chunk, `id: <offset>` and the chunk as JSON in `data:`; each change of state
before the end as an `event: state` (with no `id`, so a resumed stream resumes after the last
chunk); then `event: end` with the final snapshot, after the last chunk, and the response ends.
`Last-Event-ID: N` (sent by a browser's `EventSource` when it reconnects by itself) resumes
after offset N; `?from=N` starts at offset N. An unknown task is a 404 before the stream starts.

A stream the server cannot go on with ends with `event: error` and the JSON error, never as
though the task had ended: a client that resumes from its last `id` loses nothing. An
`EventSource` reconnects whenever a response ends, so a page closes it on `end`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from uuid import UUID

import orjson
from quart import Response, current_app, request, stream_with_context
from quart_schema import tag

from quart_celery._broker.chunks import parse_offset
from quart_celery._client import queue
from quart_celery._client.following import Follower, Inbox, StreamedChunk
from quart_celery._web import shutdown
from quart_celery.errors import APIError, FellBehind
from quart_celery.schemas import TaskSnapshot
from quart_celery.states import FINAL_STATES

MEDIA_TYPE = "text/event-stream"


@tag(["tasks"])
async def stream_task(task_id: UUID) -> Response:
    """What the task streams, as server-sent events: each chunk (`id:` its offset), then
    `event: end` with the final snapshot. Resumes after `Last-Event-ID`, or from `?from=`."""
    start = _start()
    follower = Follower()
    events = queue.streamed(str(task_id), start, follower)
    try:
        first = await anext(events)  # 404 (or 503) here, before the response begins
    except BaseException:
        await events.aclose()
        raise
    # Sent after the view returns: in the request's context still.
    body = stream_with_context(_body)(first, events, follower.inbox)
    response = Response(body, mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on as it comes
    response.timeout = None  # a stream lasts as long as its task, not `RESPONSE_TIMEOUT`
    return response


def _start() -> int:
    """The first offset wanted: after `Last-Event-ID`, else `?from=`, else 0; 400 if either
    is not an offset."""
    last = request.headers.get("Last-Event-ID")
    try:
        if last is not None:
            return parse_offset(last.strip()) + 1
        return parse_offset(request.args.get("from", "0"))
    except ValueError:
        raise APIError(
            400,
            "invalid_offset",
            "Last-Event-ID and ?from= take a chunk's offset: a whole number from 0 up.",
        ) from None


async def _body(
    first: StreamedChunk | TaskSnapshot,
    events: AsyncGenerator[StreamedChunk | TaskSnapshot, None],
    inbox: Inbox,
) -> AsyncGenerator[bytes, None]:
    """The events, as they come; an error (the server going away too) ends the stream with
    `event: error`."""
    going_away = APIError(503, "going_away", "The server is shutting down; connect again.")
    async with aclosing(events):
        try:
            yield _event(first)
            with shutdown.telling(lambda: inbox.interrupt(going_away)):
                async for event in events:
                    yield _event(event)
        except FellBehind:
            yield _error(APIError(503, "too_slow", "The client fell too far behind."))
        except APIError as error:
            yield _error(error)
        except Exception:
            current_app.logger.exception("unexpected error on an event stream")
            yield _error(APIError(500, "internal_error", "The server failed; it is logged."))


def _event(event: StreamedChunk | TaskSnapshot) -> bytes:
    if isinstance(event, StreamedChunk):
        return f"id: {event.offset}\ndata: {event.json}\n\n".encode()
    kind = "end" if event.state in FINAL_STATES else "state"
    return f"event: {kind}\ndata: {event.model_dump_json()}\n\n".encode()


def _error(error: APIError) -> bytes:
    body = orjson.dumps({"error": {"code": error.code, "message": error.message}})
    return b"event: error\ndata: " + body + b"\n\n"

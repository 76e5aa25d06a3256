"""A task's streamed output in Redis: its chunks, kept in order, and published as they come.

A task's chunks (`quart_celery.send_chunk`, or what an async generator task yields) are kept
in a Redis stream beside its result (`celery-task-meta-<id>.chunks`), for as long as the result
is kept: the backend's store script refreshes the stream's expiry with each state
(`_broker.backends`). Offset N is the stream entry `0-<N+1>`: a reader asks for "from offset N"
directly, and a batch written twice (its reply lost) is recognised and not added again.

Each batch written is also published on the task's result channel, the one Celery publishes its
states on, as one message: `{"status": "STREAMING", "task_id", "offset", "chunks": [...]}`. On
one channel, chunks and states reach a subscriber in the order Redis took them, which is the
order the task made them (`_worker.streams` writes a task's chunks before a state it stores
after them). The `status` is there for Celery's own result consumers, which read every message
on that channel as a state: `STREAMING` is not one of Celery's ready states, so
`AsyncResult.get()` passes over it.

Written by hand: Celery keeps one value per task; Redis streams are the log a late reader
reads from an offset, and no library puts one beside Celery's results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The `status` of a published batch of chunks: not a state of Celery's.
STREAMING = "STREAMING"
#: The suffix of a task's stream, after the key of its stored state.
STREAM_SUFFIX = b".chunks"
#: The field each entry keeps its chunk (as JSON) in.
FIELD = b"c"
#: Chunks read from a stream in one call.
PAGE = 1000

#: Append chunks to a task's stream and publish them. KEYS: the stream, the task's result key
#: (its channel). ARGV: the expiry in seconds (0: none), the offset the batch starts at (-1:
#: wherever the stream ends), the task's id, then each chunk as JSON. Where the stream already
#: holds the batch's first chunks (the batch was written before, its reply lost), they are not
#: added again. Returns the stream's length after; -1, adding nothing, if the stream is shorter
#: than the batch's offset (Redis lost it): the chunks would take offsets others had.
APPEND_CHUNKS = """
local length = redis.call('XLEN', KEYS[1])
local first = tonumber(ARGV[2])
local skip = 0
if first >= 0 and length < first then return -1 end
if first >= 0 and length > first then skip = length - first end
local chunks = {}
for i = 4 + skip, #ARGV do
    chunks[#chunks + 1] = ARGV[i]
    redis.call('XADD', KEYS[1], '0-' .. string.format('%d', length + #chunks), 'c', ARGV[i])
end
if #chunks == 0 then return length end
if tonumber(ARGV[1]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
redis.call('PUBLISH', KEYS[2], '{"status":"STREAMING","task_id":' .. cjson.encode(ARGV[3])
    .. ',"offset":' .. string.format('%d', length) .. ',"chunks":['
    .. table.concat(chunks, ',') .. ']}')
return length + #chunks
"""


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk as read from a task's stream: its offset, and the chunk as JSON."""

    offset: int
    json: bytes


def stream_key(meta_key: str | bytes) -> bytes:
    """The key of the stream of the task whose state is at `meta_key`."""
    key = meta_key.encode() if isinstance(meta_key, str) else meta_key
    return key + STREAM_SUFFIX


def entry_id(offset: int) -> str:
    """The stream entry of the chunk at `offset`."""
    return f"0-{offset + 1}"


def read_chunks(client: Any, key: bytes, start: int, count: int = PAGE) -> list[StoredChunk]:
    """Up to `count` chunks of the stream at `key`, from offset `start` on (blocking)."""
    return parse_entries(client.xrange(key, entry_id(start), "+", count=count))


def parse_entries(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[StoredChunk]:
    """Stream entries as redis-py reads them (`XRANGE`), as chunks."""
    return [
        StoredChunk(int(entry.split(b"-", 1)[1]) - 1, fields[FIELD]) for entry, fields in entries
    ]


def is_chunks(meta: dict[str, Any]) -> bool:
    """Whether a message published on a task's channel is a batch of its chunks."""
    return meta.get("status") == STREAMING and isinstance(meta.get("chunks"), list)


#: The most digits an offset a client gives may have.
_MAX_DIGITS = 15


def parse_offset(raw: object) -> int:
    """An offset a client gave (`?from=`, `Last-Event-ID`, a subscription's `from`): a whole
    number from 0 up, as text or a JSON number; `ValueError` for anything else."""
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < 10**_MAX_DIGITS:
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS:
        return int(raw)
    raise ValueError(f"{raw!r} is not an offset (a whole number from 0 up)")

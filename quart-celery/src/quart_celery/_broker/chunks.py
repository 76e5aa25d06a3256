"""A task's streamed output in Redis: its chunks, kept in order, and published as they come.

A task's chunks (`quart_celery.send_chunk`, or what an async generator task yields) are kept
in a Redis stream beside its result (`celery-task-meta-<id>.chunks`), for as long as the result
is kept: the backend's store script refreshes the stream's expiry with each state
(`_broker.backends`). Offset N is the stream entry `0-<N+1>`: a reader asks for "from offset N"
directly. Each run of a task's body keeps a record of how many of its chunks it wrote, so that
a chunk sent again (its batch's reply lost) is not added twice, and a stream that lost them is
noticed.

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

#: Seconds a run's record (`run_key`) is kept at least after its last batch, however soon the
#: result expires: a run may send nothing for a long while between two chunks.
RUN_KEPT = 86_400

#: Append a batch of one run's chunks to a task's stream and publish them. KEYS: the stream,
#: the task's result key (its channel), the run's record (`run_key`). ARGV: the stream's expiry
#: in seconds (0: none), the run's count of chunks sent before the batch's first, the task's id,
#: then each chunk as JSON. The record counts the run's chunks written and the stream's length
#: after the last. A batch sent again after its reply was lost may have grown meanwhile (the
#: chunks sent since join it): what of it was written before is skipped, the rest added (0 if
#: nothing is). A stream that lost what the run wrote (Redis lost it), or a batch past a gap,
#: takes nothing more (-1): a gap would pass unseen. Two runs of one task (a retry, a
#: redelivery) each append at the stream's end. Returns 1 once chunks are added.
APPEND_CHUNKS = """
local run = redis.call('HMGET', KEYS[3], 'written', 'end')
local written = tonumber(run[1] or '0')
local first = tonumber(ARGV[2])
local length = redis.call('XLEN', KEYS[1])
if first > written or length < tonumber(run[2] or '0') then return -1 end
local chunks = {}
for i = 4 + written - first, #ARGV do
    chunks[#chunks + 1] = ARGV[i]
    redis.call('XADD', KEYS[1], '0-' .. string.format('%d', length + #chunks), 'c', ARGV[i])
end
if #chunks == 0 then return 0 end
local expiry = tonumber(ARGV[1])
if expiry > 0 then redis.call('EXPIRE', KEYS[1], expiry) end
redis.call('HSET', KEYS[3], 'written', written + #chunks, 'end', length + #chunks)
redis.call('EXPIRE', KEYS[3], math.max(expiry, RUN_KEPT))
redis.call('PUBLISH', KEYS[2], '{"status":"STREAMING","task_id":' .. cjson.encode(ARGV[3])
    .. ',"offset":' .. string.format('%d', length) .. ',"chunks":['
    .. table.concat(chunks, ',') .. ']}')
return 1
""".replace("RUN_KEPT", str(RUN_KEPT))


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A chunk as read from a task's stream: its offset, and the chunk as JSON."""

    offset: int
    json: bytes


def stream_key(meta_key: str | bytes) -> bytes:
    """The key of the stream of the task whose state is at `meta_key`."""
    key = meta_key.encode() if isinstance(meta_key, str) else meta_key
    return key + STREAM_SUFFIX


def run_key(stream: bytes, run: str) -> bytes:
    """The record of one run of a task's body that streams to `stream` (`APPEND_CHUNKS`)."""
    return b"%s.run.%s" % (stream, run.encode())


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

"""A task's streamed output in Redis: its chunks, kept in order, and published as they come.

A task's chunks (`quart_celery.send_chunk`, or what an async generator task yields) are kept
in a Redis stream beside its result (`celery-task-meta-<id>.chunks`), for as long as the result
is kept: the backend's store script refreshes the stream's expiry with each state
(`_broker.backends`). Each batch written is one entry, `0-<E>`, E being the stream's count of
chunks once it is added (its last chunk's offset + 1), with the fields `n` (how many chunks)
and `b` (the chunks, each as JSON, comma-separated): one `XADD` a batch, where one a chunk cost
Redis 2.5 ms a batch of 1,000 rather than 0.4 (`INFO commandstats`), and a third more memory.
A reader asks for "from offset N" directly: the first entry from `0-<N+1>` holds chunk N.
Streams written a chunk an entry (field `c`, before 2026-12-04) read the same way; a server
from before reads only those, so servers are upgraded before workers. Each run of
a task's body keeps a record of how many of its chunks it wrote, so that a chunk sent again
(its batch's reply lost) is not added twice, and a stream that lost them is noticed.

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

import orjson

#: The `status` of a published batch of chunks: not a state of Celery's.
STREAMING = "STREAMING"
#: The suffix of a task's stream, after the key of its stored state.
STREAM_SUFFIX = b".chunks"
#: The fields of an entry: how many chunks it holds, and the chunks (each as JSON,
#: comma-separated); the one field of an entry of one chunk, as they were written before.
COUNT_FIELD, BODY_FIELD, CHUNK_FIELD = b"n", b"b", b"c"
#: Entries read from a stream in one call (a thousand chunks each at most, or 256 KiB).
PAGE = 16

#: Seconds a run's record (`run_key`) is kept at least after its last batch, however soon the
#: result expires: a run may send nothing for a long while between two chunks.
RUN_KEPT = 86_400

#: Append a batch of one run's chunks to a task's stream, as one entry, and publish them. KEYS:
#: the stream, the task's result key (its channel), the run's record (`run_key`). ARGV: the
#: stream's expiry in seconds (0: none), the run's count of chunks sent before the batch's
#: first, the task's id, how many chunks the batch holds, and the chunks (each as JSON,
#: comma-separated). The record counts the run's chunks written and the stream's length after
#: the last. A batch sent again after its reply was lost may have grown meanwhile (the chunks
#: sent since join it): if all of it was written, nothing is added (0); if the first of it
#: were, the record's count comes back (`{written}`), for the rest to be sent from there
#: (`append_chunks`). A stream that lost what the run wrote (Redis lost it), or a batch past a
#: gap, takes nothing more (-1): a gap would pass unseen. Two runs of one task (a retry, a
#: redelivery) each append at the stream's end. Returns 1 once chunks are added.
#:
#: The chunks come joined, as one argument. Sent as a thousand arguments, a batch of 1,000
#: small chunks cost redis-py 815 µs of CPU to send, against 142 µs joined, and Redis 0.44 to
#: 0.53 µs a chunk (its `table.concat`), against 0.23 to 0.25 (2026-12-05).
APPEND_CHUNKS = """
local run = redis.call('HMGET', KEYS[3], 'written', 'end')
local written = tonumber(run[1] or '0')
local first = tonumber(ARGV[2])
local count = tonumber(ARGV[4])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local length = last and tonumber(string.match(last[1], '%d+$')) or 0
if first > written or length < tonumber(run[2] or '0') then return -1 end
if first + count <= written then return 0 end
if first < written then return {written} end
local body = ARGV[5]
redis.call('XADD', KEYS[1], '0-' .. string.format('%d', length + count), 'n', count, 'b', body)
local expiry = tonumber(ARGV[1])
if expiry > 0 then redis.call('EXPIRE', KEYS[1], expiry) end
redis.call('HSET', KEYS[3], 'written', written + count, 'end', length + count)
redis.call('EXPIRE', KEYS[3], math.max(expiry, RUN_KEPT))
redis.call('PUBLISH', KEYS[2], '{"status":"STREAMING","task_id":' .. cjson.encode(ARGV[3])
    .. ',"offset":' .. string.format('%d', length) .. ',"chunks":[' .. body .. ']}')
return 1
""".replace("RUN_KEPT", str(RUN_KEPT))


def append_chunks(
    script: Any, keys: list[bytes], expires: int, first: int, task_id: str, chunks: list[bytes]
) -> int:
    """Append a batch of a run's chunks (`APPEND_CHUNKS`, registered as `script`), the run
    having sent `first` before it: 1 once added, 0 if written before, -1 if refused."""
    reply = script(keys=keys, args=[expires, first, task_id, len(chunks), b",".join(chunks)])
    if isinstance(reply, list):
        # Sent again, its reply lost, and grown since: the first of it are written.
        written = int(reply[0])
        rest = chunks[written - first :]
        reply = script(keys=keys, args=[expires, written, task_id, len(rest), b",".join(rest)])
    return int(reply)


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


@dataclass(frozen=True, slots=True)
class StoredPage:
    """Chunks read from a task's stream, in order: from the offset asked for, or from before it
    (an entry holds a whole batch); and whether more may follow (the read came back full)."""

    chunks: list[StoredChunk]
    more: bool


def read_chunks(client: Any, key: bytes, start: int) -> list[StoredChunk]:
    """Every chunk of the stream at `key`, from offset `start` on (blocking)."""
    chunks: list[StoredChunk] = []
    while True:
        page = parse_page(client.xrange(key, entry_id(start), "+", count=PAGE))
        chunks += [chunk for chunk in page.chunks if chunk.offset >= start]
        if not page.more or not chunks:
            return chunks
        start = chunks[-1].offset + 1


def parse_page(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> StoredPage:
    """Stream entries as redis-py reads them (`XRANGE`, `PAGE` at most), as chunks."""
    chunks: list[StoredChunk] = []
    for entry, fields in entries:
        end = int(entry.split(b"-", 1)[1])
        if BODY_FIELD not in fields:
            chunks.append(StoredChunk(end - 1, fields[CHUNK_FIELD]))
            continue
        values = orjson.loads(b"[%s]" % fields[BODY_FIELD])
        first = end - int(fields[COUNT_FIELD])
        chunks += [StoredChunk(first + n, orjson.dumps(value)) for n, value in enumerate(values)]
    return StoredPage(chunks, len(entries) >= PAGE)


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

"""A workflow in Redis: its record, the counters its members keep as they end, its channel.

A workflow (a chain, group or chord the bridge sent) is kept beside Celery's results, in the
result backend's Redis, for as long as they are kept. Under `<app>:workflow:<id>`:

- the key itself: what it is (`WorkflowRecord`): its kind, its members (id and task name, in
  the order they run) and where its result comes from (a member's id, or a list of them for a
  group);
- `:progress`, a hash: the counters (`Counts`), each member's last state (`state:<id>`) and
  first final state (`ended:<id>`, so that it is counted once), and whether it was cancelled
  as a whole;
- the channel of the same name: a message for every change of a member.

Each member's `celery-task-meta-<id>.workflow` names its workflow. The script that stores a
task's state (`quart_celery._broker.backends`) looks there, and counts a member that ends in
its workflow's counters and publishes the change, in the same step as the state itself:
Celery's chord counter is the model. A follower reads the workflow once, then hears one
message per change with the counts in it, and never reads the members again: a workflow of
1,000 tasks costs a server no more per update than one task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import orjson

from quart_celery.states import TaskState

#: Where a workflow's result comes from: a member's id, or (a group's) a list of these.
ResultShape: TypeAlias = str | list["ResultShape"]
#: A Redis command, as its words: `("SET", key, value, "EX", 60)`.
Command: TypeAlias = tuple[str | bytes | int, ...]

#: Appended to the key of a task's state: the key that names the task's workflow.
MEMBERSHIP_SUFFIX = b".workflow"
ENDED = frozenset({TaskState.SUCCESS, TaskState.FAILURE, TaskState.REVOKED})

#: Run by the store script after it stored a state (KEYS[1], the meta ARGV[1], its expiry in
#: seconds ARGV[2]) and published it: if the task is a member of a workflow (KEYS[2] names
#: it, as "<the task's id>|<the workflow's key>"),
#: record its state, count it the first time it ends, refresh the workflow's expiry to its
#: state's, and publish the change with the counts on the workflow's channel. Nothing if the
#: state is the one recorded already. The state is read off the start of the meta, where
#: Celery's JSON puts it, rather than by decoding a result that may be large. The workflow's
#: keys are not among KEYS: they are named by a value, which a single Redis (or Sentinel's
#: master) allows and a cluster would not.
COUNT_MEMBER = """
local membership = redis.call('GET', KEYS[2])
if not membership then return 1 end
local member, workflow = string.match(membership, '^([^|]+)|(.+)$')
local state = string.match(ARGV[1], '^{"status": ?"([%w_]+)"')
if not workflow or not state then return 1 end
local progress = workflow .. ':progress'
if redis.call('EXISTS', progress) == 0 then return 1 end
local field = 'state:' .. member
if redis.call('HGET', progress, field) == state then return 1 end
redis.call('HSET', progress, field, state)
if (state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED')
        and redis.call('HSETNX', progress, 'ended:' .. member, state) == 1 then
    redis.call('HINCRBY', progress, 'done', 1)
    if state == 'FAILURE' then redis.call('HINCRBY', progress, 'failed', 1) end
    if state == 'REVOKED' then redis.call('HINCRBY', progress, 'revoked', 1) end
end
if tonumber(ARGV[2]) > 0 then
    for _, key in ipairs({workflow, progress}) do
        if redis.call('TTL', key) < tonumber(ARGV[2]) then redis.call('EXPIRE', key, ARGV[2]) end
    end
end
local version = redis.call('HINCRBY', progress, 'version', 1)
local counts = redis.call('HMGET', progress, 'total', 'done', 'failed', 'revoked', 'cancelled')
redis.call('PUBLISH', workflow, cjson.encode({
    task = member, state = state, version = version, total = tonumber(counts[1]),
    done = tonumber(counts[2]), failed = tonumber(counts[3]), revoked = tonumber(counts[4]),
    cancelled = tonumber(counts[5])}))
return 1
"""


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """What a workflow is: its kind, its members and where its result comes from."""

    workflow_id: str
    #: "chain", "group" or "chord": the outermost.
    kind: str
    #: Every task of it, as (id, task name), in the order they run.
    members: tuple[tuple[str, str], ...]
    result: ResultShape

    def encode(self) -> bytes:
        """The record as it is stored."""
        members = [list(member) for member in self.members]
        return orjson.dumps({"kind": self.kind, "members": members, "result": self.result})

    @classmethod
    def decode(cls, workflow_id: str, raw: bytes) -> WorkflowRecord:
        """A stored record."""
        stored = orjson.loads(raw)
        members = tuple((str(task_id), str(name)) for task_id, name in stored["members"])
        return cls(workflow_id, str(stored["kind"]), members, stored["result"])

    def result_ids(self) -> list[str]:
        """The members whose results make the workflow's."""
        return list(_ids_in(self.result))


def _ids_in(shape: ResultShape) -> list[str]:
    if isinstance(shape, str):
        return [shape]
    return [task_id for part in shape for task_id in _ids_in(part)]


def result_from(shape: ResultShape, results: dict[str, Any]) -> Any:
    """The workflow's result: each member's id in `shape` replaced by its result."""
    if isinstance(shape, str):
        return results.get(shape)
    return [result_from(part, results) for part in shape]


@dataclass(frozen=True, slots=True)
class Counts:
    """A workflow's counters, as its members' states are stored."""

    total: int
    #: Members ended, in any final state; those ended in FAILURE; in REVOKED.
    done: int
    failed: int
    revoked: int
    #: One more for every change of a member: an update older than a snapshot is dropped.
    version: int
    #: 1 once the workflow was cancelled as a whole (`DELETE /api/workflows/<id>`).
    cancelled: int = 0

    @classmethod
    def of(cls, fields: dict[str, Any]) -> Counts:
        """The counts from the progress hash, or from a published change."""

        def number(name: str) -> int:
            value = fields.get(name)
            return int(value) if value is not None else 0

        return cls(
            total=number("total"),
            done=number("done"),
            failed=number("failed"),
            revoked=number("revoked"),
            version=number("version"),
            cancelled=number("cancelled"),
        )

    @property
    def ended(self) -> bool:
        """Whether the workflow has ended: every member has, or one failed or was revoked (as
        `GroupResult.get()` raises at the first failure: what Celery runs after a failure, and
        whether it stores anything for it, depends on the workflow's shape, and the workflow's
        outcome does not). Every member, not only those its result comes from: Celery sends a
        chain's next link before it stores the link's own result, so the last link may end
        first. Once cancelled as a whole, only when every member has ended: the running ones
        are stopped, each not started was marked REVOKED."""
        if self.cancelled:
            return self.done >= self.total
        return self.failed > 0 or self.revoked > 0 or self.done >= self.total

    @property
    def state(self) -> TaskState:
        """The workflow's own state: REVOKED if a member was revoked, FAILURE if one failed,
        else SUCCESS, once it has ended; STARTED once a member has changed; else PENDING."""
        if self.ended:
            if self.revoked or self.cancelled:
                return TaskState.REVOKED
            return TaskState.FAILURE if self.failed else TaskState.SUCCESS
        return TaskState.STARTED if self.version else TaskState.PENDING


def member_states(fields: dict[str, Any]) -> dict[str, str]:
    """Each member's last state, from the progress hash (members never changed are missing)."""
    return {
        name.removeprefix("state:"): str(value)
        for name, value in fields.items()
        if name.startswith("state:")
    }


def decoded_hash(raw: dict[Any, Any]) -> dict[str, str]:
    """A hash as redis-py reads it (bytes), as text."""
    return {_text(name): _text(value) for name, value in raw.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def membership_key(meta_key: str | bytes) -> bytes:
    """The key that names the workflow of the task whose state is at `meta_key`."""
    key = meta_key.encode() if isinstance(meta_key, str) else meta_key
    return key + MEMBERSHIP_SUFFIX


def writes(record: WorkflowRecord, key: str, meta_key_of: Any, expires: int) -> list[Command]:
    """The commands that record a workflow at `key`, for `expires` seconds: its record, its
    counters, and each member's membership (at `meta_key_of(task_id)` + the suffix)."""
    progress: Command = (
        "HSET",
        key + ":progress",
        "total",
        len(record.members),
        "done",
        0,
        "failed",
        0,
        "revoked",
        0,
        "version",
        0,
    )
    commands: list[Command] = [
        ("SET", key, record.encode(), "EX", expires),
        progress,
        ("EXPIRE", key + ":progress", expires),
    ]
    for task_id, _ in record.members:
        membership = membership_key(meta_key_of(task_id))
        commands.append(("SET", membership, f"{task_id}|{key}", "EX", expires))
    return commands

"""Idempotent submissions: an `Idempotency-Key` names a run, so that a client whose
`POST /api/tasks` timed out can send it again and get the same task, not a second one.

Stripe's idempotency keys, which most APIs copy, are the model:

- the first request with a key sends the task;
- a repeat with the same key and the same body, for as long as the task's record lives
  (`CELERY_RESULT_EXPIRES`), answers what the first answered, with `Idempotent-Replayed: true`,
  and sends nothing;
- the same key with another body is 422 `idempotency_key_reused`;
- a repeat while the first is still being sent is 409 `idempotency_key_in_use`: try again in
  a moment (its answer says when, in `Retry-After`);
- a key is 1 to 255 printable ASCII characters, else 400 `invalid_idempotency_key`. With
  `API_TOKEN` set, a key belongs to the token it came with: two clients may pick the same one.

"The same body" is the same task with the same arguments once validated, defaults filled in.
Decided in Redis, by `SET NX`: of any number of requests at once, on any number of server
processes, one claims the key and sends. Whether a task was sent is its record's to say (it is
written with the message, and dropped where the message could not be): a claim whose send
failed is dropped again where no record was made, so that the retry sends it, and kept where
one was (the send timed out after Redis took it), so that the retry gets the task. A claim
still being sent lives `PENDING_TTL` seconds, so that one whose server died is not held for
the whole lifetime of the tasks. Written here: no maintained library keeps
idempotency keys for Quart, and the claim has to share the task's id and lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from quart import Quart, current_app, request

from quart_celery._broker.address import RedisAddress, aclose
from quart_celery._broker.keys import Keys
from quart_celery._client.availability import answering
from quart_celery._client.current import current_keys
from quart_celery._protection import access
from quart_celery.errors import APIError, ServiceUnavailable

logger = logging.getLogger(__name__)

EXTENSION = "quart_celery.idempotency"
HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
#: Seconds a client is told to wait before repeating a request whose first is being sent.
RETRY_AFTER = 1
#: Seconds a claim whose task is still being sent lives.
PENDING_TTL = 60


class IdempotencyHeaders(BaseModel):
    """The header, for the OpenAPI document (the view checks it itself)."""

    model_config = ConfigDict(populate_by_name=True)

    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x20-\x7e]+$",
        description="Names this run: a repeat with the same key and body sends nothing and "
        "answers as the first did (`Idempotent-Replayed: true`).",
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """What a key stands for: the request it came with, its task, and whether that was sent."""

    fingerprint: str
    task_id: str
    name: str
    sent: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The task a request with a key stands for, and whether an earlier request sent it."""

    task_id: str
    name: str
    replayed: bool


def requested_key() -> str | None:
    """The request's `Idempotency-Key`, if it has one; 400 if it is not a valid key."""
    key = request.headers.get(HEADER)
    if key is not None and not VALID_KEY.fullmatch(key):
        raise APIError(
            400,
            "invalid_idempotency_key",
            f"{HEADER} must be 1 to 255 printable ASCII characters.",
        )
    return key


async def submit_once(
    key: str, name: str, kwargs: dict[str, Any], send: Callable[[str], Awaitable[None]]
) -> Outcome:
    """Send the run `send(task_id)` once for `key`: the first time, with a new id; a repeat
    of the same request gets the first's task, and sends nothing."""
    claims: Claims = current_app.extensions[EXTENSION]
    redis_key = claims.keys.idempotency(_scope(), key)
    body = orjson.dumps({"name": name, "kwargs": kwargs}, option=orjson.OPT_SORT_KEYS)
    claim = Claim(hashlib.sha256(body).hexdigest(), str(uuid.uuid4()), name)
    earlier = await claims.claim(redis_key, claim)
    if earlier is not None:
        if earlier.fingerprint != claim.fingerprint:
            raise APIError(
                422,
                "idempotency_key_reused",
                f"This {HEADER} was used with another request; use a new key for a new run.",
            )
        if not earlier.sent and await claims.was_sent(earlier):
            await claims.sent(redis_key, earlier)
            earlier = Claim(earlier.fingerprint, earlier.task_id, earlier.name, sent=True)
        if not earlier.sent:
            raise APIError(
                409,
                "idempotency_key_in_use",
                f"A request with this {HEADER} is being sent; repeat it in a moment.",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        return Outcome(earlier.task_id, earlier.name, replayed=True)

    async def send_and_settle() -> None:
        try:
            await send(claim.task_id)
        except BaseException:
            if await claims.was_sent(claim):
                await claims.sent(redis_key, claim)
            else:
                await claims.release(redis_key, claim)
            raise
        await claims.sent(redis_key, claim)

    # Shielded: a client that goes while its task is being sent leaves the claim settled
    # (sent, or dropped), not held until it expires.
    await asyncio.shield(send_and_settle())
    return Outcome(claim.task_id, claim.name, replayed=False)


def _scope() -> str:
    """Whose keys these are: the token's (by its digest, never the token) where tokens are on."""
    token = access.request_token()
    return hashlib.sha256(token.encode()).hexdigest()[:32] if token else "open"


# SET the claim as sent, for as long as tasks live, only if it is still the one this request
# made (another may have taken over once it expired); DEL it likewise.
_MARK_SENT = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("SET", KEYS[1], ARGV[2], "EX", ARGV[3])
end
"""
_RELEASE = """
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
"""


class Claims:
    """The claims of keys, in the app's Redis, each kept as long as the tasks' records."""

    def __init__(self, address: RedisAddress, keys: Keys, expires: int, timeout: float) -> None:
        self.client = address.async_client(socket_connect_timeout=2, socket_timeout=timeout)
        self.keys = keys
        self.expires = expires
        self.timeout = timeout
        self._mark_sent = self.client.register_script(_MARK_SENT)
        self._release = self.client.register_script(_RELEASE)

    async def claim(self, key: str, claim: Claim) -> Claim | None:
        """Claim `key` for `claim`: None if it is now this request's, else the earlier claim."""
        value = _encoded(claim)
        for _ in range(3):  # the earlier claim may be released between the two commands
            async with self._answering():
                if await self.client.set(key, value, nx=True, ex=PENDING_TTL):
                    return None
                earlier = await self.client.get(key)
            if earlier is not None:
                return Claim(**orjson.loads(earlier))
        raise ServiceUnavailable(f"The {HEADER} could not be claimed; repeat the request.")

    async def sent(self, key: str, claim: Claim) -> None:
        """The claim's task was sent: repeats of its request get its answer from now on.

        Where Redis does not take that now, a repeat finds the task's record instead.
        """
        sent = Claim(claim.fingerprint, claim.task_id, claim.name, sent=True)
        try:
            async with self._answering():
                args: list[bytes | int] = [_encoded(claim), _encoded(sent), self.expires]
                await self._mark_sent(keys=[key], args=args)
        except ServiceUnavailable:
            logger.warning("could not mark the claim of %s as sent", claim.task_id)

    async def was_sent(self, claim: Claim) -> bool:
        """Whether the claim's task (or workflow) was sent after all: its record says so."""
        try:
            async with self._answering():
                records = (self.keys.task(claim.task_id), self.keys.workflow(claim.task_id))
                return bool(await self.client.exists(*records))
        except ServiceUnavailable:
            return False

    async def release(self, key: str, claim: Claim) -> None:
        """The claim's task was not sent: drop the claim, so that a repeat can send it."""
        try:
            async with self._answering():
                await self._release(keys=[key], args=[_encoded(claim)])
        except ServiceUnavailable:
            pass  # the claim expires with the records anyway

    def _answering(self) -> AbstractAsyncContextManager[None]:
        """A block in which Redis must answer within `timeout`: else 503."""
        return answering("Redis", self.timeout)

    async def close(self) -> None:
        """Close the connections to Redis."""
        await aclose(self.client)


def _encoded(claim: Claim) -> bytes:
    return orjson.dumps(asdict(claim))


def init_app(app: Quart) -> None:
    """Keep the claims in the app's Redis while the app serves."""

    @app.while_serving
    async def idempotency_claims() -> AsyncGenerator[None, None]:
        expires = int(app.config["CELERY_RESULT_EXPIRES"])
        timeout = 0.8 * app.config["BLOCKING_TIMEOUT"]
        claims = Claims(RedisAddress.of(app.config), current_keys(), expires, timeout)
        app.extensions[EXTENSION] = claims
        yield
        await app.extensions.pop(EXTENSION).close()

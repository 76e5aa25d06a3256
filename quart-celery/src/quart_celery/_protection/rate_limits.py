"""Rate limits on submissions: `API_RATE_LIMIT` (`100/minute`; `N/second`, `N/minute`,
`N/hour`; unset: no limit) caps how often one client submits.

The client is its API token where tokens are on (by its digest), else its address (behind a
reverse proxy, have hypercorn trust the proxy's forwarded address, or every client is the
proxy). Over the limit a submission is answered 429 `rate_limited`, with `Retry-After`: the
seconds until the oldest submission in the window leaves it. Only the views marked with
`@limits_submissions` count: the JSON API's `POST /api/tasks` and the HTML form's post; the
health checks, `/metrics` and the reads never do.

The count is kept in the app's Redis by the `limits` library (the one Flask-Limiter and
slowapi use), with its moving window: every server process shares it, and each hit is one
atomic script, so that two processes taking the last place at once cannot both get it.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from quart import Quart, current_app, request

from quart_celery._broker.address import RedisAddress, close_pool
from quart_celery._client.availability import answering
from quart_celery._client.current import current_keys
from quart_celery._protection import access
from quart_celery.errors import APIError
from quart_celery.settings import parse_rate_limit

EXTENSION = "quart_celery.rate_limits"
P = ParamSpec("P")
R = TypeVar("R")


class Limiter:
    """The limit, and the window of each client's submissions in Redis."""

    def __init__(
        self, limit: RateLimitItem, address: RedisAddress, key_prefix: str, timeout: float
    ) -> None:
        self.limit = limit
        self.timeout = timeout
        self.pool = address.async_pool(socket_connect_timeout=2)
        storage = RedisStorage(
            # The storage connects through the pool: the URL only names the kind of storage.
            "async+redis://",
            implementation="redispy",
            key_prefix=key_prefix,
            connection_pool=self.pool,  # type: ignore[arg-type]  # taken, though not typed so
        )
        self.windows = MovingWindowRateLimiter(storage)

    async def take(self, client: str) -> None:
        """Count a submission of `client`'s; 429 if its window is full."""
        async with answering("Redis", self.timeout):
            if await self.windows.hit(self.limit, client):
                return
            window = await self.windows.get_window_stats(self.limit, client)
        retry_after = max(1, math.ceil(window.reset_time - time.time()))
        raise APIError(
            429,
            "rate_limited",
            f"At most {self.limit.amount} submissions per {self.limit.GRANULARITY.name}; "
            f"try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )

    async def close(self) -> None:
        """Close the connections to Redis."""
        await close_pool(self.pool)


def limits_submissions(view: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Count each request to `view` against its client's `API_RATE_LIMIT`; 429 beyond it."""

    @wraps(view)
    async def limited(*args: P.args, **kwargs: P.kwargs) -> R:
        limiter: Limiter | None = current_app.extensions.get(EXTENSION)
        if limiter is not None:
            await limiter.take(submitter_identity())
        return await view(*args, **kwargs)

    return limited


def submitter_identity() -> str:
    """Who is submitting: its API token's digest where tokens are on, else its address."""
    token = access.request_token()
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return f"address:{request.remote_addr}"


def init_app(app: Quart) -> None:
    """Where `API_RATE_LIMIT` is set, keep the windows in the app's Redis while serving."""
    setting: Any = app.config.get("API_RATE_LIMIT")
    if not setting:
        return
    limit = parse_rate_limit(str(setting))

    @app.while_serving
    async def limiter() -> AsyncGenerator[None, None]:
        timeout = 0.8 * app.config["BLOCKING_TIMEOUT"]
        address, prefix = RedisAddress.of(app.config), current_keys().rate_limits
        app.extensions[EXTENSION] = Limiter(limit, address, prefix, timeout)
        yield
        await app.extensions.pop(EXTENSION).close()

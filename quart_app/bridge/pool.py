"""The app's own thread pool, for the Celery and Redis calls that block.

Publishing a task, looking up its state, revoking it and pinging workers all block on the
network. They run here, never on the event loop, and not in the loop's default executor either:
that one has only `cpus + 4` threads and is shared by everything that calls `run_sync`, so a
slow broker would stall unrelated requests. The pool is made when serving starts and shut down
when it stops; a call that takes longer than `BLOCKING_TIMEOUT` is answered 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

from kombu.exceptions import OperationalError
from quart import Quart, current_app
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from quart_app.bridge.errors import ServiceUnavailable

T = TypeVar("T")
EXTENSION = "blocking_pool"

# What a broker or backend that cannot be reached raises.
UNREACHABLE = (OperationalError, RedisConnectionError, RedisTimeoutError, OSError)


def init_app(app: Quart) -> None:
    """Make the pool when serving starts, and shut it down when serving stops."""

    @app.while_serving
    async def pool() -> AsyncGenerator[None, None]:
        app.extensions[EXTENSION] = ThreadPoolExecutor(
            app.config["BLOCKING_POOL_SIZE"], thread_name_prefix="blocking"
        )
        yield
        app.extensions.pop(EXTENSION).shutdown(wait=False, cancel_futures=True)


async def run_in_pool(
    what: str, function: Callable[..., T], /, *args: Any, timeout: float | None = None
) -> T:
    """Run `function(*args)` in the app's pool; 503 if `what` cannot be reached in time.

    `what` names the service the call needs, for the error message ("the broker"); `timeout`
    defaults to `BLOCKING_TIMEOUT`.
    """
    pool: ThreadPoolExecutor = current_app.extensions[EXTENSION]
    timeout = current_app.config["BLOCKING_TIMEOUT"] if timeout is None else timeout
    call = asyncio.get_running_loop().run_in_executor(pool, partial(function, *args))
    async with answering(what, timeout):
        return await call


@asynccontextmanager
async def answering(what: str, timeout: float) -> AsyncIterator[None]:
    """A block of calls to `what` that must answer within `timeout` seconds; 503 if it does
    not, or cannot be reached (the pool's calls, and the awaited Redis calls of the bridge)."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        message = f"{what.capitalize()} did not answer within {timeout} s."
        raise ServiceUnavailable(message) from None
    except (*UNREACHABLE, ResponseError) as error:
        if not unavailable(error):
            raise
        raise as_api_error(what, error) from None


def unavailable(error: BaseException) -> bool:
    """Whether `error` says the service cannot take calls now: it cannot be reached, or it is
    a Redis master that refuses writes while no replica keeps up (`NOREPLICAS`, under
    `min-replicas-to-write`), which redis-py raises as a plain `ResponseError`."""
    if isinstance(error, ResponseError):
        return str(error).startswith("NOREPLICAS")
    return isinstance(error, UNREACHABLE)


def as_api_error(what: str, error: Exception) -> Exception:
    """A 503 for the error of a service that cannot take calls now; any other error as it is."""
    if not unavailable(error):
        return error
    if isinstance(error, ResponseError):
        return ServiceUnavailable(f"{what.capitalize()} takes no writes now: {error}")
    return ServiceUnavailable(f"{what.capitalize()} cannot be reached: {error}")

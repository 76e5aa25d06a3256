"""What a Redis or a broker that cannot take calls now becomes: a 503, within a deadline.

Every call of the web app's to Redis or the broker, blocking (in the thread pool) or awaited,
must answer within its deadline or be answered 503 `service_unavailable`: never a hang, and
never a 500 for what is an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from quart_celery.errors import ServiceUnavailable

# What a broker or backend that cannot be reached raises.
UNREACHABLE = (OperationalError, RedisConnectionError, RedisTimeoutError, OSError)


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

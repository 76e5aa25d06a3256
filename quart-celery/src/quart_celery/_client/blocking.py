"""The app's own thread pool, for the Celery and Redis calls that block.

Publishing a task, looking up its state, revoking it and pinging workers all block on the
network. They run here, never on the event loop, and not in the loop's default executor either:
that one has only `cpus + 4` threads and is shared by everything that calls `run_sync`, so a
slow broker would stall unrelated requests. The pool is made when serving starts and shut down
when it stops; a call that takes longer than `BLOCKING_TIMEOUT` is answered 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from quart import Quart, current_app

from quart_celery._client.availability import answering

T = TypeVar("T")
EXTENSION = "quart_celery.blocking_pool"


def init_app(app: Quart) -> None:
    """Make the pool when serving starts, and shut it down when serving stops."""

    @app.while_serving
    async def pool() -> AsyncGenerator[None, None]:
        app.extensions[EXTENSION] = ThreadPoolExecutor(
            app.config["BLOCKING_POOL_SIZE"], thread_name_prefix="blocking"
        )
        yield
        app.extensions.pop(EXTENSION).shutdown(wait=False, cancel_futures=True)


async def run_blocking(
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

"""Which pool a worker runs: the async pool (`quart_celery._worker.pool`), unless the command
line or the settings name another.

The bridge does not make its pool Celery's `worker_pool` setting, because Celery's command line
then replaces an explicit `--pool=prefork` with it (`celery/bin/worker.py`,
`WorkersPool.convert`): a user who asks for prefork must get prefork. Instead, as a worker
starts, the bridge gives it the async pool where nothing chose one: the command line's `--pool`
took its default (or the worker was made in code without `pool_cls`), and `CELERY_WORKER_POOL`
is unset. Where `--concurrency` (or `CELERY_WORKER_CONCURRENCY`) is not given either, the async
pool takes `DEFAULT_CONCURRENCY` tasks in flight, not one per core.
"""

from __future__ import annotations

from typing import Any

import click
from click.core import ParameterSource

from quart_celery._worker.asyncio_pool import DEFAULT_CONCURRENCY, AsyncPool

#: Set on a worker (Celery's WorkController) that is to run the async pool: whether its
#: concurrency is the pool's default.
CHOSEN = "_quart_celery_async_pool"


def choose(worker: Any, options: dict[str, Any], pool_set: bool, concurrency_set: bool) -> None:
    """Note on `worker` (as `celeryd_init` gives it, with its `options`) whether it runs the
    async pool; `pool_set` and `concurrency_set`: whether the settings name them."""
    if pool_set or _given(options, "pool", "pool_cls"):
        return
    setattr(worker, CHOSEN, not (concurrency_set or _given(options, "concurrency")))


def apply(worker: Any) -> None:
    """Give `worker` the async pool if `choose` said so (at `worker_init`, before its pool is
    made)."""
    default_concurrency = getattr(worker, CHOSEN, None)
    if default_concurrency is None:
        return
    worker.pool_cls = AsyncPool
    worker.app.conf.worker_pool = f"{AsyncPool.__module__}:{AsyncPool.__name__}"
    if default_concurrency:
        worker.concurrency = DEFAULT_CONCURRENCY


def _given(options: dict[str, Any], parameter: str, option: str | None = None) -> bool:
    """Whether the worker's command line gave `parameter` (or, for a worker made in code, its
    `option` was passed)."""
    context = click.get_current_context(silent=True)
    if context is not None and parameter in context.params:
        source = context.get_parameter_source(parameter)
        return source not in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    return bool(options.get(option or parameter))

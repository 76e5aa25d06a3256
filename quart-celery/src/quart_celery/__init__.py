"""quart-celery: Celery tasks for Quart apps, run in the app's context and served over HTTP and
websockets without blocking the event loop.

    from quart_celery import QuartCelery, expose, queue

What your code uses is here, and only here (the modules under `quart_celery._*` are the
bridge's own):

- `QuartCelery`: the extension; `QuartCelery(celery)` beside your placeholder Celery instance,
  `init_celery(app)` in your Celery factory, `init_app(app)` in your application factory;
- `expose` (and `ArgumentRules`): let clients start a task over the JSON API, its arguments
  checked against its signature;
- `queue`: submit, look up, follow and wait for tasks and workflows (chains, groups,
  chords) from async views, without blocking;
- `APIError` and its kinds: raise one in a view to answer with a JSON error; `queue` raises
  them;
- `TaskState`, `TaskSnapshot`: a task as clients see it; `WorkflowSnapshot`, `WorkflowChange`,
  `WorkflowTask`: a workflow, and a change of a task of it;
- `send_workflow`: a chain, group or chord sent from sync code (a task, a shell), followable
  as one;
- `send_chunk` (and `TooManyChunks`, `ChunksNotWritten`): stream a task's output, chunk by
  chunk, to its clients (an async generator task streams what it yields);
- `checkpoint` (and `TaskCancelled`): where a long sync task may stop if it is cancelled;
- `watch_ticket`: lets a page of yours follow one task over its websocket;
- `limits_submissions`: counts a view of yours that submits against `API_RATE_LIMIT`;
- `ContextTask`: the base class of every task, to derive your own from;
- `AsyncPool`: the workers' pool when no other is named, `async def` tasks side by side on one
  event loop per process (`--pool custom` with `CELERY_CUSTOM_WORKER_POOL=quart_celery:AsyncPool`
  names it too);
- `ConfigurationError`, `exit_on_configuration_error`: a wrong setting, as one line at start-up.

`quart_celery.testing` is a pytest plugin with fixtures for your tests. Importing any of this
connects nowhere.
"""

from __future__ import annotations

from quart_celery._broker.workflow_sending import send_workflow
from quart_celery._client import queue
from quart_celery._client.exposure import ArgumentRules, expose
from quart_celery._protection.access import watch_ticket
from quart_celery._protection.rate_limits import limits_submissions
from quart_celery._worker.asyncio_pool import AsyncPool
from quart_celery._worker.cancellation import TaskCancelled, checkpoint
from quart_celery._worker.streams import send_chunk
from quart_celery._worker.task import ContextTask
from quart_celery.errors import (
    APIError,
    ChunksNotWritten,
    FellBehind,
    InvalidArguments,
    ResultTimeout,
    ServiceUnavailable,
    TaskFailed,
    TaskNotFound,
    TaskRevoked,
    TooManyChunks,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowRevoked,
)
from quart_celery.extension import QuartCelery
from quart_celery.schemas import (
    Progress,
    TaskFailure,
    TaskSnapshot,
    WorkflowChange,
    WorkflowSnapshot,
    WorkflowTask,
)
from quart_celery.settings import ConfigurationError, exit_on_configuration_error
from quart_celery.states import TaskState

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "ArgumentRules",
    "AsyncPool",
    "ChunksNotWritten",
    "ConfigurationError",
    "ContextTask",
    "FellBehind",
    "InvalidArguments",
    "Progress",
    "QuartCelery",
    "ResultTimeout",
    "ServiceUnavailable",
    "TaskCancelled",
    "TaskFailed",
    "TaskFailure",
    "TaskNotFound",
    "TaskRevoked",
    "TaskSnapshot",
    "TaskState",
    "TooManyChunks",
    "WorkflowChange",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowRevoked",
    "WorkflowSnapshot",
    "WorkflowTask",
    "checkpoint",
    "exit_on_configuration_error",
    "expose",
    "limits_submissions",
    "queue",
    "send_chunk",
    "send_workflow",
    "watch_ticket",
]

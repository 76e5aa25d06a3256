"""Prometheus metrics of the web server, scraped at `GET /metrics` (prometheus-client).

Each name begins with the app's name (`quart_app_...` for an app named `quart_app`):

- `<app>_tasks_submitted_total{task, outcome}`: runs submitted, `accepted` (the broker has
  them), `invalid` (the API refused the request: `task` is "unknown" unless it names an exposed
  task) or `unavailable` (the broker could not be reached);
- `<app>_http_request_duration_seconds{method, route, status}`: each HTTP request, by its
  route's pattern (`/api/tasks/<uuid:task_id>`; "unmatched" where none matched);
- `<app>_websockets_open`: websockets open now;
- `<app>_delivery_seconds`: from the worker storing a state (Celery's `date_done`, or the
  time it published a state that has none) to the state being handed to the socket or
  follower that waits for it; across machines, their clocks' difference is part of it;
- `<app>_listener_reconnects_total`: times the result listener connected to Redis again
  after losing its connection;
- `<app>_websocket_messages_total{path}`: messages sent to websockets, `straight` (a state or
  a batch of chunks the listener wrote to the socket itself, under hypercorn) or `handler`
  (sent by the socket's handler): counted as sockets end, and as a scrape reaches a process
  (`quart_celery._web.frames`).

Under `hypercorn --workers N` every worker is a process, and a scrape reaches one of them. So
that `/metrics` answers for all of them, the workers keep their samples in files in one
directory (prometheus-client's multiprocess mode) and a scrape adds them up: the directory is
`PROMETHEUS_MULTIPROC_DIR` when that is set (the library's own setting; empty it before the
server starts, as its documentation says), else one in the system's temporary directory named
after the hypercorn whose workers share it. A server of one process keeps them in memory.

Only a server has metrics: they are made when serving starts, so Celery's workers and commands,
which build the app too, write none. The instrumentation of requests is written here, not taken
from a library: the exporters that exist are for WSGI (prometheus-flask-exporter) or for
Starlette and FastAPI, and none knows Quart's routes.
"""

from __future__ import annotations

import fcntl
import glob
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from quart import Quart, Response, current_app, g, request

logger = logging.getLogger(__name__)
EXTENSION = "metrics"
DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds, from a millisecond up: a state is pushed, and most requests answered, in a few.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_TASK = "unknown"
#: The ways a message goes to a websocket (`<app>_websocket_messages_total{path}`): written
#: straight by the listener (`quart_celery._web.frames`), or sent by the socket's handler.
STRAIGHT, HANDLER = "straight", "handler"
#: The task label of a workflow submitted (its tasks are not counted one by one).
WORKFLOW = "workflow"
UNMATCHED_ROUTE = "unmatched"
#: The methods a label names; any other a client makes up is "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")
#: The note of a server process that writes in the directory (`member_<pid>`).
_MEMBER = "member_"


@dataclass(frozen=True, slots=True)
class Metrics:
    """The server's metrics, and the registry a scrape collects them from."""

    registry: CollectorRegistry
    #: Where this process's samples go, to be added up with its siblings'; None: in memory.
    directory: str | None
    tasks_submitted: Counter
    request_duration: Histogram
    websockets_open: Gauge
    delivery: Histogram
    listener_reconnects: Counter
    websocket_messages: Counter

    @classmethod
    def create(cls, directory: str | None, namespace: str) -> Metrics:
        """The metrics, named after `namespace` and kept in `directory` (multiprocess mode) or,
        if None, in memory."""
        registry = CollectorRegistry()
        # In multiprocess mode the samples are read back from the files, so the metrics
        # themselves are registered nowhere (else a scrape would count this process twice).
        own: CollectorRegistry | None = registry
        if directory is not None:
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            own = None
        return cls(
            registry=registry,
            directory=directory,
            tasks_submitted=Counter(
                f"{namespace}_tasks_submitted",
                "Task runs submitted, by task and outcome (accepted, invalid, unavailable).",
                ["task", "outcome"],
                registry=own,
            ),
            request_duration=Histogram(
                f"{namespace}_http_request_duration_seconds",
                "HTTP requests, by method, route pattern and status.",
                ["method", "route", "status"],
                buckets=BUCKETS,
                registry=own,
            ),
            websockets_open=Gauge(
                f"{namespace}_websockets_open",
                "Websockets open now.",
                multiprocess_mode="livesum",
                registry=own,
            ),
            delivery=Histogram(
                f"{namespace}_delivery_seconds",
                "From a worker storing a task's state to the state being handed to a socket.",
                buckets=BUCKETS,
                registry=own,
            ),
            listener_reconnects=Counter(
                f"{namespace}_listener_reconnects",
                "Times the result listener connected to Redis again after losing it.",
                registry=own,
            ),
            websocket_messages=Counter(
                f"{namespace}_websocket_messages",
                "Messages sent to websockets, by path: straight (written by the listener) or "
                "handler (sent by the socket's handler).",
                ["path"],
                registry=own,
            ),
        )

    def __post_init__(self) -> None:
        # Both ways show, at 0 until a message goes that way: `straight` at 0 is news.
        for path in (STRAIGHT, HANDLER):
            self.websocket_messages.labels(path=path)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """Every process's samples, in the format `accept` asks for: the body and its type.

        Blocks on the files of multiprocess mode: run it in the pool.
        """
        if self.directory is not None:
            forget_dead_processes(self.directory)
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    def observe_delivery(self, meta: Mapping[str, Any]) -> None:
        """A state was handed on: observe how long since its worker stored it, if it says."""
        stored = meta.get("date_done") or meta.get("date_stored")
        if not isinstance(stored, str):
            return
        try:
            elapsed = time.time() - datetime.fromisoformat(stored).timestamp()
        except ValueError:
            return
        self.delivery.observe(max(elapsed, 0.0))


def init_app(app: Quart) -> None:
    """Make the metrics when serving starts, and put their files away when it stops; time
    every HTTP request."""
    namespace = metric_namespace(app.name)
    directories: list[str] = []

    @app.before_serving
    async def create_metrics() -> None:
        directory, owned = multiprocess_directory(namespace)
        if owned and directory is not None:
            join_directory(directory)
            directories.append(directory)
        app.extensions[EXTENSION] = Metrics.create(directory, namespace)

    @app.after_serving
    async def leave_metrics() -> None:
        app.extensions.pop(EXTENSION, None)
        while directories:
            leave_directory(directories.pop())

    app.before_request(_start_timing)
    app.after_request(_observe_request)


def metric_namespace(app_name: str) -> str:
    """The prefix of the metrics' names: the app's name, as Prometheus takes names."""
    namespace = re.sub(r"[^a-zA-Z0-9_]", "_", app_name)
    return f"_{namespace}" if namespace[:1].isdigit() else namespace


def current() -> Metrics | None:
    """The serving app's metrics; None where the app is not serving."""
    metrics: Metrics | None = current_app.extensions.get(EXTENSION)
    return metrics


def of(app: Quart) -> Metrics | None:
    """`app`'s metrics; None until it serves."""
    metrics: Metrics | None = app.extensions.get(EXTENSION)
    return metrics


def count_submission(task: str, outcome: str) -> None:
    """Count one submission of `task` with its `outcome`."""
    metrics = current()
    if metrics is not None:
        metrics.tasks_submitted.labels(task, outcome).inc()


def multiprocess_directory(namespace: str) -> tuple[str | None, bool]:
    """Where this server process keeps its samples with its siblings' (None: in memory), and
    whether the directory is the bridge's own to remove when the server stops.

    `PROMETHEUS_MULTIPROC_DIR` if set (not ours); else, in a worker process that a server
    started (as `hypercorn` starts every worker), a directory named after that server and the
    time it started, so that a server started later with the same PID does not add up old
    samples. Directories of servers that are gone are removed first.
    """
    directory = os.environ.get(DIRECTORY_VARIABLE)
    owned = not directory
    if not directory:
        parent = multiprocessing.parent_process()
        if parent is None or parent.pid is None:
            return None, False
        remove_stale_directories(namespace)
        name = f"{namespace}-metrics-{parent.pid}-{_start_time(parent.pid)}"
        shared = os.path.join(tempfile.gettempdir(), name)
        os.makedirs(shared, mode=0o700, exist_ok=True)
        if os.stat(shared).st_uid != os.getuid():  # made beforehand by another user
            logger.warning("%s belongs to another user: metrics stay in this process", shared)
            return None, False
        directory = os.environ[DIRECTORY_VARIABLE] = shared
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if values.ValueClass is values.MutexValue:
        # prometheus-client picks file-backed values when it is first imported, if the
        # variable is set by then; set here, it needs them picked now (as its own tests do).
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return directory, owned


def remove_stale_directories(namespace: str) -> None:
    """Remove the directories of this user's servers that are no longer running (one that was
    killed, or whose last process could not tell it was the last)."""
    pattern = re.compile(rf"{re.escape(namespace)}-metrics-(\d+)-(\d+)")
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{namespace}-metrics-*")):
        found = pattern.fullmatch(os.path.basename(path))
        if found is None or _start_time(int(found.group(1))) == found.group(2):
            continue  # not such a directory, or its server still runs
        with suppress(OSError):
            if os.stat(path).st_uid == os.getuid():
                shutil.rmtree(path)


def join_directory(directory: str) -> None:
    """Note this server process as one that writes in `directory`, until it leaves it."""
    with _members_locked(directory):
        Path(directory, f"{_MEMBER}{os.getpid()}").touch()


def leave_directory(directory: str) -> None:
    """This server process stops: drop its live gauges, and the directory with them if no
    other process of its server still writes there.

    Under a lock, so that of processes stopping at once the last sees the others gone; a
    process that was killed, leaving its note behind, counts as gone too.
    """
    with _members_locked(directory):
        with suppress(FileNotFoundError):
            mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]
        Path(directory, f"{_MEMBER}{os.getpid()}").unlink(missing_ok=True)
        members = glob.glob(os.path.join(directory, f"{_MEMBER}*"))
        if not any(_alive(int(os.path.basename(path).removeprefix(_MEMBER))) for path in members):
            shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _members_locked(directory: str) -> Iterator[None]:
    """A block that no other process of the server runs at the same time (an flock)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    """Whether process `pid` is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _start_time(pid: int) -> str:
    """When process `pid` started, in clock ticks since boot (Linux); "0" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rpartition(")")[2].split()[19]


def forget_dead_processes(directory: str) -> None:
    """Drop the live gauges of worker processes that are gone (a socket count of a killed
    worker would be counted for good); their counters and histograms stay, as they should."""
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        found = _LIVE_GAUGE_FILE.search(path)
        if found is None:
            continue
        pid = int(found.group(1))
        if not _alive(pid):
            # Another process's scrape may have dropped it a moment ago.
            with suppress(FileNotFoundError):
                mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


async def _start_timing() -> None:
    g.request_started = time.perf_counter()


async def _observe_request(response: Response) -> Response:
    metrics = current()
    started = g.pop("request_started", None)
    if metrics is not None and started is not None:
        rule = request.url_rule
        route = rule.rule if rule is not None else UNMATCHED_ROUTE
        method = request.method if request.method in METHODS else "other"
        metrics.request_duration.labels(method, route, str(response.status_code)).observe(
            time.perf_counter() - started
        )
    return response

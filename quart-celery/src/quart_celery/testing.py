"""A pytest plugin for testing an app that uses the bridge: with a real Redis, real Celery
workers and, where a test needs one, a real `hypercorn`. Mocks are for unit tests only.

Load it in your `conftest.py`, and give it your app as a fixture named `app`:

    pytest_plugins = ["quart_celery.testing"]

    @pytest.fixture
    def app() -> Quart:
        return create_application({"TESTING": True})

Your tests then run your own tasks and routes with these fixtures:

- `client`: Quart's test client of `app` while it serves, its Redis database flushed;
- `celery`: the app's Celery instance, configured, its Redis database flushed;
- `thread_worker`: `with thread_worker(celery):` a real worker in a thread of the test process;
- `process_worker`: `process_worker()` starts `celery -A <worker_app> worker` as a process;
- `start_server`, `server_url`: `hypercorn <asgi_app>` as a process on a free port, for real
  HTTP and websocket clients;
- `redis_url`, `redis_client`: the Redis database of the tests' own.

Every test runs against a Redis database of the tests' own (`TEST_REDIS_DB`, default 13, and
the one after it; each pytest-xdist process takes the two below the previous one's) on the
server at `REDIS_URL`, set as the environment's `REDIS_URL` for the whole session, and the
fixtures flush only that database. Every process a fixture starts is stopped when its test
ends, whether it passed or not. The entry points the process fixtures start are the fixtures
`worker_app` (`"worker"`) and `asgi_app` (`"asgi:app"`), run from pytest's root directory:
override them in your `conftest.py` if yours are elsewhere.

Quart's test websockets raise `WebsocketClosed` with the server's close code once it closes,
whichever Quart runs (Quart 0.23 tells none). And no helper here sleeps to "wait for"
something: `wait_for` and `wait_for_async` wait on a condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import WorkController
from hypercorn.typing import ASGISendEvent
from quart import Quart
from quart.testing import QuartClient
from quart.testing.connections import TestWebsocketConnection
from quart.typing import TestClientProtocol as Client
from quart.typing import TestWebsocketConnectionProtocol as Socket

from quart_celery._worker.asyncio_pool import DEFAULT_CONCURRENCY, AsyncPool
from quart_celery.settings import DEFAULT_REDIS_URL

T = TypeVar("T")

#: Seconds a process is given to stop gracefully before it is killed.
STOP_TIMEOUT = 20.0
#: Seconds a server, or a worker, is given to answer once started.
START_TIMEOUT = 30.0
WORKER_START_TIMEOUT = 60.0
#: Seconds the helpers that wait on a task wait at most.
TIMEOUT = 20.0
FINAL = ("SUCCESS", "FAILURE", "REVOKED")

ThreadWorker = Callable[..., AbstractContextManager[WorkController]]
ProcessWorker = Callable[..., "subprocess.Popen[bytes]"]
Server = Callable[..., str]


# Waiting


def wait_for(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Return the first truthy value of `condition()`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def wait_for_async(
    condition: Callable[[], Awaitable[T | None]], timeout: float, what: str
) -> T:
    """Return the first truthy value of `await condition()`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# Imports

#: Run by `imported_alone` in a fresh interpreter: refuse the network, import the third-party
#: modules asked for once, then import each module first in a child of its own (a fork: the
#: third-party imports are paid once, and each module is still the first of its package). The
#: modules a top package's own import brought in take its result without a child each: theirs
#: would begin with the same import (of the bridge, every module: it cost 40 s a run).
_IMPORT_PROBE = """
import json, os, sys, traceback

def refuse_the_network(event, args):
    if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        raise RuntimeError(f"{event} while importing: {args!r}")

sys.addaudithook(refuse_the_network)
preload, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in preload:
    try:
        __import__(name)
    except ImportError:
        pass  # an optional dependency: the module that needs it says so itself
wanted = set(modules)
failures = {}
for module in sorted(modules, key=lambda name: name.count(".")):
    if module in failures:
        continue  # its top package's import, checked already, imported it: the same import
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        try:
            __import__(module)
            failure = ""
        except BaseException:
            failure = traceback.format_exc()
        # Any module of a top package begins its import with the package's: the modules that
        # import brought in would each be imported first exactly as it was.
        same = [] if failure or "." in module else [
            name for name in sys.modules if name.startswith(module + ".") and name in wanted
        ]
        with os.fdopen(write, "w") as out:
            out.write(json.dumps([failure, same]))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as given:
        failures[module], same = json.loads(given.read())
    os.waitpid(child, 0)
    failures.update(dict.fromkeys(same, ""))
print(json.dumps(failures))
"""


def imported_alone(
    modules: Sequence[str], preload: Sequence[str] = (), *, root: Path | None = None
) -> dict[str, str]:
    """Import each of `modules` alone, first in an interpreter of its own, with warnings as
    errors and any attempt to reach the network refused: what each one's import raised (its
    traceback), "" where it raised nothing. An import cycle shows up whichever module comes
    first; a module that connects at import fails.

    `preload` names modules outside the ones checked (third-party ones) to import once before:
    they are not checked, and each module's own import costs only itself. Run from `root`
    (the working directory by default), with `REDIS_URL` pointing nowhere.
    """
    completed = subprocess.run(
        [
            *[sys.executable, "-X", "dev", "-W", "error", "-c", _IMPORT_PROBE],
            *[json.dumps(list(preload)), json.dumps(list(modules))],
        ],
        cwd=root,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the import probe failed:\n{completed.stderr}")
    failures: dict[str, str] = json.loads(completed.stdout.splitlines()[-1])
    return failures


# Redis


def _worker_index() -> int:
    """Which of pytest-xdist's processes this is (0 without xdist): each has two databases."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))


def database_url(url: str, database: int) -> str:
    """`url` with its database number replaced by `database`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session", autouse=True)
def redis_url() -> Iterator[str]:
    """The tests' own Redis database, made the environment's `REDIS_URL` for the session.

    Celery reads `CELERY_BROKER_URL` and `CELERY_RESULT_BACKEND` from the environment ahead of
    its settings, so a developer's own are kept out of the tests, and out of the processes the
    tests start, as are `REDIS_SENTINEL*`: the tests' Redis is `REDIS_URL`'s.
    """
    database = int(os.environ.get("TEST_REDIS_DB", "13")) - 2 * _worker_index()
    url = database_url(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), database)
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith(("CELERY_", "REDIS_SENTINEL")):
                patch.delenv(name)
        patch.setenv("REDIS_URL", url)
        yield url


@pytest.fixture(scope="session")
def other_redis_url(redis_url: str) -> str:
    """A second database of the tests' own, for tests that need two."""
    return database_url(redis_url, int(urlsplit(redis_url).path.strip("/")) + 1)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the tests' database, flushed before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


# The app, in this process


class WebsocketClosed(Exception):
    """The server closed the socket, with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class ClosingWebsocket(TestWebsocketConnection):
    """Quart's test websocket, on which reading a socket the server closed raises
    `WebsocketClosed` with the close code.

    Quart 0.22 raised its own `WebsocketDisconnectError(code)`; Quart 0.23 tells nothing of a
    close (the read waits for good), so the tests read close codes through this on both.
    """

    async def _asgi_send(self, message: ASGISendEvent) -> None:
        if message["type"] != "websocket.close":
            await super()._asgi_send(message)
            return
        await self._receive_queue.put(WebsocketClosed(message.get("code", 1000)))
        await self.disconnect()  # as a server does once the app has closed

    async def __aexit__(self, exc_type: type, exc_value: BaseException, tb: TracebackType) -> None:
        await self.disconnect()
        await self._task
        while not self._receive_queue.empty():
            data = await self._receive_queue.get()
            if isinstance(data, Exception) and not isinstance(data, WebsocketClosed):
                raise data


@pytest.fixture(scope="session", autouse=True)
def websockets_that_tell_their_close() -> Iterator[None]:
    """Every test client's websockets raise `WebsocketClosed` with the code the server closed
    them with, whichever Quart runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(QuartClient, "websocket_connection_class", ClosingWebsocket)
        yield


@pytest_asyncio.fixture  # in pytest-asyncio's strict mode too
async def client(app: Quart, redis_client: redis.Redis) -> AsyncIterator[Client]:
    """A test client of the app while it serves (its thread pool and Redis clients open)."""
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def submit(client: Client, name: str, **kwargs: Any) -> dict[str, Any]:
    """POST a task that must be accepted (202); the accepted body."""
    response = await client.post("/api/tasks", json={"name": name, "kwargs": kwargs})
    assert response.status_code == 202, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def snapshot(client: Client, task_id: str) -> dict[str, Any]:
    """GET a task's snapshot (200)."""
    response = await client.get(f"/api/tasks/{task_id}")
    assert response.status_code == 200, await response.get_data(as_text=True)
    body: dict[str, Any] = await response.get_json()
    return body


async def snapshot_in(client: Client, task_id: str, *states: str) -> dict[str, Any]:
    """The task's snapshot once it is in one of `states`."""

    async def arrived() -> dict[str, Any] | None:
        body = await snapshot(client, task_id)
        return body if body["state"] in states else None

    return await wait_for_async(arrived, TIMEOUT, f"task {task_id} to be in {states}")


async def finished(client: Client, task_id: str) -> dict[str, Any]:
    """The snapshot once the task has ended."""
    return await snapshot_in(client, task_id, *FINAL)


async def error_of(response: Any) -> dict[str, str]:
    """The error of an error answer, checking its shape."""
    body = await response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    error: dict[str, str] = body["error"]
    return error


async def messages_until_closed(socket: Socket) -> tuple[list[dict[str, Any]], int]:
    """Every message the server sends, and the code it closes with."""
    received: list[dict[str, Any]] = []
    while True:
        try:
            received.append(await socket.receive_json())
        except WebsocketClosed as closed:
            return received, closed.code


# Workers


@pytest.fixture
def celery(app: Quart, redis_client: redis.Redis) -> Celery:
    """The app's Celery instance, as its Celery factory configured it, its Redis database
    flushed."""
    configured: Celery = app.extensions["celery"]
    return configured


@pytest.fixture
def thread_worker() -> ThreadWorker:
    """Start a real worker in a thread of this process: `with thread_worker(celery, pool=...)`
    (by default the bridge's async pool, "asyncio"; else Celery's "solo", "threads", ...);
    more options (`queues=[...]`) go to the worker."""

    @contextmanager
    def start(
        celery: Celery, pool: str = "asyncio", concurrency: int | None = None, **options: Any
    ) -> Iterator[WorkController]:
        with start_worker(
            celery,
            # Celery takes a pool's class too (the stubs say only its name).
            pool=AsyncPool if pool == "asyncio" else pool,  # type: ignore[arg-type]
            concurrency=concurrency or (DEFAULT_CONCURRENCY if pool == "asyncio" else 1),
            perform_ping_check=False,
            shutdown_timeout=STOP_TIMEOUT,
            **options,
        ) as worker:
            yield worker

    return start


@pytest.fixture(scope="session")
def worker_app() -> str:
    """What `celery -A` takes to start the app's worker: override it if yours is elsewhere."""
    return "worker"


@pytest.fixture(scope="session")
def asgi_app() -> str:
    """What `hypercorn` takes to serve the app: override it if yours is elsewhere."""
    return "asgi:app"


@pytest.fixture
def process_worker(
    celery: Celery,
    redis_url: str,
    tmp_path: Path,
    worker_app: str,
    pytestconfig: pytest.Config,
) -> Iterator[ProcessWorker]:
    """Start `celery -A <worker_app> worker` as a process, ready to take tasks when returned:
    `process_worker(pool="prefork", concurrency=2)`. By default (`pool="asyncio"`) it runs
    the pool a worker runs when its command names none, the bridge's async pool."""
    with ExitStack() as cleanup:

        def start(pool: str = "asyncio", concurrency: int | None = None) -> subprocess.Popen[bytes]:
            name = f"test-{pool}-{uuid.uuid4().hex[:8]}@%h"
            log = (tmp_path / f"worker-{pool}.log").open("wb")
            cleanup.callback(log.close)
            chosen = [] if pool == "asyncio" else ["--pool", pool]
            if concurrency is not None or pool != "asyncio":
                chosen += ["--concurrency", str(concurrency or 1)]
            process = start_process(
                [
                    *[sys.executable, "-m", "celery", "-A", worker_app, "worker"],
                    *chosen,
                    *["--hostname", name],
                    *["--loglevel", "INFO"],
                    *["--without-gossip", "--without-mingle"],
                ],
                redis_url,
                log,
                root=pytestconfig.rootpath,
            )
            cleanup.callback(stop_process_group, process)
            hostname = name.replace("%h", os.uname().nodename)

            def ready() -> bool:
                if process.poll() is not None:
                    log.flush()
                    output = Path(log.name).read_text(errors="replace")
                    raise RuntimeError(f"the worker exited with {process.returncode}:\n{output}")
                return bool(celery.control.ping(destination=[hostname], timeout=0.5))

            wait_for(ready, WORKER_START_TIMEOUT, f"worker {hostname} to answer a ping")
            return process

        yield start


# Servers


def start_process(
    command: list[str],
    redis_url: str,
    log: IO[bytes],
    env: Mapping[str, str] | None = None,
    *,
    root: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a command against `redis_url` (with more settings in `env`) from `root` (by
    default the working directory), in a session of its own."""
    return subprocess.Popen(
        command,
        cwd=root,
        env={**os.environ, "REDIS_URL": redis_url, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def free_port() -> int:
    """A port nothing listens on now, for a server the test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def answers_http(url: str) -> bool:
    """Whether a server answers a GET of `url` now (with any status)."""
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError):
        return False


def stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """Stop a process the tests started, and what it started: warm shutdown, then kill.

    The process leads a session of its own (`start_new_session`), so its group holds only it
    and its children, such as the pool processes of a prefork worker.
    """
    process.terminate()
    with suppress(subprocess.TimeoutExpired):
        process.wait(STOP_TIMEOUT)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@contextmanager
def serving(
    asgi_app: str,
    redis_url: str,
    log_dir: Path,
    settings: Mapping[str, str] | None = None,
    arguments: Sequence[str] = (),
    *,
    root: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`hypercorn <asgi_app>` from `root` on a free port (with more of hypercorn's
    `arguments`), logging to `log_dir/hypercorn-<port>.log`: the process and its URL, once it
    answers. Stopped, with what it started, when the block ends."""
    port = free_port()
    log_path = log_dir / f"hypercorn-{port}.log"
    with log_path.open("wb") as log:
        process = start_process(
            [
                *[sys.executable, "-m", "hypercorn", asgi_app],
                *["--bind", f"127.0.0.1:{port}", *arguments],
            ],
            redis_url,
            log,
            settings,
            root=root,
        )
        try:
            url = f"http://127.0.0.1:{port}"

            def answers() -> bool:
                assert process.poll() is None, log_path.read_text()
                return answers_http(url)

            wait_for(answers, START_TIMEOUT, "hypercorn to answer")
            yield process, url
        finally:
            stop_process_group(process)


@pytest.fixture
def start_server(
    redis_url: str, tmp_path: Path, asgi_app: str, pytestconfig: pytest.Config
) -> Iterator[Server]:
    """Start `hypercorn <asgi_app>` on a free port: its URL, once it answers. Stopped after.

    `start(redis_url, **settings)` serves against another Redis, with more settings;
    `start(arguments=["--workers", "2"])` passes hypercorn more arguments.
    """
    with ExitStack() as cleanup:

        def start(url: str | None = None, arguments: Sequence[str] = (), **settings: str) -> str:
            served = serving(
                asgi_app,
                url or redis_url,
                tmp_path,
                settings,
                arguments,
                root=pytestconfig.rootpath,
            )
            _, server = cleanup.enter_context(served)
            return server

        yield start


@pytest.fixture
def server_url(start_server: Server) -> str:
    """One `hypercorn <asgi_app>`, answering."""
    return start_server()


def http(
    method: str, url: str, body: object = None, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request over real HTTP (with more `headers`); the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_task(server: str, name: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Submit a task through `POST /api/tasks`; the status and the answer."""
    return http("POST", f"{server}/api/tasks", {"name": name, "kwargs": kwargs})


def accepted_task(server: str, name: str, **kwargs: Any) -> dict[str, Any]:
    """Submit a task that must be accepted (202); the answer."""
    status, accepted = post_task(server, name, **kwargs)
    assert status == 202, accepted
    return accepted


def task_in(server: str, task_id: str, states: tuple[str, ...]) -> dict[str, Any] | None:
    """The task's snapshot if it is in one of `states`, else None (for `wait_for`)."""
    task = http("GET", f"{server}/api/tasks/{task_id}")[1]
    return task if task["state"] in states else None

"""The workers' default pool: `async def` tasks side by side on one event loop per process.

Written here because no library does it for Celery 5 with a Redis broker: celery-aio-pool runs
one task at a time, aio-celery speaks only RabbitMQ and is not Celery, and Celery's own asyncio
pool (celery/celery#10634) is not merged. It is a Celery pool (`celery.concurrency.base.BasePool`,
like `celery/concurrency/thread.py`), so the worker, its consumer, Flower and the result
backend see nothing new.

The worker hands a pool Celery's tracer for each task (`celery.app.trace`): one synchronous
function that stores STARTED, sends the signals, calls the task, stores its result and hands
back what the worker acknowledges and reports. For an `async def` task this pool runs that
tracer in a greenlet on the pool's tracer thread. When the tracer reaches the task's body
(`ContextTask`), the body's coroutine goes to the process's one event loop and the greenlet
steps aside, so its thread goes on with other tasks' tracers; when the coroutine ends, the
greenlet resumes on its thread with the outcome. So:

- Celery's own tracer does a task's bookkeeping, as under prefork: results, states, signals,
  retries, events, acknowledgement;
- every blocking call it makes stays off the loop, on the tracer thread, and so does
  `update_state` called from a coroutine (`on_tracer_thread`), in order with the result;
- the threads are a fixed few, however many tasks are in flight (one for the tracers, one for
  the loop, a few for sync tasks, started as they are needed).

A sync task runs as on Celery's threads pool, in a bounded pool of threads of its own: never on
the loop, so one spinning the CPU does not hold up the coroutines (beyond the GIL's share).

`--concurrency` (`limit`) is the number of tasks in flight in the process, started in the order
received; with the bridge's prefetch multiplier of 1 the worker holds no more unacknowledged
messages than it can start. Time limits (`soft_time_limit`, `time_limit`, per task or from the
settings) are kept for `async def` tasks: the soft one raises `SoftTimeLimitExceeded` where the
coroutine awaits, the hard one cancels it and fails the task with `TimeLimitExceeded`. Sync
tasks have none here, as on the threads pool: `--pool=prefork` keeps them.

Shutting down: a warm shutdown starts nothing new and waits up to `shutdown_timeout` seconds
for what runs; a cold one (a second signal), or the end of that wait, cancels the coroutines
still running without acknowledging them, so the broker delivers them again.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import greenlet
from celery._state import _task_stack  # type: ignore[attr-defined]  # not in the stubs
from celery.concurrency.base import BasePool, apply_target
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.worker import state as worker_state
from celery.worker.request import Request

from quart_celery._broker.round_trips import RoundTrips
from quart_celery._worker import revoked
from quart_celery._worker.interrupts import Interruptible
from quart_celery.heap import FrozenHeap

T = TypeVar("T")
logger = logging.getLogger(__name__)

#: Tasks in flight per process where `--concurrency` is not given: as taskiq's
#: `--max-async-tasks`. An `async def` task in flight costs a coroutine and a greenlet, not a
#: process or a thread.
DEFAULT_CONCURRENCY = 100
#: Threads running sync tasks, at most.
SYNC_THREADS = 4
#: The most threads a worker process running this pool has, however many tasks are in flight:
#: these, the loop's, the worker's own (its consumer, timer, ...) and the bridge's cancel
#: listener.
MAX_THREADS = 20
#: How long a thread holds the GIL while others wait for it (Python's default: 5 ms). A sync
#: task spinning the CPU holds it that long each time, and the loop, the tracers and the
#: consumer wait that long after each of their Redis round trips: 100 async tasks of 0.2 s
#: beside two spinning sync tasks took 4.3 s; at 0.25 ms, about 1.4 s. It costs the spinning
#: tasks a few per cent, and nothing where no thread waits.
SWITCH_INTERVAL = 0.00025
#: A coroutine that runs this long without awaiting is reported: it held up every other task.
SLOW_STEP = 0.5
#: How long the cancelled coroutines get to clean up as the pool closes.
UNWIND_TIMEOUT = 5.0
#: How long a warm shutdown waits for the tasks in flight, by default.
SHUTDOWN_TIMEOUT = 60.0

#: The job whose body runs in this context (set for a coroutine on the loop).
_current_job: contextvars.ContextVar[_Job] = contextvars.ContextVar("quart_celery_job")


@dataclass(eq=False)
class _Outcome:
    """How a coroutine ended: its value, or its exception."""

    value: Any = None
    error: BaseException | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class _JobGreenlet(greenlet.greenlet):
    """The greenlet that runs one async task's tracer on a tracer thread."""

    job: _Job


@dataclass(eq=False)
class _Job:
    """One task handed to the pool, from its start to its end."""

    pool: AsyncPool
    target: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    callback: Callable[..., Any] | None
    accept_callback: Callable[..., Any] | None
    timeout_callback: Callable[..., Any] | None
    soft_timeout: float | None
    timeout: float | None
    is_async: bool
    tracer: _TracerThread | None = None
    greenlet: _JobGreenlet | None = None
    #: On the loop: the body's asyncio task, its interrupter and its timers.
    task: asyncio.Task[Any] | None = None
    interruptible: Interruptible[Any] | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    resumed: bool = False
    #: The task whose body the coroutine is, and its request (`await_on_loop`).
    task_and_request: tuple[Any, Any] = (None, None)
    #: Stopped by the worker (a cold shutdown, `revoke(terminate=True)`): nothing more of it
    #: reaches the worker.
    terminated: bool = False
    #: Made when the task is ended from outside its coroutine (its hard time limit,
    #: `terminate`), before the worker stores or reports that end: a stream's queued states
    #: (`quart_celery._worker.streams`) must not land after it.
    when_stopped: list[Callable[[], object]] = field(default_factory=list)

    def trace(self) -> None:
        """Run Celery's tracer, which calls the task's body (in this job's greenlet), unless
        the task was revoked before it started (`quart_celery._worker.revoked`)."""
        try:
            if self.terminated or self.pool.stopping:
                return  # never accepted: the broker delivers it again
            request = getattr(self.callback, "__self__", None)  # Celery's Request.on_success
            if isinstance(request, Request) and revoked.was_revoked(request):
                return
            apply_target(self.target, self.args, self.kwargs, self.ended, self.accept_callback)
        finally:
            self.pool.finished(self)

    def ended(self, outcome: Any) -> None:
        """Tell the worker how the task ended (Celery's callback), unless it stopped it."""
        if not self.terminated and self.callback is not None:
            self.callback(outcome)

    def terminate(self, signal: int | None = None) -> None:
        """Stop the task for good (Celery's `ApplyResult.terminate`, from the worker's thread):
        an `async def` one is cancelled where it awaits, its `finally` blocks and teardown
        run, and its tracer is never resumed; a sync one runs on, as on the threads pool, but
        its end is not reported. Either way its slot is free."""
        if self.terminated:
            return
        self.terminated = True
        self.stopped()
        if self.is_async and self.pool.loop.is_running():
            self.pool.loop.call_soon_threadsafe(self.cancel)
        if self.tracer is not None and not self.pool.terminated:
            self.tracer.inbox.put(self.unwind)
        self.pool.finished(self)

    def unwind(self) -> None:
        """Unwind the tracer of a stopped task, waiting for a coroutine that will not end (on
        the tracer's thread): Celery's tracer lets go of its request, reporting nothing."""
        current = self.greenlet
        if current is not None and current and not current.dead:
            current.throw(greenlet.GreenletExit)

    def start_coroutine(
        self, coroutine: Coroutine[Any, Any, Any], context: contextvars.Context
    ) -> None:
        """Start the body's coroutine on the loop, with its time limits (on the loop)."""
        if self.terminated or self.pool.terminated:
            coroutine.close()  # stopped before its body began: it never runs
            return
        loop = asyncio.get_running_loop()
        self.interruptible = Interruptible(
            coroutine, self.held_the_loop, SLOW_STEP, around_step=self.around_step
        )
        context.run(_current_job.set, self)
        self.task = loop.create_task(self.interruptible.run(), context=context)
        self.task.add_done_callback(self.coroutine_done)
        if self.soft_timeout:
            self.timers.append(loop.call_later(self.soft_timeout, self.soft_limit))
        if self.timeout:
            self.timers.append(loop.call_later(self.timeout, self.hard_limit))

    def coroutine_done(self, task: asyncio.Task[Any]) -> None:
        for timer in self.timers:
            timer.cancel()
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        self.resume(_Outcome(task.result()) if error is None else _Outcome(error=error))

    @property
    def around_step(self) -> tuple[Callable[[], object], Callable[[], object]] | None:
        """Make the task Celery's current one, with its request, while its coroutine runs a
        step (Celery keeps them per thread): `celery.current_task`, and the parent of the tasks
        it sends, are as under prefork."""
        task, request = self.task_and_request
        if task is None:
            return None

        def enter() -> None:
            _task_stack.push(task)
            task.request_stack.push(request)

        def leave() -> None:
            task.request_stack.pop()
            _task_stack.pop()

        return enter, leave

    def held_the_loop(self, seconds: float) -> None:
        """Say that this task's coroutine ran `seconds` without awaiting (on the loop)."""
        logger.warning(
            "%s[%s] held the event loop for %.2f s without awaiting: every other task in this "
            "worker process waited (a blocking call in a coroutine? await asyncio.to_thread(...))",
            self.args[0],
            self.args[1] if len(self.args) > 1 else "?",
            seconds,
        )

    def soft_limit(self) -> None:
        if self.timeout_callback is not None:
            self.timeout_callback(True, self.soft_timeout)
        assert self.interruptible is not None
        self.interruptible.interrupt(SoftTimeLimitExceeded(self.soft_timeout))

    def hard_limit(self) -> None:
        """Fail the task for good now, and cancel its coroutine."""
        request = self.args[1] if len(self.args) > 1 else "?"
        logger.error(
            "Hard time limit (%ss) exceeded for %s[%s]", self.timeout, self.args[0], request
        )
        self.stopped()
        self.resume(_Outcome(error=TimeLimitExceeded(self.timeout)))
        if self.interruptible is not None:
            self.interruptible.pending = None  # a cancellation now, not a soft limit
        if self.task is not None:
            self.task.cancel()

    def stopped(self) -> None:
        for call in self.when_stopped:
            try:
                call()
            except Exception:
                logger.exception("could not stop part of %s", self.args[:2])
        self.when_stopped.clear()

    def resume(self, outcome: _Outcome) -> None:
        """Hand `outcome` to the tracer waiting for it, once (from the loop)."""
        if self.resumed or self.terminated or self.pool.terminated:
            return
        self.resumed = True
        assert self.tracer is not None and self.greenlet is not None
        self.tracer.inbox.put(partial(self.greenlet.switch, outcome))

    def cancel(self) -> None:
        """Cancel the body's coroutine, never resuming its tracer (on the loop), once: a cold
        shutdown both stops each task (`terminate`) and cancels what runs (`_close`), and a
        second cancellation would cut short the clean-up the first one started (its `except`
        block's awaits)."""
        for timer in self.timers:
            timer.cancel()
        if self.task is not None and not self.task.cancelling():
            self.task.cancel()


class _TracerThread:
    """The thread that runs the tracers of async tasks, each in a greenlet of its own.

    One for the pool: every thread more that wants the GIL delays the worker's consumer thread
    after each of its round trips, and the consumer paces the whole worker (bench/async_tasks.py,
    1,000 tasks of 1 s: 2.29-2.37 s after the last send with one, 2.62-2.67 s with four).

    Its main greenlet takes work from `inbox`, in order: a job to start, or a waiting job's
    greenlet to resume (with its coroutine's outcome), or a call to make for a coroutine
    (`update_state`). A greenlet runs until its task's body is handed to the loop, or to its
    end; then the thread takes the next piece of work.
    """

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="task-tracer", daemon=True)
        self.thread.start()

    def start(self, job: _Job) -> None:
        job.tracer = self
        self.inbox.put(partial(self._begin, job))

    def stop(self) -> None:
        self.inbox.put(None)

    def _begin(self, job: _Job) -> None:
        job.greenlet = _JobGreenlet(job.trace)
        job.greenlet.job = job
        job.greenlet.switch()

    def _run(self) -> None:
        round_trips = RoundTrips()
        round_trips.install()
        while True:
            round_trips.wake()
            if round_trips.waiting:
                try:
                    work = self.inbox.get_nowait()
                except queue.Empty:
                    round_trips.flush()  # nothing else to do: send what the tracers wait on
                    continue
            else:
                try:
                    work = self.inbox.get(timeout=round_trips.next_wake())
                except queue.Empty:
                    continue  # a sleeper to wake
            if work is None:
                break
            try:
                work()
            except Exception:
                logger.exception("the task pool's tracer thread failed a piece of work")
            if round_trips.overdue():
                round_trips.flush()  # a steady stream of work would keep them waiting


class AsyncPool(BasePool):
    """Celery's pool for this bridge: see the module's docstring."""

    signal_safe = False
    body_can_be_buffer = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit: int = self.limit or DEFAULT_CONCURRENCY
        self.soft_timeout: float | None = self.options.get("soft_timeout")
        self.timeout: float | None = self.options.get("timeout")
        self.shutdown_timeout = SHUTDOWN_TIMEOUT
        self.loop = asyncio.new_event_loop()
        self.loop_thread: threading.Thread | None = None
        self.tracer: _TracerThread | None = None
        self.sync_threads = ThreadPoolExecutor(
            max_workers=min(SYNC_THREADS, self.limit), thread_name_prefix="sync-task"
        )
        # Re-entrant: Celery's cold shutdown stops tasks (`_Job.terminate`) from its signal
        # handler, on the consumer's thread, which may hold it in `on_apply`.
        self.lock = threading.RLock()
        self.running: set[_Job] = set()
        self.waiting: deque[_Job] = deque()
        self.idle = threading.Condition(self.lock)
        self.terminated = False
        #: Shutting down: nothing more starts.
        self.stopping = False
        self._async_tasks: dict[str, bool] = {}
        #: The sync tasks whose time limits this pool said it cannot keep.
        self._unlimited: set[str] = set()
        #: Start-up's heap, out of the garbage collector's full passes while the pool runs: one
        #: took 0.15 s, holding up every coroutine, as 500 tasks started at once.
        self.heap = FrozenHeap()

    # -- Celery's pool API ------------------------------------------------------------------

    def on_start(self) -> None:
        revoked.checked_by_the_pool = True
        for requests in (worker_state.active_requests, worker_state.reserved_requests):
            requests.__class__ = _SnapshotWeakSet
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self.heap.freeze()
        self.loop_thread = threading.Thread(target=self._run_loop, name="task-loop", daemon=True)
        self.loop_thread.start()
        self.tracer = _TracerThread()

    def on_apply(  # type: ignore[override]  # the stubs say (*args, **kwargs) -> None
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        timeout_callback: Callable[..., Any] | None = None,
        soft_timeout: float | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> _Job:
        args = tuple(args or ())
        job = _Job(
            pool=self,
            target=target,
            args=args,
            kwargs=kwargs or {},
            callback=callback,
            accept_callback=accept_callback,
            timeout_callback=timeout_callback,
            soft_timeout=soft_timeout or self.soft_timeout,
            timeout=timeout or self.timeout,
            is_async=self._is_async(args[0] if args else None),
        )
        with self.lock:
            if len(self.running) < self.limit:
                self.running.add(job)
            else:
                self.waiting.append(job)
                return job
        self._start(job)
        return job

    def on_stop(self) -> None:
        """Warm shutdown: start nothing more; wait for what runs, up to `shutdown_timeout`."""
        deadline = time.monotonic() + self.shutdown_timeout
        self.stopping = True
        try:
            with self.lock:
                self.waiting.clear()  # unacknowledged: the broker delivers them again
                while self.running and (left := deadline - time.monotonic()) > 0:
                    self.idle.wait(left)
                still_running = len(self.running)
        except BaseException:
            # A second signal (Celery's cold shutdown, raised here from its handler).
            self._close(cancel=True)
            raise
        if still_running:
            logger.warning(
                "%d task(s) still running after %ss: cancelled, to be delivered again",
                still_running,
                self.shutdown_timeout,
            )
        self._close(cancel=bool(still_running))

    def on_terminate(self) -> None:
        """Cold shutdown: cancel what runs, unacknowledged, so it is delivered again."""
        self.stopping = True
        with self.lock:
            self.waiting.clear()
        self._close(cancel=True)

    def terminate_job(self, pid: int, signal: int | None = None) -> None:
        """Celery's way to stop one task under prefork (kill its process): here every task
        shares the process, and Celery stops the task itself next (`_Job.terminate`)."""

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()  # type: ignore[misc]  # not in the stubs
        with self.lock:
            info.update(
                {
                    "max-concurrency": self.limit,
                    "in-flight": len(self.running),
                    "waiting": len(self.waiting),
                    "tracer-threads": 0 if self.tracer is None else 1,
                    "sync-threads": len(self.sync_threads._threads),
                }
            )
        return info

    @property
    def num_processes(self) -> int:
        return self.limit

    # -- Running jobs ---------------------------------------------------------------------

    def _is_async(self, name: str | None) -> bool:
        """Whether the task `name` is an `async def` one (its body a coroutine function)."""
        if name is None:
            return False
        known = self._async_tasks.get(name)
        if known is None:
            task = self.app.tasks.get(name) if self.app is not None else None
            known = task is not None and is_async_task(task)
            self._async_tasks[name] = known
        return known

    def _start(self, job: _Job) -> None:
        if job.is_async:
            assert self.tracer is not None, "the pool was not started"
            self.tracer.start(job)
        else:
            if (job.soft_timeout or job.timeout) and job.args[0] not in self._unlimited:
                self._unlimited.add(job.args[0])
                logger.warning(
                    "%s is a sync task with a time limit: the async pool runs sync tasks in "
                    "threads, which cannot be stopped, so the limit is not kept (run it with "
                    "--pool prefork, or have it call checkpoint())",
                    job.args[0],
                )
            self.sync_threads.submit(job.trace)

    def finished(self, job: _Job) -> None:
        """`job` has ended, or was stopped: start the next one waiting (from any thread)."""
        with self.lock:
            if job not in self.running:
                return
            self.running.discard(job)
            following = self.waiting.popleft() if self.waiting and not self.stopping else None
            if following is not None:
                self.running.add(following)
            elif not self.running:
                self.idle.notify_all()
        if following is not None:
            self._start(following)

    def _close(self, cancel: bool) -> None:
        """Stop the loop and the threads; with `cancel`, cancel the coroutines first."""
        if self.terminated:
            return
        revoked.checked_by_the_pool = False
        if cancel:
            self.terminated = True  # no tracer is resumed: their tasks are not acknowledged
            with self.lock:
                running = [job for job in self.running if job.is_async]
            done = threading.Event()

            def cancel_all() -> None:
                for job in running:
                    job.cancel()
                self.loop.call_soon(done.set)

            if self.loop.is_running():
                self.loop.call_soon_threadsafe(cancel_all)
                done.wait(5)
        self.terminated = True
        if self.tracer is not None:
            self.tracer.stop()
        self.sync_threads.shutdown(wait=not cancel, cancel_futures=True)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self.loop_thread is not None:
            self.loop_thread.join(5)
        self.heap.thaw()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                _cancel_remaining(self.loop)
            finally:
                self.loop.close()

    # -- Called from the task's body (ContextTask) -----------------------------------------

    def await_on_loop(
        self,
        job: _Job,
        coroutine: Coroutine[Any, Any, T],
        context: Any,
        task: Any = None,
        request: Any = None,
    ) -> T:
        """Run `coroutine` (the body of `task`, with `request`) on the loop, in `context`,
        while `job`'s greenlet steps aside."""
        job.task_and_request = (task, request)
        assert job.greenlet is not None and job.greenlet.parent is not None
        try:
            self.loop.call_soon_threadsafe(job.start_coroutine, coroutine, context)
        except RuntimeError:  # the loop is closed: the pool is shutting down
            coroutine.close()
            job.greenlet.parent.switch()  # parked: the task is not reported, nor acknowledged
        outcome = job.greenlet.parent.switch()
        assert isinstance(outcome, _Outcome)
        return outcome.unwrap()  # type: ignore[no-any-return]


class _SnapshotWeakSet(weakref.WeakSet[Any]):
    """A `WeakSet` that iterates over a snapshot of itself.

    The worker keeps its active and reserved requests in two of them and, with an event loop,
    `celery inspect active` iterates over them as they are (`celery/worker/pidbox.py`, `tset`):
    safe where only the consumer's thread changes them (prefork), but the tracer thread adds
    and removes requests as tasks start and end, and the inspection failed with "Set changed
    size during iteration". Their class is changed in place, as `task_accepted` and
    `task_ready` keep the sets' own methods.
    """

    def __iter__(self) -> Iterator[Any]:
        # Copied in one step, under the GIL (`data` is missing from the stubs).
        for reference in list(self.data):  # type: ignore[attr-defined]
            item = reference()
            if item is not None:
                yield item


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    """Let the tasks cancelled already unwind (their `except` and `finally` blocks run), then
    cancel the tasks left on `loop`; all within `UNWIND_TIMEOUT` seconds.

    The tasks a cold shutdown cancelled go first, and are never cancelled again: a second
    cancellation would cut short the clean-up they await, and so would cancelling the helper
    tasks that clean-up awaits meanwhile (`asyncio.wait_for` runs one: redis-py's every send
    does), which are tasks of their own on the loop.
    """
    deadline = time.monotonic() + UNWIND_TIMEOUT
    unwinding = [task for task in asyncio.all_tasks(loop) if task.cancelling()]
    if unwinding:
        loop.run_until_complete(asyncio.wait(unwinding, timeout=UNWIND_TIMEOUT))
    remaining = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in remaining:
        if not task.cancelling():
            task.cancel()
    if remaining:
        unwound = asyncio.gather(*remaining, return_exceptions=True)
        left = max(deadline - time.monotonic(), 0.1)
        with suppress(TimeoutError):  # what still runs then is cancelled by wait_for
            loop.run_until_complete(asyncio.wait_for(unwound, left))


def is_async_task(task: Any) -> bool:
    """Whether `task`'s body is a coroutine (or async generator) function, also behind
    Celery's `autoretry_for` wrapper (`_orig_run`) or any `functools.wraps` decorator."""
    run = inspect.unwrap(getattr(task, "_orig_run", None) or task.run)
    return inspect.iscoroutinefunction(run) or inspect.isasyncgenfunction(run)


def current_job() -> _Job | None:
    """The job whose tracer runs in this greenlet, if it is one of an `AsyncPool`'s."""
    current = greenlet.getcurrent()
    return current.job if isinstance(current, _JobGreenlet) else None


def current_job_on_loop() -> _Job | None:
    """The job whose coroutine runs here, on the pool's loop, if one does."""
    job = _current_job.get(None)
    if job is None:
        return None
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return None
    return job


def on_tracer_thread(call: Callable[[], object]) -> bool:
    """Make `call` on the tracer thread of the coroutine running here, after whatever that
    thread has to do already; False (and nothing done) where no coroutine of the pool runs.

    For blocking calls a task's coroutine makes (`update_state`): off the loop, and in order
    with the task's result.
    """
    job = current_job_on_loop()
    if job is None or job.tracer is None or job.pool.terminated:
        return False
    if job.resumed or job.terminated:
        # From a `finally` block after a hard time limit, or from a helper task the coroutine
        # left running: its task has ended, and its end is what clients must see.
        logger.warning("a state stored after its task ended was dropped (task %s)", job.args[1])
        return True
    job.tracer.inbox.put(call)
    return True

"""The base class of every task: it runs the task inside its web app's context.

`QuartCelery(celery)` makes this the base class of `celery`'s tasks, and
`QuartCelery.init_celery(app)` (which the app's Celery factory calls) binds them to `app`: from
then on every task runs inside that app's context, so `current_app`, its config and its
extensions work in tasks as they do in views, and `teardown_appcontext` handlers run after each
task. A Quart
app's context is async-only, so it is pushed and popped on the thread's own event loop
(`quart_celery._worker.event_loops`); a Flask app's is pushed as usual.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, ClassVar, TypeAlias

from celery import Celery, Task
from celery.app.task import Context
from celery.exceptions import Ignore
from flask import Flask
from quart import Quart

from quart_celery._broker import canvas
from quart_celery._worker import asyncio_pool, streams
from quart_celery._worker.cancellation import Running, TaskCancelled, cancellable
from quart_celery._worker.event_loops import call_outside_loop, run_coroutine

WebApp: TypeAlias = Quart | Flask
logger = logging.getLogger(__name__)

#: The requests of the tasks whose bodies run in this context, by task name: Celery keeps a
#: task's request per thread (or greenlet), and coroutines on the async pool's loop share one.
#: The pool pushes it around each step of a body's own coroutine (`_Job.around_step`); this
#: finds it in the asyncio tasks that coroutine starts, which copy its context.
_requests: contextvars.ContextVar[dict[str, Context]] = contextvars.ContextVar(
    "quart_celery_requests"
)


class ContextTask(Task[Any, Any]):
    """The base of every task: runs the task inside its web app's context.

    An `async def` task is awaited on the calling thread's own event loop (see
    `quart_celery._worker.event_loops`); a sync task runs on the thread itself, outside any loop,
    so it may call `asyncio.run` as usual. Teardown handlers run after every task, with its
    exception.
    """

    #: The app whose context tasks run in; `QuartCelery.init_celery` sets it.
    web_app: ClassVar[WebApp | None] = None
    #: Set here, not only in the settings: Celery copies a setting onto a task when the task is
    #: first used, which may be before the app is configured.
    track_started = True
    #: `apply_async` hands its call to a workflow being captured (`quart_celery._broker.canvas`).
    captures_workflows: ClassVar[bool] = True
    #: The options this task takes from the settings, not from its own declaration.
    options_from_settings: ClassVar[tuple[str, ...]] = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        app = self.web_app
        if app is None:
            raise RuntimeError(
                f"task {self.name!r} was called before the Celery factory bound it to an app "
                "(QuartCelery.init_celery(app))"
            )
        request = self.request_stack.top
        return call_outside_loop(partial(self._call_with_request, app, request, args, kwargs))

    @property
    def request(self) -> Context:
        """The current request of this task: the thread's, or, in a coroutine of the async
        pool, that coroutine's own."""
        if self.request_stack.top is None:
            found = _requests.get(None)
            if found is not None and self.name in found:
                return found[self.name]
        return super().request

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        """Store the task's state, as Celery does; from a coroutine on the async pool, off the
        loop (on its tracer thread, in order with the result), without waiting for it."""
        request = self.request
        store = partial(
            self.backend.store_result,
            task_id if task_id is not None else request.id,  # type: ignore[arg-type]
            # Stored later, on another thread: as it is now, whatever the task does with it.
            copy.deepcopy(meta) if asyncio_pool.current_job_on_loop() else meta,
            state,  # type: ignore[arg-type]  # Celery takes None, as its own update_state does
            request=request,
            **kwargs,
        )
        stream = streams.current_stream()
        if stream is not None and stream.task_id == request.id:
            # Behind the chunks sent before it, and, from a coroutine, without waiting.
            stream.then(store)
            if not asyncio_pool.current_job_on_loop():
                stream.wait()  # as Celery's own, stored when it returns
            return
        if not asyncio_pool.on_tracer_thread(store):
            store()

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Celery's `apply_async`; while the bridge captures a workflow in this context
        (`quart_celery._broker.canvas`), the call is kept to be sent with the rest of it."""
        capture = canvas.capturing()
        if capture is not None:
            options.update(task_id=task_id, link=link, link_error=link_error, shadow=shadow)
            return capture.send(self, args, kwargs, options)
        return super().apply_async(
            args, kwargs, task_id, producer, link, link_error, shadow, **options
        )

    @classmethod
    def bind(cls, app: Celery) -> Celery:
        """Bind the task to `app`, noting which options it leaves to the settings.

        Celery copies those settings (`task_acks_late`, ...) onto the task once, when it is
        first used; `take_settings_again` copies them anew once the app is configured.
        """
        if "options_from_settings" not in vars(cls):
            cls.options_from_settings = tuple(
                attribute
                for attribute, _ in cls.from_config
                if getattr(cls, attribute, None) is None
            )
        return super().bind(app)

    @classmethod
    def take_settings_again(cls, app: Celery) -> None:
        """Copy `app`'s current settings onto the options the task leaves to them."""
        for attribute in cls.options_from_settings:
            setattr(cls, attribute, None)
        cls.bind(app)

    def _call_with_request(
        self, app: WebApp, request: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run the body with the caller's request, also when it runs on the helper thread.

        Celery keeps the current request per thread: an eager call from async code, moved to
        the helper thread, must still see its id and retries in `self.request`.
        """
        stack = self.request_stack
        carried = request is not None and stack.top is not request
        if carried:
            stack.push(request)
        # A worker's run can be cancelled (`quart_celery._worker.cancellation`); a direct or
        # eager call cannot: no worker hears the request.
        task_id = None if request is None or request.is_eager else request.id
        # Its chunks (`send_chunk`) go to its stream, eager runs' too; a direct call's nowhere.
        stream = streams.StreamSlot(
            None if request is None else request.id,
            self.backend,
            app.config.get("STREAM_MAX_CHUNKS", streams.DEFAULT_MAX_CHUNKS),
        )
        try:
            with cancellable(task_id) as running:
                try:
                    job = asyncio_pool.current_job()
                    if job is not None and asyncio_pool.is_async_task(self):
                        # On the async pool: the body, in its app context, on the loop.
                        context = contextvars.copy_context()
                        context.run(_requests.set, {**_requests.get({}), self.name: request})
                        streams.enter(stream, context)
                        job.when_stopped.append(stream.abandon)
                        return job.pool.await_on_loop(
                            job,
                            _awaited_in_app_context(app, self.run, args, kwargs, running, stream),
                            context,
                            self,
                            request,
                        )
                    return _call_in_app_context(app, self.run, args, kwargs, running, stream)
                except (TaskCancelled, asyncio.CancelledError) as error:
                    if running is None or not running.cancelled.is_set():
                        if isinstance(error, asyncio.CancelledError):
                            # Not asked for (a library cancelled what it awaited): a failure
                            # like any other, not an exception that Celery's tracer and the
                            # worker take for a lost worker.
                            raise RuntimeError("the task's coroutine was cancelled") from error
                        raise
                # Ended as REVOKED, and said so to Flower and `celery events`; Ignore has the
                # worker acknowledge the message, so late acknowledgement does not hand it to
                # another worker.
                self.backend.mark_as_revoked(running.task_id, "cancelled", request=request)
                try:
                    self.send_event("task-revoked", terminated=True, signum=None, expired=False)
                except Exception:  # an event, not the task's end: that is stored already
                    logger.warning("could not send task-revoked for %s", running.task_id)
                raise Ignore()
        finally:
            if carried:
                stack.pop()


def _call_in_app_context(
    app: WebApp,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    running: Running | None = None,
    stream: streams.StreamSlot | None = None,
) -> Any:
    """Call a task's body inside `app`'s context, awaiting it if it is a coroutine (so that
    `running` can cancel it), streaming what it yields if it is a generator; its chunks are
    written before it returns."""
    context = contextvars.copy_context()
    if stream is not None:
        streams.enter(stream, context)
    pop_app_context = _push_app_context(app, context)
    try:
        result = context.run(function, *args, **kwargs)
        if inspect.isgenerator(result):
            result = context.run(streams.drain_generator, result)
        elif inspect.isasyncgen(result):
            result = streams.drain_async_generator(result)
        if inspect.isawaitable(result):
            awaited = _as_coroutine(result)
            result = run_coroutine(running.run(awaited) if running else awaited, context)
        if stream is not None:
            stream.finish(ended_well=True)
    except BaseException as error:
        if stream is not None:
            stream.finish(ended_well=False)
        pop_app_context(error)
        raise
    pop_app_context(None)
    return result


async def _awaited_in_app_context(
    app: WebApp,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    running: Running | None,
    stream: streams.StreamSlot | None = None,
) -> Any:
    """Await an `async def` task's body inside `app`'s context, pushed and popped (teardown)
    in the same coroutine, as a request's is; stream what it yields if it is an async
    generator; its chunks are written before it returns."""
    if isinstance(app, Quart):
        quart_context = app.app_context()
        await quart_context.push()
        pop: Callable[[BaseException | None], Awaitable[None]] = quart_context.pop
    else:
        flask_context = app.app_context()
        flask_context.push()

        async def pop(error: BaseException | None) -> None:
            flask_context.pop(error)

    try:
        produced = function(*args, **kwargs)
        if inspect.isasyncgen(produced):
            produced = streams.drain_async_generator(produced)
        awaited = _as_coroutine(produced)
        result = await (running.run(awaited) if running else awaited)
        if stream is not None:
            await stream.finish_on_loop(ended_well=True)
    except BaseException as error:
        if stream is not None:
            await stream.finish_on_loop(ended_well=False)
        await pop(error)
        raise
    await pop(None)
    return result


def _push_app_context(
    app: WebApp, context: contextvars.Context
) -> Callable[[BaseException | None], None]:
    """Push `app`'s context into `context`; return the function that pops it.

    Quart's app context is async-only, so it is pushed and popped on this thread's loop; both
    must happen in the same `contextvars.Context` as the task body for `current_app` to work.
    """
    if isinstance(app, Quart):
        quart_context = app.app_context()
        run_coroutine(quart_context.push(), context)
        return lambda error: run_coroutine(quart_context.pop(error), context)
    flask_context = app.app_context()
    context.run(flask_context.push)
    return lambda error: context.run(flask_context.pop, error)


def _as_coroutine(awaitable: Awaitable[Any]) -> Coroutine[Any, Any, Any]:
    """The coroutine a loop can run for any awaitable a task returned: a coroutine itself, so
    that one cancelled before it starts can be closed (`Running.run`), where a wrapper would
    leave it to warn "never awaited"."""
    if inspect.iscoroutine(awaitable):
        return awaitable
    return _awaiting(awaitable)


async def _awaiting(awaitable: Awaitable[Any]) -> Any:
    return await awaitable

"""The HTML pages: a form that submits `simple_task` (or streams its message word by word with
`stream_text`) and one that submits a chord of `square`s and `total`, a task's result page and
a workflow's."""

from __future__ import annotations

from celery import chord
from quart import Blueprint, render_template, request, url_for
from quart_celery import TaskNotFound, WorkflowNotFound, limits_submissions, queue, watch_ticket
from quart_schema import hide

from quart_app.forms import message_form, sum_of_squares_form
from quart_app.tasks import simple_task, square, stream_text, total

blueprint = Blueprint("pages", __name__)
#: Seconds between the words the "Stream it" button's task streams: slow enough to watch.
STREAM_DELAY = 0.2


@blueprint.get("/")
@hide
async def index() -> str:
    """The forms."""
    return await render_template(
        "index.html", form=message_form(), chord_form=sum_of_squares_form()
    )


@blueprint.post("/")
@hide
@limits_submissions
async def submit_message() -> tuple[str, int]:
    """Submit `simple_task` with the message (or, from the "Stream it" button, `stream_text`);
    show the forms again with the new task's id."""
    posted = await request.form
    form = message_form(posted)
    if not form.validate():
        return await render_template("index.html", form=form, chord_form=sum_of_squares_form()), 400
    if "stream" in posted:
        task_id = await queue.submit(stream_text, text=form.message.data, delay=STREAM_DELAY)
    else:
        task_id = await queue.submit(simple_task, message=form.message.data)
    return await render_template(
        "index.html",
        form=message_form(),
        chord_form=sum_of_squares_form(),
        task_id=task_id,
        result_url=url_for("pages.result", task_id=task_id),
    ), 200


@blueprint.post("/workflows")
@hide
@limits_submissions
async def submit_sum_of_squares() -> tuple[str, int]:
    """Submit a chord that squares 1 to `count` side by side, then adds the squares up; show
    the forms again with the new workflow's id."""
    chord_form = sum_of_squares_form(await request.form)
    if not chord_form.validate():
        return await render_template("index.html", form=message_form(), chord_form=chord_form), 400
    count = chord_form.count.data
    assert count is not None  # validated: required, and within its bounds
    # `queue.submit` checks each task's arguments; how many tasks is the form's to bound.
    squares = [square.s(x=number) for number in range(1, count + 1)]
    workflow_id = await queue.submit(chord(squares, total.s()))
    return await render_template(
        "index.html",
        form=message_form(),
        chord_form=sum_of_squares_form(),
        workflow_id=workflow_id,
        workflow_url=url_for("pages.workflow", workflow_id=workflow_id),
    ), 200


@blueprint.get("/result/<task_id>")
@hide
async def result(task_id: str) -> tuple[str, int]:
    """The task's state and result; a 404 page for an id never submitted."""
    try:
        task = await queue.look_up(task_id)
    except TaskNotFound:
        return await render_template("not_found.html", kind="task", missing=task_id), 404
    return await render_template("task_result.html", task=task, ticket=watch_ticket(task.id)), 200


@blueprint.get("/workflows/<workflow_id>")
@hide
async def workflow(workflow_id: str) -> tuple[str, int]:
    """The workflow's state, counts, tasks and result; a 404 page for an id never submitted."""
    try:
        found = await queue.look_up_workflow(workflow_id)
    except WorkflowNotFound:
        return await render_template("not_found.html", kind="workflow", missing=workflow_id), 404
    return await render_template(
        "workflow_result.html", workflow=found, ticket=watch_ticket(found.id)
    ), 200

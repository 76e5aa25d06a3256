"""The HTML pages: a form that submits `simple_task`, and a task's result page."""

from __future__ import annotations

from quart import Blueprint, render_template, request, url_for
from quart_celery import TaskNotFound, limits_submissions, queue, watch_ticket
from quart_schema import hide

from quart_app.forms import message_form
from quart_app.tasks import simple_task

blueprint = Blueprint("pages", __name__)


@blueprint.get("/")
@hide
async def index() -> str:
    """The form."""
    return await render_template("index.html", form=message_form())


@blueprint.post("/")
@hide
@limits_submissions
async def submit_message() -> tuple[str, int]:
    """Submit `simple_task` with the message; show the form again with the new task's id."""
    form = message_form(await request.form)
    if not form.validate():
        return await render_template("index.html", form=form), 400
    task_id = await queue.submit(simple_task, message=form.message.data)
    return await render_template(
        "index.html",
        form=message_form(),
        task_id=task_id,
        result_url=url_for("pages.result", task_id=task_id),
    ), 200


@blueprint.get("/result/<task_id>")
@hide
async def result(task_id: str) -> tuple[str, int]:
    """The task's state and result; a 404 page for an id never submitted."""
    try:
        task = await queue.look_up(task_id)
    except TaskNotFound:
        return await render_template("not_found.html", task_id=task_id), 404
    return await render_template("task_result.html", task=task, ticket=watch_ticket(task.id)), 200

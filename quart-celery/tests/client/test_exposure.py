"""Exposing a task: one declaration beside it makes it part of the JSON API.

The task below is declared here, in this test module, and nowhere else: no schema, list or
name is written anywhere else, yet the API accepts it, checks its arguments and documents it.
"""

from __future__ import annotations

from typing import Annotated, Any, Self

import pytest
from celery import Celery
from pydantic import Field, model_validator
from quart.typing import TestClientProtocol as Client

from quart_celery import ArgumentRules, expose
from quart_celery._client.exposure import Declaration, resolve
from quart_celery.testing import ThreadWorker, error_of, finished, submit
from tests.probe_app import celery

Side = Annotated[int, Field(ge=1, le=4096, description="pixels")]


class AtMostAMegapixel(ArgumentRules):
    """`width * height` may be at most 1,000,000 pixels."""

    width: int
    height: int

    @model_validator(mode="after")
    def at_most_a_megapixel(self) -> Self:
        """Refuse an image larger than a megapixel."""
        if self.width * self.height > 1_000_000:
            raise ValueError(f"{self.width}x{self.height} is more than a megapixel")
        return self


@expose(rules=AtMostAMegapixel)
@celery.task(name="tests.resize_image")
def resize_image(
    path: Annotated[str, Field(min_length=1)], width: Side, height: Side = 600, sharp: bool = False
) -> str:
    """Resize the image at `path` (a probe: it only says what it would do)."""
    return f"{path} at {width}x{height}{' sharpened' if sharp else ''}"


@expose
@celery.task(name="tests.no_arguments_needed")
def no_arguments_needed(greeting: str = "hello") -> str:
    """A task whose every argument has a default."""
    return greeting


async def test_a_task_declared_here_is_accepted_and_runs_with_its_defaults(
    client: Client, thread_worker: ThreadWorker
) -> None:
    accepted = await submit(client, "tests.resize_image", path="a.png", width=800)
    with thread_worker(celery):
        done = await finished(client, accepted["id"])
    assert (done["state"], done["result"]) == ("SUCCESS", "a.png at 800x600")


async def test_a_task_with_no_required_argument_may_be_sent_without_kwargs(
    client: Client, thread_worker: ThreadWorker
) -> None:
    response = await client.post("/api/tasks", json={"name": "tests.no_arguments_needed"})
    assert response.status_code == 202
    with thread_worker(celery):
        done = await finished(client, (await response.get_json())["id"])
    assert done["result"] == "hello"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"width": 800}, "kwargs.path: Field required"),
        ({"path": "a.png", "width": 0}, "kwargs.width: Input should be greater than or equal to 1"),
        ({"path": "a.png", "width": "800"}, "kwargs.width: Input should be a valid integer"),
        ({"path": "a.png", "width": 8, "sharp": "yes"}, "kwargs.sharp"),
        ({"path": "a.png", "width": 8, "depth": 3}, "kwargs.depth: Extra inputs are not permitted"),
        ({"path": "a.png", "width": 4000, "height": 4000}, "kwargs: 4000x4000 is more than a"),
    ],
)
async def test_wrong_arguments_are_422_naming_the_field(
    client: Client, kwargs: dict[str, Any], field: str
) -> None:
    response = await client.post(
        "/api/tasks", json={"name": "tests.resize_image", "kwargs": kwargs}
    )
    assert response.status_code == 422
    error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(field), error["message"]


async def test_it_is_documented_in_the_openapi_document(client: Client) -> None:
    doc = await (await client.get("/openapi.json")).get_json()
    schema = doc["paths"]["/api/tasks"]["post"]["requestBody"]["content"]["application/json"]
    mapping = schema["schema"]["discriminator"]["mapping"]
    assert mapping["tests.resize_image"] == "#/components/schemas/TestsResizeImageRequest"
    schemas = doc["components"]["schemas"]
    request = schemas["TestsResizeImageRequest"]
    assert request["description"].startswith("A run of `tests.resize_image`. Resize the image")
    kwargs = schemas["TestsResizeImageKwargs"]
    assert kwargs["description"] == "`width * height` may be at most 1,000,000 pixels."
    assert kwargs["required"] == ["path", "width"]
    assert kwargs["properties"]["width"] == {
        "description": "pixels",
        "maximum": 4096,
        "minimum": 1,
        "title": "Width",
        "type": "integer",
    }
    assert kwargs["properties"]["height"]["default"] == 600
    assert kwargs["properties"]["sharp"] == {"default": False, "title": "Sharp", "type": "boolean"}
    # A task whose arguments all have defaults needs no kwargs.
    assert schemas["TestsNoArgumentsNeededRequest"]["required"] == ["name"]


def test_expose_goes_above_celerys_decorator() -> None:
    def plain(message: str) -> str:
        return message

    with pytest.raises(TypeError, match=r"put it above @celery.task"):
        expose(plain)  # type: ignore[call-overload]


@pytest.fixture
def other_celery() -> Celery:
    """A Celery app of the test's own, so that a task the API refuses is seen by no app."""
    return Celery("other", set_as_current=False)


def test_a_task_the_api_cannot_check_is_refused_when_the_app_is_built(
    other_celery: Celery,
) -> None:
    @other_celery.task(name="star_args")
    def star_args(*names: str) -> None:
        """Takes any number of positional arguments."""

    @other_celery.task(name="no_hint")
    def no_hint(count) -> None:  # type: ignore[no-untyped-def]
        """Has an argument without a type hint."""

    @other_celery.task(name="other_fields")
    def other_fields(width: int) -> None:
        """Takes `width`, but not the `height` of the rules."""

    class NeedsAHeight(ArgumentRules):
        """Reads `height`."""

        height: int

    for declared, problem in [
        (Declaration(star_args, None), "'names' is variadic positional, and an exposed task"),
        (Declaration(no_hint, None), "argument 'count' has no type hint"),
        (Declaration(other_fields, NeedsAHeight), r"read \['height'\], which it does not take"),
    ]:
        with pytest.raises(TypeError, match=problem):
            resolve([declared])


def test_rules_must_be_argument_rules() -> None:
    with pytest.raises(TypeError, match="subclass of ArgumentRules"):
        expose(rules=dict)  # type: ignore[arg-type]


def test_one_task_declared_twice_is_exposed_once_and_two_of_one_name_are_refused(
    other_celery: Celery,
) -> None:
    def greet(name: str) -> str:
        """Greets."""
        return f"hello, {name}"

    # A module run twice (an example read out of the docs, say): Celery gives the name's task
    # again, and it is one exposed task.
    first = other_celery.task(name="greet")(greet)
    again = other_celery.task(name="greet")(greet)
    exposed = resolve([Declaration(first, None), Declaration(again, None)])
    assert list(exposed.by_name) == ["greet"]
    other = Celery("another", set_as_current=False).task(name="greet")(greet)
    with pytest.raises(TypeError, match="two exposed tasks are both named 'greet'"):
        resolve([Declaration(first, None), Declaration(other, None)])

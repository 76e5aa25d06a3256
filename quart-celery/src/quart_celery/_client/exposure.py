"""Exposing a task over HTTP: one declaration beside the task, everything else derived from it.

    @expose
    @celery.task(name="resize_image")
    def resize_image(path: str, width: Annotated[int, Field(ge=1, le=4096)] = 800) -> str:
        ...

The keyword arguments a client may send are validated against a model made from the task's own
signature: each parameter's type hint, with `Annotated[..., Field(...)]` for bounds, and its
default. Rules across several arguments go in an `ArgumentRules` model given as
`@expose(rules=...)`. From these declarations come the JSON API's request model (one variant
per task, told apart by `name`), its allow-list (no other task can be started over HTTP) and
its OpenAPI document: no name, default or list written twice.

`@expose` goes above `@celery.task` and returns the task unchanged. It reads nothing at import:
the tasks are looked at when the app is built (`exposed_tasks()`), once Celery has made them.

`queue.submit` checks the arguments of any task, exposed or not, against the same declarations
(`check_arguments`), so that a call from a route of yours that cannot fit fails in the route
(422), not later in the worker.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, Union, overload
from weakref import WeakKeyDictionary

from celery import Task
from celery.local import Proxy
from pydantic import (
    BaseModel,
    Field,
    PydanticSchemaGenerationError,
    RootModel,
    ValidationError,
    create_model,
)

from quart_celery.errors import InvalidArguments
from quart_celery.schemas import Strict

TaskT = TypeVar("TaskT", bound=Task[Any, Any])


class ArgumentRules(Strict):
    """The base of a model of rules across a task's arguments, for `@expose(rules=...)`.

    Declare the fields the rules read (plain types do: the task's signature gives each field
    its type, bounds and default) and each rule as a pydantic `model_validator(mode="after")`
    that raises `ValueError` with a sentence for the client. Say in the docstring what the
    rules are: the OpenAPI document gives it to clients, since JSON Schema cannot state them.
    """


@dataclass(frozen=True)
class Declaration:
    """A task declared with `@expose`, as declared (Celery may not have made the task yet)."""

    task: Task[Any, Any]
    rules: type[ArgumentRules] | None


@dataclass(frozen=True)
class ExposedTask:
    """A task the JSON API may start, with the models its runs are validated against."""

    name: str
    task: Task[Any, Any]
    #: Its keyword arguments, from its signature (and its rules).
    arguments: type[BaseModel]
    #: A run of it: `{"name": <its name>, "kwargs": <arguments>}`.
    request: type[BaseModel]


@dataclass(frozen=True)
class ExposedTasks:
    """Every exposed task, by name, and the model of a request to run any one of them."""

    by_name: Mapping[str, ExposedTask]
    #: `{"name", "kwargs"}` for any exposed task, told apart by `name` (a RootModel).
    request: type[RootModel[Any]]


_declarations: list[Declaration] = []
_resolved: ExposedTasks | None = None


@dataclass(frozen=True)
class SignatureCheck:
    """What `check_arguments` reads off a task once: its signature, and the model of its
    arguments made from it (None where the signature cannot be checked beyond its parameters'
    names: `*args`, `**kwargs`, or a hint pydantic cannot check)."""

    signature: inspect.Signature
    model: type[BaseModel] | None


_signature_checks: WeakKeyDictionary[Task[Any, Any], SignatureCheck] = WeakKeyDictionary()


@overload
def expose(task: TaskT, /) -> TaskT: ...
@overload
def expose(*, rules: type[ArgumentRules] | None = None) -> Callable[[TaskT], TaskT]: ...
def expose(
    task: TaskT | None = None, /, *, rules: type[ArgumentRules] | None = None
) -> TaskT | Callable[[TaskT], TaskT]:
    """Let clients start `task` over HTTP, with its arguments checked against its signature.

    `@expose` or `@expose(rules=SomeRules)`, above `@celery.task(...)`; returns the task as it is.
    """

    if rules is not None and not (isinstance(rules, type) and issubclass(rules, ArgumentRules)):
        raise TypeError(f"rules must be a subclass of ArgumentRules, not {rules!r}")

    def declare(task: TaskT) -> TaskT:
        # `type()`, not `isinstance()`: asking a Celery proxy its class would make the task now.
        if not (issubclass(type(task), Proxy) or isinstance(task, Task)):
            raise TypeError(
                f"@expose takes a Celery task, not {task!r}: put it above @celery.task(...)"
            )
        global _resolved
        if not any(declared.task is task for declared in _declarations):
            _declarations.append(Declaration(task, rules))
            _resolved = None
        return task

    return declare if task is None else declare(task)


def exposed_tasks() -> ExposedTasks:
    """Every task declared with `@expose`, with its models (made once, then kept)."""
    global _resolved
    if _resolved is None:
        _resolved = resolve(_declarations)
    return _resolved


def check_arguments(
    task: Task[Any, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    given_result: bool = False,
) -> None:
    """`InvalidArguments` (422) unless a run of `task` with these arguments fits its declared
    ones: its parameters, their type hints and bounds, and its rules where it is exposed.

    Types are strict, as over HTTP: `"5"` is no `int`, and a tuple is no `list`. A parameter
    without a hint takes anything. With `given_result` (a step of a workflow given the result
    before it as its first argument), that argument is taken as given, and not checked.
    """
    if isinstance(task, Proxy):
        task = task._get_current_object()
    check = _signature_checks.get(task)
    if check is None:
        signature = inspect.signature(task.run)
        check = _signature_checks[task] = SignatureCheck(
            signature, _signature_model(task, signature)
        )
    given = (_GIVEN,) if given_result else ()
    try:
        bound = check.signature.bind(*given, *args, **kwargs)
    except TypeError as error:
        raise InvalidArguments(task.name, f"{error}.") from None
    exposed = exposed_tasks().by_name.get(task.name)
    model = exposed.arguments if exposed is not None else check.model
    if model is None:
        return
    arguments = dict(bound.arguments)
    given_name = next((name for name, value in arguments.items() if value is _GIVEN), None)
    arguments.pop(given_name, None)  # type: ignore[arg-type]  # None is no key: nothing popped
    try:
        model.model_validate(arguments)
    except ValidationError as error:
        problems = [
            problem
            for problem in error.errors()
            if not (problem["type"] == "missing" and problem["loc"] == (given_name,))
        ]
        if not problems:
            return
        first = problems[0]
        field = ".".join(str(part) for part in first["loc"]) or "arguments"
        problem = first["msg"].removeprefix("Value error, ")
        raise InvalidArguments(task.name, f"{field}: {problem}.") from None


#: Stands for the result a workflow's step is given, where its arguments are checked.
_GIVEN = object()


def _signature_model(task: Task[Any, Any], signature: inspect.Signature) -> type[BaseModel] | None:
    """The model of a task's arguments from its `signature` alone (a parameter without a hint
    takes anything); None where it has `*args` or `**kwargs`, or a hint pydantic cannot check."""
    try:
        hints = typing.get_type_hints(task.run, include_extras=True)
    except (NameError, TypeError):  # a hint that names what the module does not have
        hints = {}
    fields: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            return None
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints.get(parameter.name, Any), default)
    try:
        model: type[BaseModel] = create_model(
            f"{_model_name(task.name, set())}Arguments", __base__=Strict, **fields
        )
    except PydanticSchemaGenerationError:
        return None
    return model


def resolve(declarations: list[Declaration]) -> ExposedTasks:
    """Look at each declared task, now that Celery has made it, and derive the models.

    `TypeError` for a task the API cannot take: one with `*args` or `**kwargs`, an argument
    without a type hint, rules that read an argument it does not take, or a name taken twice.
    """
    by_name: dict[str, ExposedTask] = {}
    model_names: set[str] = set()
    for declared in declarations:
        name = declared.task.name
        if name in by_name:
            if _same_task(by_name[name].task, declared.task):
                continue  # Celery gave the name's task again: its module was run twice
            raise TypeError(f"two exposed tasks are both named {name!r}")
        model_name = _model_name(name, model_names)
        arguments = _arguments_model(declared.task, name, model_name, declared.rules)
        request = _request_model(declared.task, name, model_name, arguments)
        by_name[name] = ExposedTask(name, declared.task, arguments, request)
        model_names.add(model_name)
    return ExposedTasks(by_name, _union_model([task.request for task in by_name.values()]))


def _same_task(one: Task[Any, Any], other: Task[Any, Any]) -> bool:
    """Whether two declared tasks (Celery's proxies, or tasks) are one registered task."""
    evaluated = [
        task._get_current_object() if isinstance(task, Proxy) else task for task in (one, other)
    ]
    return evaluated[0] is evaluated[1]


def _arguments_model(
    task: Task[Any, Any], name: str, model_name: str, rules: type[ArgumentRules] | None
) -> type[BaseModel]:
    """The model of the task's keyword arguments: its parameters' hints and defaults."""
    function = task.run  # for `bind=True` tasks, bound: `self` is not an argument
    hints = typing.get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise TypeError(
                f"task {name!r}: argument {parameter.name!r} is {parameter.kind.description}, "
                "and an exposed task takes named arguments only"
            )
        if parameter.name not in hints:
            raise TypeError(
                f"task {name!r}: argument {parameter.name!r} has no type hint, and the API "
                "checks every argument against its hint"
            )
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (hints[parameter.name], default)
    if rules is not None:
        unknown = set(rules.model_fields) - set(fields)
        if unknown:
            raise TypeError(
                f"the rules {rules.__name__} of task {name!r} read {sorted(unknown)}, "
                "which it does not take"
            )
    if rules is None:
        bases: tuple[type[BaseModel], ...] = (Strict,)
    else:
        # The signature's model comes after the rules, so that its fields come first, in the
        # signature's order, and the fields given again here override the rules' plain types.
        bases = (rules, create_model(f"{model_name}Signature", __base__=Strict, **fields))
    model: type[BaseModel] = create_model(
        f"{model_name}Kwargs",
        __base__=bases,
        __doc__=inspect.getdoc(rules) if rules else f"The arguments of `{name}`.",
        **fields,
    )
    return model


def _request_model(
    task: Task[Any, Any], name: str, model_name: str, arguments: type[BaseModel]
) -> type[BaseModel]:
    """The model of a run of the task: its name, and its arguments (`{}` if none is required)."""
    required = any(field.is_required() for field in arguments.model_fields.values())
    kwargs: Any = (arguments, ...) if required else (arguments, Field(default_factory=arguments))
    summary = (inspect.getdoc(task) or "").split("\n", 1)[0]
    only_this_name: Any = Literal[name]
    model: type[BaseModel] = create_model(
        f"{model_name}Request",
        __base__=Strict,
        __doc__=f"A run of `{name}`. {summary}".strip(),
        name=(only_this_name, ...),
        kwargs=kwargs,
    )
    return model


def _union_model(requests: list[type[BaseModel]]) -> type[RootModel[Any]]:
    """One model for a run of any of the tasks, told apart by `name` (their discriminator)."""
    root: Any = (
        Annotated[Union[tuple(requests)], Field(discriminator="name")]  # noqa: UP007
        if requests
        else _NoTask
    )
    model: type[RootModel[Any]] = create_model(
        "TaskRequest",
        __base__=RootModel[Any],
        __doc__="A task to run: its name, and its keyword arguments as that task declares them.",
        root=(root, ...),
    )
    return model


class _NoTask(Strict):
    """A run of a task, when none is exposed: every name is unknown."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


def _model_name(task_name: str, taken: set[str]) -> str:
    """A class name for the task's models: `progress_task` is `ProgressTask`, unique."""
    words = [word for word in re.split(r"[^0-9A-Za-z]+", task_name) if word]
    base = "".join(word[:1].upper() + word[1:] for word in words) or "Task"
    if base[0].isdigit():
        base = f"Task{base}"
    name, number = base, 2
    while name in taken:
        name, number = f"{base}{number}", number + 1
    return name

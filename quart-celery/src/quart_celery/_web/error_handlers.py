"""The one place where every error becomes JSON.

Every error answer, whatever raised it, has the body
`{"error": {"code": "<stable code>", "message": "<a sentence for a person>"}}`: an `APIError`
as it says, the errors of request validation and of Quart itself by their kind, and anything
unexpected as a 500 whose traceback goes to the log.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from quart import Quart, Request, Response, current_app, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from quart_celery.errors import APIError


class JSONErrorsRequest(Request):
    """Quart's request, whose malformed JSON body raises our error rather than a bare 400."""

    async def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """The parsed body; 400 also for bytes that are not text, or nesting too deep to parse."""
        try:
            return await super().get_json(force, silent, cache)
        except (UnicodeError, LookupError, RecursionError) as error:
            self.on_json_loading_failed(error)

    def on_json_loading_failed(self, error: Exception) -> Any:
        """Answer 400 with what the JSON parser said."""
        raise APIError(400, "invalid_json", f"The request body is not valid JSON: {error}.")


def register_error_handlers(app: Quart) -> None:
    """Answer every error with the JSON body, from this one place."""
    app.request_class = JSONErrorsRequest
    app.register_error_handler(APIError, _api_error)
    app.register_error_handler(RequestSchemaValidationError, _invalid_request)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)


def error_response(status: int, code: str, message: str) -> tuple[Response, int]:
    """The JSON answer for an error."""
    return jsonify({"error": {"code": code, "message": message}}), status


async def _api_error(error: APIError) -> tuple[Response, int]:
    """Our own errors, as they say."""
    response, status = error_response(error.status, error.code, error.message)
    response.headers.update(error.headers)
    return response, status


async def _invalid_request(error: RequestSchemaValidationError) -> tuple[Response, int]:
    """422, naming the first field that is wrong and what is wrong with it."""
    cause = error.validation_error
    if not isinstance(cause, ValidationError) or not cause.errors():
        return error_response(422, "invalid_request", str(cause))
    problems = cause.errors()
    positional = [
        problem
        for problem in problems
        if problem["type"] == "extra_forbidden"
        and problem["loc"][-1:] == ("args",)
        and len(problem["loc"]) <= 2  # at the top of the body (after a task's name)
    ]
    if positional:
        message = "args: positional arguments are not taken: give each by name in kwargs."
        return error_response(422, "invalid_request", message)
    first = problems[0]
    if first["type"] == "union_tag_not_found":
        return error_response(422, "invalid_request", "name: Field required.")
    if first["type"] == "union_tag_invalid":
        allowed = first.get("ctx", {}).get("expected_tags", "")
        name = first.get("ctx", {}).get("tag", "")
        return error_response(
            422, "unknown_task", f"There is no task {name!r} to run; known are {allowed}."
        )
    # A discriminated union puts the task's name first in the location: it is not a field.
    location = [str(part) for part in first["loc"]]
    if len(location) > 1 and first["loc"][0] not in ("name", "kwargs"):
        location = location[1:]
    field = ".".join(location) or "body"
    problem = first["msg"].removeprefix("Value error, ")
    return error_response(422, "invalid_request", f"{field}: {problem}.")


async def _http_error(error: HTTPException) -> tuple[Response, int]:
    """The HTTP errors Quart raises itself: unknown route, wrong method, body too large."""
    status = error.code or 500
    code = re.sub(r"\W+", "_", (error.name or "error").lower()).strip("_")
    response, status = error_response(status, code, error.description or error.name or "Error.")
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response, status


async def _unexpected_error(error: Exception) -> tuple[Response, int]:
    """500 without the traceback, which goes to the log."""
    current_app.logger.exception("unexpected error", exc_info=error)
    return error_response(500, "internal_error", "The server failed to answer; it is logged.")

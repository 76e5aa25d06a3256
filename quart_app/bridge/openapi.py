"""The OpenAPI document at `/openapi.json`, and its interactive page at `/docs` (quart-schema).

The document is made from the same models that validate requests and answers. quart-schema
leaves request bodies optional in it, while the API refuses a request without one (schemathesis
noted the difference); here every documented body is marked required.
"""

from __future__ import annotations

from typing import Any

from quart import Quart
from quart_schema import QuartSchema
from quart_schema.openapi import OpenAPIProvider
from quart_schema.typing import Model
from quart_schema.validation import DataSource


class RequiredBodies(OpenAPIProvider):
    """quart-schema's document, with every request body that a route validates required."""

    def build_request_body(
        self, model: type[Model], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The body as quart-schema builds it, marked required."""
        body, components = super().build_request_body(model, source)
        return {**body, "required": True}, components


def init_app(app: Quart) -> None:
    """Serve the document and its page."""
    QuartSchema(
        app,
        info={"title": "quart_app", "version": "0.1.0"},
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=RequiredBodies,
    )

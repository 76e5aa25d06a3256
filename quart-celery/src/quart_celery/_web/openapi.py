"""The OpenAPI document at `/openapi.json`, and its interactive page at `/docs` (quart-schema).

The page's script and stylesheet are Swagger UI's own files from the `flask-swagger-ui`
package (Swagger UI 5, which reads OpenAPI 3.1), served by the app under `/docs/assets/`:
quart-schema points at a CDN, and the page was blank on a machine without internet or behind a
strict Content-Security-Policy. Relative links, so that the page works under a `root_path`
too; `QUART_SCHEMA_SWAGGER_JS_URL` and `QUART_SCHEMA_SWAGGER_CSS_URL` still choose others.

The document is made from the same models that validate requests and answers. quart-schema
leaves request bodies optional in it, while the API refuses a request without one (schemathesis
noted the difference); here every documented body is marked required.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from quart import Blueprint, Quart, Response, send_from_directory
from quart_schema import QuartSchema, hide
from quart_schema.openapi import OpenAPIProvider
from quart_schema.typing import Model
from quart_schema.validation import DataSource

#: Swagger UI's files, as the package ships them.
SWAGGER_UI = files("flask_swagger_ui") / "dist"

assets = Blueprint("swagger_ui_assets", __name__)


@assets.get("/docs/assets/<path:filename>")
@hide
async def swagger_ui_asset(filename: str) -> Response:
    """One of Swagger UI's files (404 for any other name)."""
    return await send_from_directory(str(SWAGGER_UI), filename)


class RequiredBodies(OpenAPIProvider):
    """quart-schema's document, with every request body that a route validates required."""

    def build_request_body(
        self, model: type[Model], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The body as quart-schema builds it, marked required."""
        body, components = super().build_request_body(model, source)
        return {**body, "required": True}, components


def init_app(app: Quart, info: Mapping[str, Any] | None = None) -> None:
    """Serve the document, its page and the page's assets; `info` is the document's OpenAPI
    Info object (by default, the app's name as its title)."""
    app.config.setdefault("QUART_SCHEMA_SWAGGER_JS_URL", "docs/assets/swagger-ui-bundle.js")
    app.config.setdefault("QUART_SCHEMA_SWAGGER_CSS_URL", "docs/assets/swagger-ui.css")
    app.register_blueprint(assets)
    QuartSchema(
        app,
        info=dict(info) if info is not None else {"title": app.name, "version": "0.1.0"},
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,
        scalar_ui_path=None,
        openapi_provider_class=RequiredBodies,
    )

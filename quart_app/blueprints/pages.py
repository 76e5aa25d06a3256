"""The HTML pages."""

from __future__ import annotations

from quart import Blueprint

blueprint = Blueprint("pages", __name__)


@blueprint.get("/")
async def index() -> str:
    """The front page: for now, proof that the server answers."""
    return "<!doctype html><title>quart_app</title><p>quart_app is running.</p>"

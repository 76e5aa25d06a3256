"""How many websockets a server process keeps open: at most `WS_MAX_SOCKETS`.

Past that a handshake is refused (503 `too_many_sockets`), before it costs any memory; the
sockets open now are counted in the metrics (`<app>_websockets_open`).
"""

from __future__ import annotations

from typing import cast

from flask.sansio.blueprints import BlueprintSetupState
from quart import Blueprint, Quart, current_app, g

from quart_celery._observability.metrics import current as current_metrics
from quart_celery.errors import APIError

EXTENSION = "quart_celery.sockets"


class OpenSockets:
    """The count of websockets open now, and the most there may be."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0


def init_app(app: Quart) -> None:
    """Count the app's sockets against `WS_MAX_SOCKETS`."""
    app.extensions[EXTENSION] = OpenSockets(app.config["WS_MAX_SOCKETS"])


def count_sockets(blueprint: Blueprint) -> None:
    """Count each socket of `blueprint` while it is open, refusing those beyond the limit.

    Register it after the other checks of a handshake: a socket refused by those is not
    counted.
    """
    blueprint.before_websocket(_open)
    # Quart 0.22 never copies a blueprint's teardown_websocket functions to the app, so the
    # release is the app's; it only releases what a handshake here counted.
    blueprint.record_once(_release_sockets_at_teardown)


def open_sockets() -> OpenSockets:
    """The app's count of its open sockets."""
    sockets: OpenSockets = current_app.extensions[EXTENSION]
    return sockets


async def _open() -> None:
    sockets = open_sockets()
    if sockets.count >= sockets.limit:
        raise APIError(
            503, "too_many_sockets", "This server has as many websockets open as it may."
        )
    sockets.count += 1
    g.counted_socket = True
    metrics = current_metrics()
    if metrics is not None:
        metrics.websockets_open.inc()


def _release_sockets_at_teardown(state: BlueprintSetupState) -> None:
    app = cast(Quart, state.app)
    app.teardown_websocket(_release_socket)


async def _release_socket(exception: BaseException | None) -> None:
    if g.pop("counted_socket", False):
        open_sockets().count -= 1
        metrics = current_metrics()
        if metrics is not None:
            metrics.websockets_open.dec()

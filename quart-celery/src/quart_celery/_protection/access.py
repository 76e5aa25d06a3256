"""Who may use the JSON API and the websockets: bearer tokens, watch tickets, browser origins.

- Tokens. With `API_TOKEN` set (several may be given, comma-separated, to rotate them), every
  JSON API request and websocket needs `Authorization: Bearer <token>`; a browser, which cannot
  set headers on a websocket, may send `?token=<token>` instead. Anything else is 401. Without
  the setting the app is open, as a development default, and says so when it starts.
- Watch tickets. The HTML result page must follow its task without holding a token, so it is
  rendered with a ticket: the task's id signed with `SECRET_KEY`. A ticket opens that task's
  socket and nothing else, for as long as results are kept.
- Origins. A browser sends its page's origin with every websocket handshake, and cookies with
  it, so another site's page could open a socket in its visitor's name (cross-site websocket
  hijacking). A handshake whose origin is neither this server's own nor in
  `WS_ALLOWED_ORIGINS` is refused (403). Programs that send no origin are not browsers, and
  pass.
- Metrics. `GET /metrics` is open, like the health checks, unless `METRICS_TOKEN` is set:
  then it needs `Authorization: Bearer` with that token (not the API's).

Refusals happen before a websocket is accepted, so the client sees an HTTP status and the
usual JSON error body, as for any request.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from functools import partial

from itsdangerous import BadSignature, URLSafeTimedSerializer
from quart import Blueprint, Quart, current_app, request, websocket
from quart.wrappers import Request, Websocket

from quart_celery.errors import APIError

EXTENSION = "quart_celery.access"


class Access:
    """The settings that decide who gets in."""

    def __init__(self, app: Quart) -> None:
        self.tokens = [token.encode() for token in split(app.config["API_TOKEN"])]
        self.metrics_tokens = [token.encode() for token in split(app.config["METRICS_TOKEN"])]
        self.origins = frozenset(
            origin.rstrip("/") for origin in split(app.config["WS_ALLOWED_ORIGINS"])
        )
        # Salted with the app's name: a ticket of one app opens nothing of another's.
        self.tickets = URLSafeTimedSerializer(
            app.config["SECRET_KEY"], salt=f"{app.name}.watch-task"
        )
        # As long as the task itself is kept, as submissions do.
        self.ticket_max_age = int(app.config["CELERY_RESULT_EXPIRES"])

    def token_is_valid(self, token: str | None, tokens: list[bytes] | None = None) -> bool:
        """Whether `token` is one of the tokens (the API's unless `tokens` are given),
        compared in constant time."""
        if token is None:
            return False
        given = token.encode()
        # Compare with every token, so that the time taken says nothing about which matched.
        known_tokens = self.tokens if tokens is None else tokens
        return sum(hmac.compare_digest(given, known) for known in known_tokens) > 0


def split(value: str | Iterable[str] | None) -> list[str]:
    """A setting that lists values: comma-separated in the environment, or a list."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [item.strip() for item in items if item.strip()]


def init_app(app: Quart) -> None:
    """Read the settings; warn, when serving starts, if the API is open.

    When serving starts, not here: the Celery commands (`celery -A worker worker`, `inspect`,
    `beat`) build the app too, and an open API is none of their business. Each server process
    says it once.
    """
    access = app.extensions[EXTENSION] = Access(app)
    if not access.tokens:
        app.before_serving(partial(_warn_open, app))


async def _warn_open(app: Quart) -> None:
    app.logger.warning(
        "API_TOKEN is not set: the JSON API and the websockets are open to anyone who can "
        "reach this server (fine for development)"
    )


def protect_api(blueprint: Blueprint) -> None:
    """Require a token for every request to `blueprint`'s routes."""
    blueprint.before_request(_require_token)


async def require_metrics_token() -> None:
    """With `METRICS_TOKEN` set, a scrape needs `Authorization: Bearer` with it; else 401."""
    access = _access()
    token = _bearer(request.headers.get("Authorization"))
    if access.metrics_tokens and not access.token_is_valid(token, access.metrics_tokens):
        raise _unauthorized()


def protect_websockets(blueprint: Blueprint) -> None:
    """Check the origin and the token (or ticket) of every handshake to `blueprint`'s sockets."""
    blueprint.before_websocket(_admit_websocket)


def request_token() -> str | None:
    """The valid API token this request came with; None where tokens are off, or where it
    came with none that is valid (a made-up token must not pass for a client of its own)."""
    access = _access()
    token = _bearer(request.headers.get("Authorization"))
    return token if access.tokens and access.token_is_valid(token) else None


def watch_ticket(task_id: str) -> str:
    """A ticket that opens `/ws/tasks/<task_id>` (or `/ws/workflows/<task_id>`, given a
    workflow's id), for a result page."""
    ticket: str = _access().tickets.dumps(task_id)
    return ticket


def _access() -> Access:
    access: Access = current_app.extensions[EXTENSION]
    return access


def _bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if that is what it is."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _require_token() -> None:
    access = _access()
    if not access.tokens or access.token_is_valid(_bearer(request.headers.get("Authorization"))):
        return
    # A task's event stream opens with its watch ticket too: a page's `EventSource` sends no
    # header.
    if not (request.path.endswith("/stream") and _ticket_admits(access, request)):
        raise _unauthorized()


async def _admit_websocket() -> None:
    access = _access()
    origin = websocket.headers.get("Origin")
    if origin is not None and not _origin_allowed(access, origin):
        raise APIError(403, "origin_not_allowed", f"Websockets from {origin} are not allowed.")
    if access.tokens and not _websocket_authorized(access):
        raise _unauthorized()


def _origin_allowed(access: Access, origin: str) -> bool:
    """Whether a page from `origin` may open a socket: this server's own, or allowed."""
    scheme = "https" if websocket.scheme in ("wss", "https") else "http"
    own = f"{scheme}://{websocket.host}"
    return origin in (own, *access.origins) or "*" in access.origins


def _websocket_authorized(access: Access) -> bool:
    """A token in the header or the query, or a ticket for the task (or workflow) this socket
    watches."""
    token = _bearer(websocket.headers.get("Authorization")) or websocket.args.get("token")
    if access.token_is_valid(token):
        return True
    return _ticket_admits(access, websocket)


def _ticket_admits(access: Access, asked: Request | Websocket) -> bool:
    """Whether the request comes with a ticket (`?ticket=`) for the task (or workflow) it
    follows."""
    watched = asked.view_args or {}
    ticket, followed = (
        asked.args.get("ticket"),
        watched.get("task_id", watched.get("workflow_id")),
    )
    if ticket is None or followed is None:
        return False
    try:
        return bool(access.tickets.loads(ticket, max_age=access.ticket_max_age) == str(followed))
    except BadSignature:
        return False


def _unauthorized() -> APIError:
    return APIError(
        401,
        "unauthorized",
        "Send Authorization: Bearer <token>.",
        headers={"WWW-Authenticate": "Bearer"},
    )

"""The endpoints: the JSON API, the websockets, the health checks, `/metrics` and the OpenAPI
document, with what serving them takes (the websocket classes, the JSON errors, hearing the
server stop, the frozen heap). Imports every room but the worker's."""

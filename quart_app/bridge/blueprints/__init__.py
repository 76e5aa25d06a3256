"""The bridge's controllers: the JSON API, the websockets and the health checks."""

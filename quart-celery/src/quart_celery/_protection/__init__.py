"""Protection: API tokens, watch tickets and origins, the socket cap, websocket admission,
rate limits and idempotency keys. Imports the client, broker and observability rooms and the
base modules."""

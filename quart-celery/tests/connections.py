"""The connections Redis has open to the tests' database.

`CLIENT LIST` answers for the whole server: the connections of another run of the suite, or of
another of pytest-xdist's processes, are there too, each to a database of its own.
"""

from __future__ import annotations

from typing import Any

import redis


def connections(client: redis.Redis) -> list[dict[str, Any]]:
    """The connections open now to `client`'s database (`CLIENT LIST`, filtered)."""
    database = str(client.connection_pool.connection_kwargs.get("db", 0))
    return [entry for entry in client.client_list() if entry.get("db") == database]

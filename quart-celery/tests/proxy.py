"""A TCP proxy that holds every chunk a client sends for a while: a slow server, for real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress


@asynccontextmanager
async def slow_proxy(host: str, port: int, delay: float) -> AsyncIterator[int]:
    """Listen on a free port; forward to `host:port`, each request `delay` seconds late."""
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait: float) -> None:
        try:
            while chunk := await reader.read(65536):
                await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def connect(client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        server_reader, server = await asyncio.open_connection(host, port)
        for task in (pipe(client_reader, server, delay), pipe(server_reader, client, 0)):
            pipes.add(asyncio.create_task(task))

    listener = await asyncio.start_server(connect, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for task in pipes:
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*pipes, return_exceptions=True)
        await listener.wait_closed()

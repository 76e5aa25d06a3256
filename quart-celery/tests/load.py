"""A small HTTP/1.1 load client: many requests over a few keep-alive connections at once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Answer:
    """One response: its status, JSON body and how long it took (ms)."""

    status: int
    body: Any
    milliseconds: float


@dataclass
class Load:
    """Every answer of a run, in the order the requests were made, and how long it took."""

    answers: list[Answer] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.answers) / self.seconds

    def percentile(self, percent: float) -> float:
        ordered = sorted(answer.milliseconds for answer in self.answers)
        return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


async def run(
    base_url: str, requests: list[tuple[str, str, Any]], connections: int, timeout: float = 30
) -> Load:
    """Make `requests` (method, path, JSON body or None) over `connections` connections."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    load = Load(answers=[Answer(0, None, 0.0)] * len(requests))
    pending: Iterator[int] = iter(range(len(requests)))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in pending:
                method, path, body = requests[index]
                started = time.perf_counter()
                writer.write(_request(method, path, body))
                status, answer = await asyncio.wait_for(_response(reader), timeout)
                milliseconds = (time.perf_counter() - started) * 1000
                load.answers[index] = Answer(status, answer, milliseconds)
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    load.seconds = time.perf_counter() - started
    return load


def _request(method: str, path: str, body: Any) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: load\r\n"
    if body is None:
        return (head + "\r\n").encode()
    data = json.dumps(body).encode()
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


async def _response(reader: asyncio.StreamReader) -> tuple[int, Any]:
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return status, json.loads(await reader.readexactly(length))

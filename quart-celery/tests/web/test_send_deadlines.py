"""The watch that ends websocket sends past `WS_SEND_TIMEOUT`, one look for every socket."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from quart import Websocket

from quart_celery._web.send_deadlines import SendWatch

LIMIT = 0.2


class Client:
    """A socket whose client takes each message at once, or never."""

    def __init__(self, takes: bool) -> None:
        self.takes = takes
        self.sent: list[str] = []

    async def send(self, text: str) -> None:
        if not self.takes:
            await asyncio.Event().wait()
        self.sent.append(text)


@pytest.fixture
async def watch() -> Any:
    """A watch of `LIMIT` seconds, watching."""
    watch = SendWatch(LIMIT)
    watching = asyncio.create_task(watch.watch())
    yield watch
    watching.cancel()


def socket(client: Client) -> Websocket:
    return cast(Websocket, client)


async def test_a_send_the_client_does_not_take_ends_past_the_deadline(watch: SendWatch) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(10 * LIMIT):  # the test's own guard
            await watch.send(socket(Client(takes=False)), ["a"])
    assert LIMIT <= loop.time() - began <= 1.25 * LIMIT + 0.1
    assert not watch.sending and not watch.ended


async def test_sends_taken_at_once_are_not_ended_later(watch: SendWatch) -> None:
    client = Client(takes=True)
    for n in range(3):
        await watch.send(socket(client), [f"{n}a", f"{n}b"])
    await asyncio.sleep(2 * LIMIT)  # no cancellation is left behind to end this wait
    assert client.sent == ["0a", "0b", "1a", "1b", "2a", "2b"]
    assert not watch.sending


async def test_a_cancellation_from_elsewhere_is_not_taken_for_a_timeout(watch: SendWatch) -> None:
    sending = asyncio.create_task(watch.send(socket(Client(takes=False)), ["a"]))
    await asyncio.sleep(0)
    sending.cancel()  # the client went away, say
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert not watch.sending

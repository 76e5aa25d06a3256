"""Batches of chunks written straight to the sockets that wait for them: the frames, what
serves them, and, through a real hypercorn and worker, the order a socket gets them in."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
import websockets
from hypercorn.protocol.ws_stream import ASGIWebsocketState
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import TextMessage

from quart_celery._client.listener import Chunks
from quart_celery._protection.admission import Place
from quart_celery._web.frames import SocketWriter, frame_of, socket_writer, text_frame
from quart_celery.testing import ProcessWorker, Server, accepted_task
from tests.metrics import MESSAGES, sample, scrape


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 300_000])
def test_a_frame_is_what_a_client_reads_as_the_text(size: int) -> None:
    text = ("é" * size)[:size] if size % 2 else "x" * size  # two bytes a character, or one
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(text_frame(text))
    events = list(client.events())
    assert len(events) == 1 and isinstance(events[0], TextMessage)
    assert events[0].data == text and events[0].message_finished


def test_a_message_is_framed_once_for_every_socket() -> None:
    message = Chunks("a-task", 0, ['"a"']).message()
    assert frame_of(message) is frame_of(message)
    other = "".join(["{", message[1:]])  # the same text, another string
    assert frame_of(other) == frame_of(message) and frame_of(other) is not frame_of(message)


async def test_no_writer_where_the_server_is_not_hypercorn() -> None:
    async def send(message: Any) -> None:
        pass

    assert socket_writer(send) is None
    place = Place(asyncio.Semaphore(1), send)
    assert socket_writer(place.send) is None
    place.leave()


class Transport(asyncio.WriteTransport):
    """What a writer writes to: every write, as it was made."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


def writer_to(transport: Transport) -> tuple[SocketWriter, SimpleNamespace]:
    """A writer to `transport`, on a socket that is open (its stream, to close it)."""
    connection = SimpleNamespace(state=ConnectionState.OPEN, _proto=SimpleNamespace(extensions=[]))
    stream = SimpleNamespace(
        closed=False, state=ASGIWebsocketState.CONNECTED, connection=connection
    )
    server = SimpleNamespace(send_lock=asyncio.Lock(), writer=SimpleNamespace(transport=transport))
    return SocketWriter(stream, server), stream  # type: ignore[arg-type]


async def test_the_frames_after_the_first_of_a_turn_go_in_one_write_at_its_end() -> None:
    transport = Transport()
    writer, _ = writer_to(transport)
    assert writer("one") and writer("two") and writer("three")
    assert transport.writes == [text_frame("one")]
    await asyncio.sleep(0)
    assert transport.writes == [text_frame("one"), text_frame("two") + text_frame("three")]
    assert writer("four")  # a new turn: at once
    assert transport.writes[2:] == [text_frame("four")]
    await asyncio.sleep(0)
    assert len(transport.writes) == 3


async def test_what_the_app_sends_goes_after_the_frames_held() -> None:
    # The handler sending in the same turn as the listener took frames (a reply to a
    # client's request, a close): the frames held go first, and nothing is written twice.
    transport = Transport()
    writer, _ = writer_to(transport)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        transport.write(b"the app's")
        sent.append(message)

    assert writer("first") and writer("held")
    await writer.before(send)({"type": "websocket.send", "text": "next"})
    assert transport.writes == [text_frame("first"), text_frame("held"), b"the app's"]
    assert sent == [{"type": "websocket.send", "text": "next"}]
    await asyncio.sleep(0)
    assert len(transport.writes) == 3


async def test_frames_held_for_a_socket_closed_meanwhile_are_dropped() -> None:
    transport = Transport()
    writer, stream = writer_to(transport)
    assert writer("first") and writer("held")
    stream.connection.state = ConnectionState.LOCAL_CLOSING  # hypercorn answered a close
    await asyncio.sleep(0)
    assert transport.writes == [text_frame("first")]
    assert not writer("after")


async def everything(connection: websockets.ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    return [json.loads(message) async for message in connection]


def steps_of(received: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """A socket's chunks, one by one with their offsets, and its states, in order."""
    steps: list[tuple[str, Any]] = []
    for message in received:
        if "chunks" in message:
            offset = message["offset"]
            steps += [("chunk", (offset + n, c)) for n, c in enumerate(message["chunks"])]
        else:
            steps.append(("state", (message["state"], message.get("progress"))))
    return steps


@pytest.mark.e2e
async def test_batches_written_straight_come_in_order_among_the_states(
    start_server: Server, process_worker: ProcessWorker
) -> None:
    # Two sockets of a task whose chunks and states alternate, under hypercorn: one declines
    # compression (its batches are written straight from the listener, where it waits), one
    # takes it (its batches go through its handler); both get the same, in the same order.
    # A third follows 20,000 chunks, and gets each once, in order.
    server = start_server()
    ws = server.replace("http://", "ws://")
    task = accepted_task(server, "tests.stream_with_progress", steps=100)
    counting = accepted_task(server, "tests.stream_count", count=20_000)
    url = f"{ws}{task['websocket']}?chunks=batched"
    async with (
        websockets.connect(url, compression=None) as plain,
        websockets.connect(url) as deflated,
        websockets.connect(
            f"{ws}{counting['websocket']}?chunks=batched", compression=None, max_size=None
        ) as counter,
    ):
        sockets = [plain, deflated, counter]
        first = [json.loads(await socket.recv()) for socket in sockets]
        process_worker()
        rest = await asyncio.wait_for(asyncio.gather(*map(everything, sockets)), 120)
        assert [socket.close_code for socket in sockets] == [1000, 1000, 1000]
    plain_steps, deflated_steps, counted = (
        steps_of([head, *tail]) for head, tail in zip(first, rest, strict=True)
    )
    expected: list[tuple[str, Any]] = []
    for step in range(100):
        expected += [("chunk", (step, f"chunk {step}"))]
        expected += [("state", ("PROGRESS", {"current": step + 1, "total": 100}))]
    states = [s for s in plain_steps if s[0] == "state" and s[1][0] in ("PENDING", "STARTED")]
    assert [s for s in plain_steps if s not in states] == [*expected, ("state", ("SUCCESS", None))]
    assert deflated_steps == plain_steps
    chunks = [value for kind, value in counted if kind == "chunk"]
    assert chunks == [(n, n) for n in range(20_000)]
    assert counted[-1] == ("state", ("SUCCESS", None))
    # Every message counted once, by the way it went: the compressed socket's all through its
    # handler, and most of the plain one's straight (a hypercorn that stopped letting the
    # listener write would leave `straight` at 0; here 202 of its 203, and the others' but
    # their snapshots).
    text = scrape(server)
    straight, handler = (sample(text, MESSAGES, path=path) for path in ("straight", "handler"))
    assert straight + handler == sum(1 + len(tail) for tail in rest)
    assert straight >= len(rest[0]) / 2 and handler >= 1 + len(rest[1])

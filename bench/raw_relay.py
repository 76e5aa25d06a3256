"""A relay of plain asyncio for bench/streams.py: Redis pub/sub to websockets, each message
framed once and written to every socket that follows its task, with no ASGI server at all.

    python bench/raw_relay.py --port 8001   # with REDIS_URL set; bench/streams.py --relay raw

What one Python process on this machine can do with a stream's bytes, the floor below
`bench/bare_relay.py`: an ASGI server (hypercorn) runs each socket's app in a task of its own and
frames each message for each socket, where this one writes one frame to all of them from the
loop that heard it. Its `/ws/tasks/<id>` sends `{"state": "PENDING"}`, then each batch of chunks
as it was published and `{"state": ...}` for each state, and closes (1000) after the final one;
`/healthz` answers, so that the benchmark knows it is up. It is a measuring stick, not a
server: it reads nothing a client sends after the handshake (the close it answers with
included), and checks no more of a handshake than the benchmark's light client sends.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import struct

from redis.asyncio import Redis
from redis.asyncio.client import PubSub

#: RFC 6455's GUID, with which the server answers the client's key.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CHANNEL = b"celery-task-meta-"
BATCH = b'{"status":"STREAMING"'  # how the worker's script publishes a batch of chunks
FINAL = ("SUCCESS", "FAILURE", "REVOKED")
HEALTHY = b'{"status":"ok"}'


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """`payload` as one final, unmasked frame (a text frame unless `opcode` says otherwise)."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


CLOSE = frame(struct.pack("!H", 1000), opcode=0x8)


class Relay:
    """The sockets of each task's channel, and the one pub/sub connection they share."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        self.sockets: dict[bytes, set[asyncio.Transport]] = {}
        self.subscribing: set[asyncio.Task[None]] = set()

    def follow(self, channel: bytes, transport: asyncio.Transport) -> None:
        if channel not in self.sockets:
            self.sockets[channel] = set()
            subscribing = asyncio.create_task(self.pubsub.subscribe(channel))
            self.subscribing.add(subscribing)
            subscribing.add_done_callback(self.subscribing.discard)
        self.sockets[channel].add(transport)

    async def listen(self) -> None:
        """Write each published message to the sockets of its channel, framed once."""
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            sockets = self.sockets.get(message["channel"], set())
            data: bytes = message["data"]
            if data.startswith(BATCH):
                out = frame(data)
                for transport in sockets:
                    transport.write(out)
                continue
            state = json.loads(data)["status"]
            out = frame(json.dumps({"state": state}).encode())
            for transport in list(sockets):
                transport.write(out)
                if state in FINAL:
                    transport.write(CLOSE)
                    transport.close()  # once its buffer is written
                    sockets.discard(transport)


class Connection(asyncio.Protocol):
    """One client: `/healthz`, or a websocket following `/ws/tasks/<id>`."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.request = b""
        self.upgraded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            return  # what the client sends on its socket is not read
        self.request += data
        head, found, _ = self.request.partition(b"\r\n\r\n")
        if not found:
            return
        request_line, *lines = head.decode("latin-1").split("\r\n")
        path = request_line.split()[1].split("?")[0]
        if path == "/healthz":
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(HEALTHY), HEALTHY)
            )
            self.transport.close()
            return
        headers = dict(line.split(":", 1) for line in lines if ":" in line)
        key = {name.lower(): value.strip() for name, value in headers.items()}
        accept = base64.b64encode(hashlib.sha1(key["sec-websocket-key"].encode() + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        self.upgraded = True
        self.transport.write(frame(b'{"state":"PENDING"}'))
        self.relay.follow(CHANNEL + path.rsplit("/", 1)[1].encode(), self.transport)


async def serve(port: int) -> None:
    pubsub = Redis.from_url(os.environ["REDIS_URL"]).pubsub()
    await pubsub.connect()  # type: ignore[no-untyped-call, unused-ignore]
    relay = Relay(pubsub)
    listening = asyncio.create_task(relay.listen())
    server = await asyncio.get_running_loop().create_server(
        lambda: Connection(relay), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()
    listening.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))

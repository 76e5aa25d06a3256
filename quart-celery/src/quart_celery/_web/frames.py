"""States and batches of chunks written straight to the sockets that wait for them, framed
once, where the server is hypercorn.

Under ASGI, each socket's handler runs in a task of its own: a batch of chunks published for a
task followed by 100 sockets wakes 100 tasks, and each hands its message to the server, which
frames and copies it for its socket. That was what kept 100 sockets following a 10,000-chunk
stream from the 20 ms p99 on 2 cores: a bare relay under hypercorn missed it too, using 37 to
44 ms of CPU, where a relay of plain asyncio that wrote one frame to every socket from the loop
that heard the batch used 10 to 12 and met it (`bench/streams.py`, `bench/raw_relay.py`,
2026-12-05).

So a socket served by hypercorn over HTTP/1.1, with no extension (permessage-deflate
compresses each connection's frames its own way), gets a writer here: while its follower waits
with nothing before it, the listener hands it each state published, and each batch of chunks
where it takes them in batches, and it writes the message's frame, made once for every socket,
to the connection at once (`Follower.write_with`). In three pairs of runs alternating with the
usual way (batches alone), 100 sockets: p99 16.1 to 24.9 ms (5 rounds of 6 within 20 ms) and
the server's CPU 27 to 36 ms, against 26.6 to 38.7 ms and 45 to 57 ms. With states too, a
state to 100 sockets of a task cost 20 µs of CPU a socket, against 43 to 45 before and the
bare relay's 33 to 34 (`bench/followers.py`). It declines, and the message goes the usual way
(through the follower, the handler and the server's send, under the send's deadline),
whenever the connection is sending something else, is closing, or holds more than
`MOST_WAITING` bytes not yet taken by the client; or where something listens to Quart's
`websocket_sent` signal, which a write here could not send.

A writer writes the first frame it takes in a turn of the event loop at once, and those it
takes after it in the same turn in one write, at the end of the turn (`SocketWriter`): a
listener behind the worker reads several batches at once (up to nine in one turn, 2026-12-05),
and each write is a system call that, for a client on the same machine, runs the client's side
of TCP too: the light client of `bench/streams.py` read each of 100 sockets about once every
two messages (12 to 17 reads for 20 to 34), where it had read about once a message. Its p99,
as a median of rounds over the raw relay's, in sets of pairs alternating: 1.91 and 1.34 with
each frame written at once; 0.82, 0.97 and 1.30 with all of a turn's held; 1.15, 1.28 and 1.50
with all but the first held (`docs/performance.md`): no worse, and beyond that within a noisy
machine's spread. The first goes at once because most messages come alone (a state), and a
frame held waits for the rest of the turn, other sockets' ends included.

Written by hand: ASGI has no way to send one message to many sockets, and no library does it
under hypercorn. It leans on hypercorn's classes (`WSStream`, `H11Protocol`, `TCPServer`),
checked when a socket opens: with any other server, or middleware that wraps the send,
nothing changes. The metric `<app>_websocket_messages_total{path}` tells which way the
messages went (`straight` or `handler`): a hypercorn that no longer lets this module write
shows as `straight` staying at 0.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from quart.signals import websocket_sent
from wsproto.connection import ConnectionState

from quart_celery._observability.metrics import HANDLER, STRAIGHT, Metrics
from quart_celery._protection.admission import Place

#: Bytes a connection may hold that its client has not taken, beyond which a batch waits for
#: the usual way (which waits for the client, under the send's deadline).
MOST_WAITING = 64 * 1024
#: The messages framed last, at most this many, kept with the frame: a state or a batch
#: published goes to every socket of its task, one after another, from the listener, as one
#: text.
RECENT = 4
_framed: dict[int, tuple[str, bytes]] = {}
#: Messages sent to this process's websockets since the metric last took them, each way: plain
#: counts, taken by `count_sent` as sockets end and as `/metrics` is read. The metric's own
#: `labels(...).inc()` for each message cost 2.9 µs (4.1 in multiprocess mode), a plain count
#: under 0.1, where a state costs the server about 20 µs a socket (2026-12-05).
sent = {STRAIGHT: 0, HANDLER: 0}


def text_frame(text: str) -> bytes:
    """`text` as one final, unmasked text frame (RFC 6455, section 5.2), as a server sends it."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x81, 126, size)
    else:
        head = struct.pack("!BBQ", 0x81, 127, size)
    return head + payload


def frame_of(text: str) -> bytes:
    """The frame of a message, made once for every socket it goes to (the same text)."""
    kept = _framed.get(id(text))
    if kept is not None and kept[0] is text:
        return kept[1]
    frame = text_frame(text)
    if len(_framed) >= RECENT:
        del _framed[next(iter(_framed))]
    _framed[id(text)] = (text, frame)
    return frame


def count_sent(served: Metrics | None) -> None:
    """Add the messages sent since the last call to `served`'s count of them, if it serves."""
    if served is None:
        return
    for path, count in sent.items():
        if count:
            served.websocket_messages.labels(path=path).inc(count)
            sent[path] = 0


def socket_writer(send: Any) -> SocketWriter | None:
    """A writer of messages straight to the socket whose ASGI `send` this is (the server's,
    or the admission's that stands in for it), or None: another server, HTTP/2, or a send
    that middleware wraps."""
    place = getattr(send, "__self__", None)
    if isinstance(place, Place):
        send = place.server_send
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream) or send != stream.app_send:
        return None
    protocol = getattr(stream.send, "__self__", None)
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    if not isinstance(protocol, H11Protocol) or not isinstance(server, TCPServer):
        return None
    return SocketWriter(stream, server)


class SocketWriter:
    """Writes messages to one socket's connection, while nothing stands in the way.

    The first frame taken in a turn of the event loop is written at once; those taken after it
    in the same turn go to the connection together, at the end of it (`write`): the listener
    often reads several batches at once, having fallen behind, and a write is a system call
    that, to a client on the same machine, costs the client's side of TCP too. Whatever the
    app sends the socket otherwise writes what is held first (`before`), so that the messages
    keep their order.
    """

    __slots__ = ("held", "send", "server", "stream")

    def __init__(self, stream: WSStream, server: TCPServer) -> None:
        self.stream = stream
        self.server = server
        #: Frames taken this turn after its first, not yet written; None: none taken yet.
        self.held: list[bytes] | None = None
        #: The socket's ASGI send, where the app's messages go (`before`).
        self.send: Callable[[Any], Awaitable[None]] | None = None

    def __call__(self, text: str) -> bool:
        """Write `text`'s frame, or hold it for the end of this turn if one was written in
        it; whether it was taken (if not, nothing was)."""
        stream, server = self.stream, self.server
        if (
            not self._open()
            or stream.connection._proto.extensions  # compressed: not our frames
            or server.send_lock.locked()  # hypercorn is writing: ours would cut in
            or websocket_sent.receivers
        ):
            return False
        transport = server.writer.transport
        assert isinstance(transport, asyncio.WriteTransport)
        if transport.get_write_buffer_size() > MOST_WAITING:
            return False
        held = self.held
        if held is None:
            transport.write(frame_of(text))
            self.held = []
            asyncio.get_running_loop().call_soon(self.write)
        else:
            held.append(frame_of(text))
        sent[STRAIGHT] += 1
        return True

    def write(self) -> None:
        """Write the frames held, if the socket is still open (if not, they are dropped:
        nobody reads them)."""
        held, self.held = self.held, None
        if not held:
            return
        if self._open():
            self.server.writer.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def before(self, send: Any) -> Callable[[Any], Awaitable[None]]:
        """`send` (the socket's ASGI send), writing the frames held first."""
        self.send = send
        return self._send

    async def _send(self, message: Any) -> None:
        if self.held:
            self.write()
        assert self.send is not None
        await self.send(message)

    def _open(self) -> bool:
        """Whether the socket is open, and its connection not closing."""
        stream = self.stream
        return (
            not stream.closed
            and stream.state is ASGIWebsocketState.CONNECTED
            and stream.connection.state is ConnectionState.OPEN
            and not self.server.writer.transport.is_closing()
        )

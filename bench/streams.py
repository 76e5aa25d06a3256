"""Streamed output: one task streaming small chunks as fast as it can, followed by many
websockets on one server.

    .venv/bin/python bench/streams.py [--chunks 10000] [--sockets 100] [--rounds 3] [--rate N]
    .venv/bin/python bench/streams.py --batched   # the sockets take ?chunks=batched
    .venv/bin/python bench/streams.py --profile streams.txt   # py-spy the server
    .venv/bin/python bench/streams.py --client websockets   # sockets of the websockets library
    .venv/bin/python bench/streams.py --no-baseline   # the app alone, not the bare relay after it
    .venv/bin/python bench/streams.py --batched --relay raw   # against bench/raw_relay.py

One `hypercorn asgi:app` and one worker (`celery -A bench.async_worker worker`, the async pool)
on a flushed database. The task (`bench.stream`) is sent while no worker runs; `--sockets`
websockets (declining compression) follow it on `/ws/tasks/<id>` from the benchmark's own event
loop; then the worker starts. Each chunk is `[n, time sent]`; with `--rate N` the task sends N
a second rather than as fast as it can. Reported, per round:

- the task's sending: chunks per second, and what `send_chunk` costs a chunk, in µs (the send
  loop's time less that of the same loop making the chunks alone; paced, this includes the
  waits);
- delivery: chunks per second to each socket (from the first chunk sent to the last received),
  and the p50 and p99 from a chunk's sending to a socket's receiving it, over every chunk of
  every socket; every socket must get every chunk, in order, once;
- with the light client, the CPU time the server's process (all its threads) used from the
  task's start (its `STARTED` reaching the first socket) to the last socket's close, and that
  time a chunk a socket; and what the worker, this client and Redis used meanwhile, and how
  busy that kept the machine's cores: every part of the path shares them here, and a stream
  as fast as it can keeps them all busy.

The sockets are the benchmark's own light client (`Recorder`): it notes when each frame's
last byte came and reads the frames once the socket has closed. In production the clients are
browsers on other machines; here they share the server's 2 cores, and a Python websocket stack
decoding a million chunks as they come (`--client websockets`, the `websockets` library, which
reads each message as it comes and decodes its JSON after the close) takes CPU time the server
then waits for, and counts it as the server's delay. With `--batched`, the sockets ask for
`?chunks=batched`: a message carries many chunks, each received when its message is.

With `--batched`, each round also runs the same against `bench/bare_relay.py` under the same
hypercorn (after the app in odd rounds, before it in even ones), the baseline: its
`/ws/tasks/<id>` sends each batch the worker publishes to each socket as it was published, one
message a batch, with no framework (what the app's `?chunks=batched` does without Quart, the
follower's bookkeeping or the joining of batches for a socket that fell behind), and the
round ends with the app's p50 and p99 over the bare relay's. A round 0 comes first and is
not counted, as in `bench/latency.py`: the first server of a run was often the slowest of it,
whichever it was (the machine warming up: in five runs of three rounds on 2026-12-05, five of
the app's eight rounds over 20 ms were a run's first server). The run ends with each server's
p99 in every counted round.
With `--relay raw`, the baseline is `bench/raw_relay.py` instead: no ASGI server at all, each
message framed once and written to every socket from the loop that heard it, the floor of what
one Python process does with these bytes here.

Uses the Redis at REDIS_URL (default redis://127.0.0.1:6379/0), database 15, flushed before
and after.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit import (
    cpu_seconds,
    flush,
    free_port,
    percentile,
    serving_process,
    start_profiler,
    wait_until_serving,
)

ROOT = Path(__file__).resolve().parent.parent
DATABASE = 15  # the tests take 13 and 14, 11 and 12, and those below
WORKER = [sys.executable, "-m", "celery", "-A", "bench.async_worker", "worker"]
RAW = "raw_relay.py"  # bench/raw_relay.py, run as it is: not an ASGI app
TARGET_P99 = 20.0  # ms, from a chunk's sending to a socket's receiving it (100 sockets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.0, help="chunks a second; 0: at once")
    parser.add_argument("--batched", action="store_true", help="follow with ?chunks=batched")
    parser.add_argument("--profile", help="record 5 s of py-spy on the server (.txt: raw)")
    parser.add_argument(
        "--client", choices=["light", "websockets"], default="light", help="the sockets' client"
    )
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --batched: after the app, each round, the same through a relay",
    )
    parser.add_argument(
        "--relay",
        choices=["bare", "raw"],
        default="bare",
        help="the relay: bench/bare_relay.py under hypercorn, or bench/raw_relay.py (no ASGI)",
    )
    args = parser.parse_args()
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_url = urlunsplit(urlsplit(base)._replace(path=f"/{DATABASE}"))
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("SECRET_KEY", "bench")
    # The bare relay sends a message a batch: a baseline for `?chunks=batched` alone.
    baseline = args.baseline and args.batched
    servers = [("the app", "asgi:app")]
    relay = ("bare relay", "bare_relay:app") if args.relay == "bare" else ("raw relay", RAW)
    if baseline:
        servers.append(relay)
    p99s: dict[str, list[float]] = {label: [] for label, _ in servers}
    for number in range(args.rounds + 1):  # round 0 warms the machine up, and is not counted
        pace = f"{args.rate:g} a second" if args.rate else "as fast as it can"
        batched = ", batched" if args.batched else ""
        print(
            f"round {number}{' (not counted)' if number == 0 else ''}: {args.chunks} chunks, "
            f"{pace}, {args.sockets} sockets{batched}, {args.client} client"
        )
        figures = {}
        # Taking turns at going first: the first server of a run was the slower (see latency.py).
        for label, server in servers if number % 2 else list(reversed(servers)):
            print(f"  {label} ({'bench/' + server if server == RAW else 'hypercorn ' + server}):")
            figures[label] = run_round(
                redis_url,
                args.chunks,
                args.sockets,
                args.rate,
                args.profile if server == "asgi:app" else None,
                args.batched,
                light=args.client == "light",
                server=server,
            )
        if number:
            for label, (_, p99, _) in figures.items():
                p99s[label].append(p99)
        if baseline:
            app, other = figures["the app"], figures[relay[0]]
            cpu = f", the server's CPU {app[2] / other[2]:.2f}" if other[2] else ""
            print(
                f"  the app ÷ the {relay[0]}: p50 {app[0] / other[0]:.2f}, "
                f"p99 {app[1] / other[1]:.2f}{cpu}"
            )
    if not args.rounds:
        return
    print(f"p99 in each of the {args.rounds} counted rounds:")
    for label, each in p99s.items():
        within = sum(p99 <= TARGET_P99 for p99 in each)
        rounds = ", ".join(f"{p99:.1f}" for p99 in each)
        print(f"  {label}: {rounds} ms; within {TARGET_P99:g} ms in {within} of {len(each)}")


def run_round(
    redis_url: str,
    chunks: int,
    sockets: int,
    rate: float,
    profile: str | None = None,
    batched: bool = False,
    light: bool = True,
    server: str = "asgi:app",
) -> tuple[float, float, float]:
    """One hypercorn serving `server` and one worker, fresh, on a flushed database: the
    sockets' p50 and p99, in ms, from a chunk's sending to its receiving, and the server's CPU
    seconds while it streamed (0 where not measured)."""
    # The bare relay is found in this directory, the project's app at the root.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    flush(redis_url)
    port = free_port()
    command = [sys.executable, "-m", "hypercorn", server, "--bind", f"127.0.0.1:{port}"]
    if server == RAW:
        command = [sys.executable, str(Path(__file__).parent / "raw_relay.py"), f"--port={port}"]
    serving = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_until_serving(port)
        pid = serving.pid if server == RAW else serving_process(serving.pid)
        sys.path.insert(0, str(ROOT))
        from worker import celery  # the app's, configured: its sends are recorded

        task_id = celery.send_task("bench.stream", args=(chunks, rate)).id
        url = f"ws://127.0.0.1:{port}/ws/tasks/{task_id}"
        if batched:
            url += "?chunks=batched"

        def start_worker() -> subprocess.Popen[bytes]:
            if profile:
                start_profiler(serving.pid, profile)
            return subprocess.Popen(
                [*WORKER, "--loglevel", "WARNING", "--without-mingle"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        cpu: dict[str, float] | None = None
        if light:
            parts = {"the server": pid, "this client": os.getpid(), **redis_process(redis_url)}
            received, worker, cpu = asyncio.run(
                follow_lightly(url, sockets, chunks, start_worker, parts)
            )
        else:
            received, worker = asyncio.run(follow(url, sockets, chunks, start_worker))
        result = celery.AsyncResult(task_id).get(timeout=60)
    finally:
        for process in (worker, serving):
            if process is not None:
                process.terminate()
                process.wait(30)
        flush(redis_url)
    return report(received, result, chunks, rate, cpu)


def redis_process(redis_url: str) -> dict[str, int]:
    """Redis's pid, as a part whose CPU is measured, where it runs on this machine."""
    import redis

    with redis.Redis.from_url(redis_url) as client:
        pid = int(client.info("server")["process_id"])
    return {"Redis": pid} if os.access(f"/proc/{pid}/task", os.R_OK) else {}


async def follow(
    url: str, sockets: int, chunks: int, start_worker: object
) -> tuple[list[tuple[list[float], float, float]], subprocess.Popen[bytes]]:
    """Each socket's latencies (s), and when its first chunk was sent and its last came."""
    connected = [
        await websockets.connect(url, compression=None, max_queue=None) for _ in range(sockets)
    ]
    for socket in connected:
        assert json.loads(await socket.recv())["state"] == "PENDING"
    worker = start_worker()  # type: ignore[operator]
    results = await asyncio.gather(*(one(socket, chunks) for socket in connected))
    return results, worker


async def one(socket: websockets.ClientConnection, chunks: int) -> tuple[list[float], float, float]:
    came = [(time.time(), str(raw)) async for raw in socket]
    assert socket.close_code == 1000
    return check(came, chunks)


async def follow_lightly(
    url: str,
    sockets: int,
    chunks: int,
    start_worker: Callable[[], subprocess.Popen[bytes]],
    parts: dict[str, int],
) -> tuple[list[tuple[list[float], float, float]], subprocess.Popen[bytes], dict[str, float]]:
    """`follow`, with the light client; and the CPU seconds each process of `parts` (a name
    and its pid) and the worker used, from the stream's start (the first socket's first message
    after its snapshot: the task's `STARTED`) to the last socket's close, with the wall-clock
    seconds between the two (`"wall"`)."""
    connected = [await record(url) for _ in range(sockets)]
    for recorder in connected:
        await recorder.first_message
    worker = start_worker()
    parts = {**parts, "the worker": worker.pid}

    def cpu() -> dict[str, float]:
        return {"wall": time.perf_counter()} | {
            name: cpu_seconds(pid) for name, pid in parts.items()
        }

    await connected[0].second_message
    began = cpu()
    for recorder in connected:
        await recorder.closed
    ended = cpu()
    used = {name: ended[name] - began[name] for name in ended}
    results = []
    for recorder in connected:
        came = recorder.messages()
        assert json.loads(came[0][1])["state"] == "PENDING"
        results.append(check(came[1:], chunks))
        assert recorder.close_code == 1000, recorder.close_code
    return results, worker, used


async def record(url: str) -> Recorder:
    """A light client's socket to `url` (ws://127.0.0.1:<port>/...), connecting."""
    parts = urlsplit(url)
    target = f"{parts.path}?{parts.query}" if parts.query else parts.path
    _, recorder = await asyncio.get_running_loop().create_connection(
        lambda: Recorder(parts.netloc, target), "127.0.0.1", parts.port or 80
    )
    return recorder


class Recorder(asyncio.Protocol):
    """A websocket client that notes when each frame came, and reads the frames after the
    close: between the two, its only work is finding where each frame ends.

    Written by hand: a websocket library parses and decodes each message as it comes, and here
    the client shares the server's cores. Frames from a server are not masked, and a server
    sends each message as one frame; the client's one frame, its close, is masked.
    """

    def __init__(self, host: str, target: str) -> None:
        loop = asyncio.get_running_loop()
        self.request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n\r\n"
        ).encode()
        self.data = bytearray()
        self.upgraded = False
        self.scanned = 0
        #: Each frame: when its last byte came, its opcode, where its payload starts and ends.
        self.frames: list[tuple[float, int, int, int]] = []
        self.first_message: asyncio.Future[None] = loop.create_future()
        self.second_message: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        came = time.time()
        self.data += data
        if not self.upgraded:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.data.startswith(b"HTTP/1.1 101"), bytes(self.data[:end])
            del self.data[: end + 4]
            self.upgraded = True
        buffer, at = self.data, self.scanned
        while len(buffer) - at >= 2:
            fin_opcode, length = buffer[at], buffer[at + 1] & 0x7F
            header = 2 if length < 126 else 4 if length == 126 else 10
            if len(buffer) - at < header:
                break
            if length == 126:
                (length,) = struct.unpack_from("!H", buffer, at + 2)
            elif length == 127:
                (length,) = struct.unpack_from("!Q", buffer, at + 2)
            end = at + header + length
            if len(buffer) < end:
                break
            assert fin_opcode & 0x80, "a message in more than one frame"
            self.frames.append((came, fin_opcode & 0x0F, at + header, end))
            at = end
            if not self.first_message.done():
                self.first_message.set_result(None)
            elif not self.second_message.done():
                self.second_message.set_result(None)
            if fin_opcode & 0x0F == 0x8:  # the server's close: answer it, masked
                (self.close_code,) = struct.unpack_from("!H", buffer, end - length)
                mask = os.urandom(4)
                code = bytes(b ^ m for b, m in zip(struct.pack("!H", 1000), mask, strict=False))
                self.transport.write(b"\x88\x82" + mask + code)  # type: ignore[attr-defined]
        self.scanned = at

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first_message.done():
            self.first_message.set_exception(ConnectionError("closed before its first message"))
        if not self.second_message.done():
            self.second_message.set_result(None)  # the checks of its messages will tell
        if not self.closed.done():
            self.closed.set_result(None)

    def messages(self) -> list[tuple[float, str]]:
        """The text messages, each with when it came."""
        return [
            (came, self.data[start:end].decode())
            for came, opcode, start, end in self.frames
            if opcode == 0x1
        ]


def check(came: list[tuple[float, str]], chunks: int) -> tuple[list[float], float, float]:
    """A socket's latencies, and when its first chunk was sent and its last came; every chunk
    must have come, in order, once."""
    latencies: list[float] = []
    expected = 0
    first_sent = last_received = 0.0
    for received, raw in came:
        message = json.loads(raw)
        if "offset" not in message:
            continue
        assert message["offset"] == expected, (message["offset"], expected)
        for number, sent in message["chunks"] if "chunks" in message else [message["chunk"]]:
            assert number == expected, (number, expected)
            if expected == 0:
                first_sent = sent
            expected += 1
            latencies.append(received - sent)
        last_received = received
    assert expected == chunks, f"a socket got {expected} of {chunks} chunks"
    return latencies, first_sent, last_received


def report(
    received: list[tuple[list[float], float, float]],
    result: dict[str, float],
    chunks: int,
    rate: float,
    cpu: dict[str, float] | None,
) -> tuple[float, float, float]:
    """Print a round's figures (with `cpu`, where the light client measured it, the CPU
    seconds of the server and the other processes from the stream's start to the last socket's
    close); its p50 and p99 from sending to receiving, in ms, and the server's CPU seconds (0
    where not measured)."""
    sending, making = result["sending"], result["making"]
    every = sorted(latency * 1000 for latencies, _, _ in received for latency in latencies)
    rates = sorted(chunks / (last - first) for _, first, last in received)
    cost = 1e6 * (sending - making) / chunks
    paced = "" if rate else f", send_chunk {cost:5.1f} µs a chunk"
    print(f"    sent: {chunks / sending:9,.0f} chunks/s{paced}")
    print(
        f"    delivered to each socket: {percentile(rates, 50):9,.0f} chunks/s "
        f"(p50 of sockets, slowest {rates[0]:,.0f})"
    )
    print(
        f"    sent to received: p50 {percentile(every, 50):6.1f} ms, "
        f"p99 {percentile(every, 99):6.1f} ms ({len(every):,} chunks, every socket all in order)"
    )
    by_offset = [sorted(1000 * latencies[n] for latencies, _, _ in received) for n in (0, -1)]
    print(
        f"    sent to received, p50 of sockets: the first chunk {percentile(by_offset[0], 50):.1f} "
        f"ms, the last {percentile(by_offset[1], 50):.1f} ms"
    )
    if cpu is None:
        return percentile(every, 50), percentile(every, 99), 0.0
    server = cpu.pop("the server")
    each = 1e9 * server / len(every)
    print(f"    the server's CPU: {1000 * server:.1f} ms, {each:.0f} ns a chunk a socket")
    wall = cpu.pop("wall")
    busy = (server + sum(cpu.values())) / (wall * (os.cpu_count() or 1))
    others = ", ".join(f"{name} {1000 * seconds:.1f}" for name, seconds in cpu.items())
    print(
        f"    and meanwhile, in ms: {others}; the cores {busy:.0%} busy over {1000 * wall:.1f} ms"
    )
    return percentile(every, 50), percentile(every, 99), server


if __name__ == "__main__":
    main()

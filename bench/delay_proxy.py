"""A TCP proxy on 127.0.0.1 that adds a fixed delay to every request.

Run as its own process::

    python -m bench.delay_proxy --upstream 127.0.0.1:8080 --delay-ms 20 [--listen-port 0]

It prints ``READY <port>`` on stdout once it listens, and exits on SIGTERM/SIGINT.

The delay model: every client->server data event (for HTTP/1.1 clients that is the
start of each request; request headers of GET/HEAD fit in one segment) is held for
``--delay-ms`` before it is forwarded, so each request costs one extra "round trip".
Responses are forwarded as they come. ``--connect-delay-ms`` (default 0) adds a delay
before a new connection is opened upstream, to model the TCP handshake as well.
Each connection is served independently, so concurrent requests overlap their delays
exactly like they would on a real high-latency link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, stats: dict
) -> None:
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            if delay:
                stats["delayed"] += 1
                await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


async def _handle(
    creader: asyncio.StreamReader,
    cwriter: asyncio.StreamWriter,
    upstream: tuple[str, int],
    delay: float,
    connect_delay: float,
    stats: dict,
) -> None:
    stats["connections"] += 1
    try:
        if connect_delay:
            await asyncio.sleep(connect_delay)
        sreader, swriter = await asyncio.open_connection(*upstream)
    except OSError:
        cwriter.close()
        return
    up = asyncio.create_task(_pipe(creader, swriter, delay, stats))
    down = asyncio.create_task(_pipe(sreader, cwriter, 0.0, stats))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.ALL_COMPLETED)
    finally:
        for w in (swriter, cwriter):
            with contextlib.suppress(Exception):
                w.close()


async def serve(host: str, port: int, upstream: tuple[str, int], delay_ms: float,
                connect_delay_ms: float) -> None:
    stats = {"connections": 0, "delayed": 0}
    server = await asyncio.start_server(
        lambda r, w: _handle(r, w, upstream, delay_ms / 1000.0, connect_delay_ms / 1000.0, stats),
        host,
        port,
        backlog=256,
    )
    sock_port = server.sockets[0].getsockname()[1]
    print(f"READY {sock_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"STATS connections={stats['connections']} delayed={stats['delayed']}",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT to forward to (loopback)")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--connect-delay-ms", type=float, default=0.0)
    a = ap.parse_args(argv)
    host, _, port = a.upstream.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("upstream must be on the loopback interface")
    asyncio.run(serve("127.0.0.1", a.listen_port, (host, int(port)), a.delay_ms,
                      a.connect_delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())

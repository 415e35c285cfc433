"""A TCP proxy on 127.0.0.1 that adds a fixed delay to every request.

Run as its own process::

    python -m bench.delay_proxy --upstream 127.0.0.1:8080 --delay-ms 20 [--rate-mbps 100]

It prints ``READY <port>`` on stdout once it listens, and exits on SIGTERM/SIGINT.

Delay model: every client->server data event (for an HTTP/1.1 client that is the start
of each request; the headers of a GET/HEAD fit in one segment) is held for
``--delay-ms`` before it is forwarded, so each request costs one extra "round trip".
Responses flow back unchanged, at most ``--rate-mbps`` MB/s per connection if given (an
"S3-like" endpoint: S3 serves a connection roughly 100 MB/s; the aggregate grows with
connections). ``--connect-delay-ms`` (default 0) also delays opening
each upstream connection, to model a TCP handshake. Connections are independent, so
concurrent requests overlap their delays as on a real high-latency link.

Why threads and splice(2) rather than asyncio: the response direction must not be the
bottleneck for clients that pull hundreds of MB (the seed recipe does). asyncio
stream and protocol versions of this proxy topped out at ~0.8 GB/s on this machine;
splicing socket -> pipe -> socket in a thread per direction moves ~1.3-1.4 GB/s
(nginx alone: ~1.5-2 GB/s), with no copies through Python.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import sys
import threading
import time

F_SETPIPE_SZ = 1031
CHUNK = 1 << 20
RATE_CHUNK = 64 << 10  # pieces of a rate-capped response: 0.66 ms each at 100 MB/s


def _shutdown(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


class Connection:
    def __init__(self, client: socket.socket, upstream: tuple[str, int], delay: float,
                 connect_delay: float, stats: dict, rate: float = 0.0):
        self.client = client
        self.upstream = upstream
        self.delay = delay
        self.connect_delay = connect_delay
        self.stats = stats
        self.rate = rate  # bytes per second per connection; 0: not capped

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            if self.connect_delay:
                time.sleep(self.connect_delay)
            server = socket.create_connection(self.upstream)
        except OSError:
            self.client.close()
            return
        for s in (self.client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up = threading.Thread(target=self._requests, args=(self.client, server), daemon=True)
        up.start()
        self._responses(server, self.client)
        up.join()
        self.client.close()
        server.close()

    def _requests(self, src: socket.socket, dst: socket.socket) -> None:
        """client -> server, each data event delayed."""
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                if self.delay:
                    self.stats["delayed"] += 1
                    time.sleep(self.delay)
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            _shutdown(src, dst)

    def _responses(self, src: socket.socket, dst: socket.socket) -> None:
        """server -> client, zero-copy; paced to ``rate`` if set (no credit while idle)."""
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, F_SETPIPE_SZ, CHUNK)
        piece = RATE_CHUNK if self.rate else CHUNK
        free_at = 0.0  # when the connection may send its next byte
        try:
            while True:
                n = os.splice(src.fileno(), w, piece)
                if n == 0:
                    break
                if self.rate:
                    now = time.monotonic()
                    free_at = max(free_at, now) + n / self.rate
                    if free_at - now > 0.002:
                        time.sleep(free_at - now)
                while n:
                    n -= os.splice(r, dst.fileno(), n)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            _shutdown(src, dst)
        finally:
            os.close(r)
            os.close(w)


def serve(port: int, upstream: tuple[str, int], delay_ms: float, connect_delay_ms: float,
          rate_mbps: float = 0.0) -> None:
    stats = {"connections": 0, "delayed": 0}
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(256)
    print(f"READY {ls.getsockname()[1]}", flush=True)

    def _stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while True:
            c, _ = ls.accept()
            stats["connections"] += 1
            Connection(c, upstream, delay_ms / 1000.0, connect_delay_ms / 1000.0, stats,
                       rate_mbps * 1e6).start()
    finally:
        ls.close()
        print(f"STATS connections={stats['connections']} delayed={stats['delayed']}",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT to forward to (loopback)")
    ap.add_argument("--listen-port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--connect-delay-ms", type=float, default=0.0)
    ap.add_argument("--rate-mbps", type=float, default=0.0,
                    help="cap each connection's responses at this many MB/s (0: no cap)")
    a = ap.parse_args(argv)
    host, _, port = a.upstream.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("upstream must be on the loopback interface")
    serve(a.listen_port, (host, int(port)), a.delay_ms, a.connect_delay_ms, a.rate_mbps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

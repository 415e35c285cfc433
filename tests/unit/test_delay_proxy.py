"""The benchmark's delay proxy: the S3-like endpoint caps each connection's rate (checked as a
lower bound on time only: slowness cannot break it)."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SIZE = 6_000_000
RATE_MBPS = 30.0


@pytest.fixture
def upstream(tmp_path: Path):
    (tmp_path / "blob").write_bytes(bytes(range(256)) * (SIZE // 256))
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


@pytest.fixture
def proxy(upstream: int):
    proc = subprocess.Popen([sys.executable, "-m", "bench.delay_proxy", "--upstream",
                             f"127.0.0.1:{upstream}", "--delay-ms", "0", "--rate-mbps",
                             str(RATE_MBPS)], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[:1] == ["READY"], line
        yield int(line[1])
    finally:
        proc.terminate()
        proc.wait(10)


def _get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/blob", timeout=60) as r:
        return r.read()


def test_one_connection_never_gets_more_than_the_rate_cap(proxy):
    t0 = time.monotonic()
    assert len(_get(proxy)) == SIZE // 256 * 256
    took = time.monotonic() - t0
    assert took >= 0.9 * SIZE / (RATE_MBPS * 1e6), f"{SIZE / took / 1e6:.0f} MB/s through one connection"

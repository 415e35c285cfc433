"""A fault-injecting HTTP/1.1 proxy between a zipmount daemon and an S3 server on loopback.

The daemon is pointed at ``proxy.url`` (``--endpoint-url``); every request is logged and, per the
current *rule*, forwarded to the real server or answered with a fault:

- ``Status(503, "SlowDown")``: an S3 XML error, as a throttling or failing server sends it;
- ``ResetMidBody()``: forward, send the headers and part of the body, then reset the connection;
- ``Trickle(...)``: forward, then dribble the body out a few bytes at a time (never times out a
  single socket read, only an overall deadline catches it);
- ``Hang()``: accept the request and never answer (a black-holed endpoint);
- ``down()``/``up()``: stop listening altogether (connection refused) and come back on the same
  port.

A rule is a callable ``rule(request) -> action | None`` (None: forward). :func:`first_n` builds the
common "fail the first N matching requests" rule. Traffic is bounded by what the tests request;
the proxy only ever listens on 127.0.0.1 and :meth:`FaultProxy.stop` ends every thread.
"""

from __future__ import annotations

import contextlib
import html
import http.client
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_FAULT_SECONDS = 120.0  # no hang or trickle outlives this, whatever the test does


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    t: float  # time.monotonic() when the request head was read
    action: str = "forward"
    status: int | None = None

    @property
    def is_get(self) -> bool:
        return self.method == "GET"

    @property
    def is_range_get(self) -> bool:
        return self.method == "GET" and "range" in {k.lower() for k in self.headers}

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


@dataclass(frozen=True)
class Status:
    code: int = 503
    s3_code: str = "SlowDown"
    message: str = "Please reduce your request rate."


@dataclass(frozen=True)
class ResetMidBody:
    fraction: float = 0.5  # of the body sent before the reset


@dataclass(frozen=True)
class Trickle:
    chunk: int = 1
    interval: float = 0.3
    headers_first: bool = True


@dataclass(frozen=True)
class Hang:
    pass


Action = Status | ResetMidBody | Trickle | Hang
Rule = Callable[[Request], "Action | None"]


def first_n(n: int, action: Action, match: Callable[[Request], bool] = Request.is_range_get.fget,
            ) -> Rule:
    """A rule answering the first ``n`` requests that ``match`` with ``action``."""
    lock = threading.Lock()
    left = [n]

    def rule(req: Request) -> Action | None:
        if not match(req):
            return None
        with lock:
            if left[0] <= 0:
                return None
            left[0] -= 1
        return action

    return rule


def always(action: Action, match: Callable[[Request], bool] = lambda r: True) -> Rule:
    return lambda req: action if match(req) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, proxy: FaultProxy, port: int) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.proxy.tls is not None:  # handshake happens in the handler thread
            sock = self.proxy.tls.wrap_socket(sock, server_side=True,
                                              do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that reset or reject us are part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            try:
                self.request.do_handshake()
            except (OSError, ssl.SSLError):  # e.g. a client that rejects our certificate
                self.server.proxy.tls_failures += 1
                raise
            self.request.settimeout(None)
        super().setup()
        self.server.proxy._track(self.connection, True)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.proxy._track(self.connection, False)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._handle()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _handle(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(self.command, self.path, dict(self.headers.items()), time.monotonic())
        action = proxy._decide(req)
        if isinstance(action, Hang):
            req.action = "hang"
            proxy._stopping.wait(MAX_FAULT_SECONDS)
            self._abort()
            return
        if isinstance(action, Status):
            req.action, req.status = f"status {action.code}", action.code
            self._send_error(action)
            return
        try:
            status, reason, headers, data = proxy._forward(self.command, self.path,
                                                           self.headers.items(), body)
        except OSError:
            req.action, req.status = "upstream failed", 502
            self._send_error(Status(502, "BadGateway", "upstream unreachable"))
            return
        req.status = status
        headers, data = proxy._restyle_etags(headers, data)
        out_headers = [(k, v) for k, v in headers
                       if k.lower() not in ("transfer-encoding", "connection", "content-length",
                                            "keep-alive")]
        clen = dict((k.lower(), v) for k, v in headers).get("content-length", "0") \
            if self.command == "HEAD" else str(len(data))
        self.send_response_only(status, reason)
        for k, v in out_headers:
            self.send_header(k, v)
        self.send_header("Content-Length", clen)
        if isinstance(action, ResetMidBody) and self.command != "HEAD" and data:
            req.action = "reset"
            self.end_headers()
            self.wfile.write(data[: int(len(data) * action.fraction)])
            self.wfile.flush()
            self._abort()
            return
        if isinstance(action, Trickle) and self.command != "HEAD":
            req.action = "trickle"
            self.end_headers()
            self.wfile.flush()
            deadline = time.monotonic() + MAX_FAULT_SECONDS
            try:
                for i in range(0, len(data), action.chunk):
                    if proxy._stopping.wait(action.interval) or time.monotonic() > deadline:
                        break
                    self.wfile.write(data[i: i + action.chunk])
                    self.wfile.flush()
            except OSError:
                pass
            self._abort()
            return
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, action: Status) -> None:
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{action.s3_code}</Code>'
               f"<Message>{action.message}</Message><RequestId>faultproxy</RequestId></Error>"
               ).encode()
        self.send_response_only(action.code)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(xml)))
        if action.code == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(xml)

    def _abort(self) -> None:
        """Reset the client connection (RST, not FIN)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()


@dataclass
class FaultProxy:
    upstream_port: int
    port: int = 0
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context (plain HTTP upstream)
    tls_failures: int = 0
    # request headers not forwarded (lower case), e.g. {"if-match"}: a server that ignores them
    drop_headers: set[str] = field(default_factory=set)
    # how the store shows ETags: None as upstream, "unquoted", "weak" (W/"..."), or "none"
    etag_style: str | None = None
    rule: Rule | None = None
    requests: list[Request] = field(default_factory=list)
    _server: _Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _conns: set[socket.socket] = field(default_factory=set)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._stopping.clear()
        self._server = _Server(self, self.port)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={
            "poll_interval": 0.05}, daemon=True, name=f"faultproxy:{self.port}")
        self._thread.start()
        return self

    def down(self) -> None:
        """Stop listening and cut every open connection: clients get 'connection refused'."""
        self._stopping.set()  # ends hangs and trickles
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def up(self) -> None:
        """Listen again on the same port."""
        for _ in range(50):
            try:
                self.start()
                return
            except OSError:
                time.sleep(0.1)
        self.start()

    def stop(self) -> None:
        self.rule = None
        self.down()

    @property
    def listening(self) -> bool:
        return self._server is not None

    # -- rules and log ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def fault(self, rule: Rule) -> Iterator[FaultProxy]:
        """Apply ``rule`` inside the block; the log is cleared first."""
        self.clear()
        self.rule = rule
        try:
            yield self
        finally:
            self.rule = None
            self._stopping.set()  # release hung handlers
            time.sleep(0.05)
            self._stopping.clear()

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def log(self, match: Callable[[Request], bool] = lambda r: True) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if match(r)]

    def _restyle_etags(self, headers: list[tuple[str, str]], data: bytes,
                       ) -> tuple[list[tuple[str, str]], bytes]:
        """Show the answer's ETags (header and listing XML) as ``etag_style`` says."""
        style = self.etag_style
        if style is None:
            return headers, data

        def restyle(tag: str) -> str | None:
            bare = tag.strip('"')
            return {"unquoted": bare, "weak": f'W/"{bare}"', "none": None}[style]

        out = []
        for k, v in headers:
            if k.lower() == "etag":
                v = restyle(v)
                if v is None:
                    continue
            out.append((k, v))
        if b"<ETag>" in data:
            def xml(m: re.Match[bytes]) -> bytes:
                tag = restyle(html.unescape(m.group(1).decode()))
                return b"" if tag is None else f"<ETag>{html.escape(tag)}</ETag>".encode()

            data = re.sub(rb"<ETag>(.*?)</ETag>", xml, data)
        return out, data

    def _decide(self, req: Request) -> Action | None:
        with self._lock:
            self.requests.append(req)
        rule = self.rule
        return rule(req) if rule is not None else None

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _forward(self, method: str, path: str, headers: Iterator[tuple[str, str]],
                 body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in ("connection", "keep-alive", "proxy-connection",
                                     *self.drop_headers):
                    conn.putheader(k, v)
            conn.putheader("Connection", "close")
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            conn.close()


@contextlib.contextmanager
def fault_proxy(upstream_port: int, tls: ssl.SSLContext | None = None
                ) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port, tls=tls).start()
    try:
        yield proxy
    finally:
        proxy.stop()

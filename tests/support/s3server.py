"""A real `moto_server` process serving S3 over HTTPS with a certificate made by the test.

Usage::

    with moto_s3_server(tmp_dir) as s3:
        s3.create_bucket("data")
        s3.put_bytes("data", "x.zip", payload)
        s3.enable_auth()          # from now on only s3.access_key/s3.secret_key work
        ...

Authentication: moto accepts any key unless IAM enforcement is on. `enable_auth()` creates an
IAM user with an inline policy allowing s3:*, makes an access key for it, and then switches
enforcement on through moto's `/moto-api/reset-auth` endpoint (the runtime form of the
`INITIAL_NO_AUTH_ACTION_COUNT` setting). After that, unknown keys get 403 InvalidAccessKeyId
and a wrong secret gets 403 SignatureDoesNotMatch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import marks
from .tlsgen import CertAuthority, make_ca, make_server_cert

# The keys used before IAM enforcement is switched on (moto accepts anything then).
BOOTSTRAP_KEY = "bootstrap"
BOOTSTRAP_SECRET = "bootstrap-secret"
REGION = "us-east-1"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _moto_server_exe() -> str:
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        raise RuntimeError(
            f"{exe} not found: install the test extras (pip install -e '.[test]') in this venv"
        )
    return str(exe)


@dataclass
class MotoS3Server:
    endpoint_url: str
    ca: CertAuthority
    workdir: Path
    proc: subprocess.Popen
    log_path: Path
    region: str = REGION
    access_key: str = BOOTSTRAP_KEY
    secret_key: str = BOOTSTRAP_SECRET
    auth_enforced: bool = False
    _clients: dict = field(default_factory=dict)

    @property
    def ca_bundle(self) -> Path:
        return self.ca.cert_path

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    # ----- clients -----------------------------------------------------------------------
    def client(
        self,
        service: str = "s3",
        access_key: str | None = None,
        secret_key: str | None = None,
    ):
        """A boto3 client for SERVICE talking to this server, verifying TLS with our CA."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            verify=str(self.ca_bundle),
            config=Config(
                retries={"max_attempts": 2, "mode": "standard"},
                s3={"addressing_style": "path"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )

    @property
    def s3(self):
        key = (self.access_key, self.secret_key)
        if key not in self._clients:
            self._clients[key] = self.client("s3")
        return self._clients[key]

    # ----- data helpers ----------------------------------------------------------------
    def create_bucket(self, bucket: str) -> None:
        self.s3.create_bucket(Bucket=bucket)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> str:
        """Upload DATA; returns the ETag (without quotes)."""
        resp = self.s3.put_object(Bucket=bucket, Key=key, Body=data)
        return resp["ETag"].strip('"')

    def put_file(self, bucket: str, key: str, path: os.PathLike | str) -> str:
        return self.put_bytes(bucket, key, Path(path).read_bytes())

    def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def listing(self, bucket: str, prefix: str = "") -> dict[str, tuple[int, str]]:
        """{key: (size, etag)} for every object under PREFIX."""
        out: dict[str, tuple[int, str]] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = (obj["Size"], obj["ETag"].strip('"'))
        return out

    # ----- authentication --------------------------------------------------------------
    def enable_auth(self, user: str = "zipmount-test") -> tuple[str, str]:
        """Create an IAM user allowed s3:* and switch moto's IAM enforcement on.

        Returns (access_key, secret_key); they become this object's default credentials."""
        if self.auth_enforced:
            return self.access_key, self.secret_key
        iam = self.client("iam")
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName="s3-all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self._moto_api("reset-auth", b"0")
        self.access_key = key["AccessKeyId"]
        self.secret_key = key["SecretAccessKey"]
        self.auth_enforced = True
        return self.access_key, self.secret_key

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def _moto_api(self, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(
            f"{self.endpoint_url}/moto-api/{path}",
            data=data,
            method="POST" if data is not None else "GET",
            # not form-encoded, or Flask swallows the body and moto sees ''
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, context=self._ssl_context(), timeout=10) as resp:
            return resp.read()

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def _wait_until_answers(server: MotoS3Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"moto_server exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            # Verifies the certificate chain against our CA, so this also proves TLS is right.
            server._moto_api("data.json")
            return
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            last_err = exc
            time.sleep(0.1)
    raise RuntimeError(
        f"moto_server did not answer on {server.endpoint_url} within {timeout}s "
        f"(last error: {last_err!r}):\n{server.log_tail()}"
    )


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@contextlib.contextmanager
def moto_s3_server(workdir: Path, start_timeout: float = 30.0) -> Iterator[MotoS3Server]:
    """Start moto_server over HTTPS on a free 127.0.0.1 port; always stop it on exit."""
    marks.require("s3")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca = make_ca(workdir / "ca", "zipmount test CA")
    server_cert = make_server_cert(ca, workdir / "server")
    exe = _moto_server_exe()
    env = dict(os.environ)
    for var in list(env):
        if var.startswith("AWS_") or var == "INITIAL_NO_AUTH_ACTION_COUNT":
            env.pop(var)
    env["MOTO_ALLOW_NONEXISTENT_REGION"] = "true"

    last_error: Exception | None = None
    for attempt in range(3):  # a free port can be taken between probe and bind: retry
        port = free_port()
        log_path = workdir / f"moto_server-{port}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                exe,
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
                "--ssl-cert",
                str(server_cert.cert_path),
                "--ssl-key",
                str(server_cert.key_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        log.close()
        server = MotoS3Server(
            endpoint_url=f"https://127.0.0.1:{port}",
            ca=ca,
            workdir=workdir,
            proc=proc,
            log_path=log_path,
        )
        try:
            _wait_until_answers(server, start_timeout)
        except BaseException as exc:
            stop_process_group(proc)
            last_error = exc
            if attempt < 2 and isinstance(exc, RuntimeError):
                continue
            raise
        try:
            yield server
        finally:
            stop_process_group(proc)
        return
    raise RuntimeError(f"could not start moto_server: {last_error}")

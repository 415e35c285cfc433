"""A real ``moto_server`` process serving S3 over plain HTTP on 127.0.0.1 (no TLS, no auth).

The fault tests put :class:`robust.faultproxy.FaultProxy` between it and the mount; plain HTTP
lets the proxy see requests and answer for the server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import marks
from support.s3server import free_port, stop_process_group

REGION = "us-east-1"
# moto accepts any key while IAM enforcement is off; the secret is only ever used for signing.
ACCESS_KEY = "AKIAZIPMOUNTROBUST01"
SECRET_KEY = "zmSecret+Robust/DoNotLog-7f3a9c2e1b"


@dataclass
class HttpS3:
    endpoint_url: str
    proc: subprocess.Popen
    log_path: Path
    _client: object = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])

    @property
    def s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=REGION,
                aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                              connect_timeout=10, read_timeout=60),
            )
        return self._client

    def create_bucket(self, bucket: str) -> None:
        self.s3.create_bucket(Bucket=bucket)

    def put(self, bucket: str, key: str, data: bytes) -> str:
        """Upload; return the quoted ETag."""
        return self.s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"]

    def delete(self, bucket: str, key: str) -> None:
        self.s3.delete_object(Bucket=bucket, Key=key)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextlib.contextmanager
def moto_http_server(workdir: Path, start_timeout: float = 30.0) -> Iterator[HttpS3]:
    """Start ``moto_server`` on a free loopback port; always stop it on exit."""
    marks.require("s3")
    workdir.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "moto_server"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["MOTO_ALLOW_NONEXISTENT_REGION"] = "true"
    port = free_port()
    log_path = workdir / f"moto-http-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    server = HttpS3(endpoint_url=f"http://127.0.0.1:{port}", proc=proc, log_path=log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited early:\n{server.log_tail()}")
            try:
                with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/data.json",
                                            timeout=2) as resp:
                    resp.read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server not answering:\n{server.log_tail()}") from None
                time.sleep(0.05)
        yield server
    finally:
        stop_process_group(proc)

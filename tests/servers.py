"""Loopback servers for tests, each in its own process.

A server in the test process itself can deadlock: GDAL may hold the interpreter's lock while it
waits for a response that a server thread of the same interpreter then never sends. So every
server here is a subprocess on 127.0.0.1, started once per test session.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

# S3 (moto's server mode) ---------------------------------------------------------------------

#: Credentials moto accepts (any value works; these are the documented test ones).
S3_KEY = "testing"
S3_REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class S3Server:
    """An S3 API (moto) on ``127.0.0.1:port`` in a subprocess."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What boto3, s3fs and GDAL's /vsis3/ need to use this server and nothing else."""
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_KEY,
            "AWS_SESSION_TOKEN": "",
            "AWS_REGION": S3_REGION,
            "AWS_DEFAULT_REGION": S3_REGION,
            # boto3 and s3fs (botocore reads AWS_ENDPOINT_URL)
            "AWS_ENDPOINT_URL": self.endpoint,
            # GDAL's /vsis3/: host:port, plain HTTP, path-style addressing
            "AWS_S3_ENDPOINT": f"127.0.0.1:{self.port}",
            "AWS_HTTPS": "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE",
            # no ~/.aws files or instance metadata lookups
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self):  # boto3 client, imported lazily
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_KEY,
            region_name=S3_REGION,
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, straight from the server (no client-side cache)."""
        paginator = self.client().get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", ()))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3_server(timeout: float = 30.0) -> S3Server:
    """Start moto's S3 server on a free loopback port and wait until it answers."""
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_KEY}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    server = S3Server(port=port, process=process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"moto's S3 server exited at start (code {process.returncode})")
        try:
            with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=1):
                return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto's S3 server did not answer on port {port}") from None
            time.sleep(0.1)


_S3_SERVER: S3Server | None = None


def shared_s3_server() -> S3Server:
    """One S3 server for the whole test process (every module that asks shares it)."""
    global _S3_SERVER
    if _S3_SERVER is None or _S3_SERVER.process.poll() is not None:
        _S3_SERVER = start_s3_server()
        atexit.register(_S3_SERVER.stop)
    return _S3_SERVER


@contextlib.contextmanager
def s3_environment(server: S3Server) -> Iterator[dict[str, str]]:
    """Point boto3, s3fs and GDAL at ``server`` while the block runs (the environment is put
    back afterwards, and fsspec's cached S3 file systems are dropped both ways)."""
    env = server.env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    _forget_s3_filesystems()
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _forget_s3_filesystems()


def _forget_s3_filesystems() -> None:
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()

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
from typing import Any

# S3 (moto's server mode) ---------------------------------------------------------------------

#: Credentials moto accepts (any value works; these are the documented test ones).
S3_KEY = "testing"
S3_REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Subprocess:
    """A server running as ``self.process``."""

    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclasses.dataclass
class S3Server(_Subprocess):
    """An S3 API (moto) on ``127.0.0.1:port`` in a subprocess."""

    port: int
    process: subprocess.Popen[bytes]
    _client: Any = dataclasses.field(default=None, repr=False)

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

    def client(self):  # one boto3 client (imported lazily): making one takes a while
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                aws_access_key_id=S3_KEY,
                aws_secret_access_key=S3_KEY,
                region_name=S3_REGION,
            )
        return self._client

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


# HTTP with range requests ---------------------------------------------------------------------
#
# ``python -m http.server`` ignores Range headers, so a COG would be sent whole for every read.
# This one answers ``Range: bytes=a-b`` (and ``a-``, ``-n``) with 206 and counts what it sends:
# ``GET /__stats`` returns {"requests": n, "ranges": n, "bytes": n, "log": [[method, path,
# range], ...]} and ``GET /__reset`` zeroes it (neither is counted).


@dataclasses.dataclass
class HTTPServer(_Subprocess):
    """A static file server with range requests on ``127.0.0.1:port``, in a subprocess."""

    port: int
    directory: str
    process: subprocess.Popen[bytes]

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def _get(self, what: str) -> dict:
        import json

        with urllib.request.urlopen(self.url(what), timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict:
        """Requests, range requests and body bytes served since the last :meth:`reset`."""
        return self._get("__stats")

    def reset(self) -> None:
        self._get("__reset")


def start_http_server(directory: str | os.PathLike[str], timeout: float = 30.0) -> HTTPServer:
    """Serve ``directory`` over HTTP with range requests from a subprocess; wait until it
    answers. The subprocess prints its port (bound to port 0 by the OS, so no race)."""
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "http", os.fspath(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()  # ends when the server is listening
    if not line.isdigit():
        process.kill()
        process.wait()
        raise RuntimeError(f"the HTTP test server did not start (said {line!r})")
    server = HTTPServer(port=int(line), directory=os.fspath(directory), process=process)
    deadline = time.monotonic() + timeout
    while True:
        try:
            server.stats()
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"the HTTP test server did not answer on {line}") from None
            time.sleep(0.05)


def refused_url(name: str = "a.tif") -> str:
    """A loopback URL where nothing listens (a port just freed): connections are refused."""
    return f"http://127.0.0.1:{_free_port()}/{name}"


def _serve_http(directory: str) -> None:
    import http.server
    import json
    import re
    import shutil
    import threading

    lock = threading.Lock()
    stats: dict = {"requests": 0, "ranges": 0, "bytes": 0, "log": []}
    root = os.path.abspath(directory)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: GDAL reuses its connection

        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            if self.path in ("/__stats", "/__reset"):
                with lock:
                    if self.path == "/__reset":
                        stats.update(requests=0, ranges=0, bytes=0, log=[])
                    self._send(200, json.dumps(stats).encode(), "application/json")
                return
            self._serve(body=True)

        def _send(self, code: int, body: bytes, kind: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0].split("#", 1)[0]
            local = os.path.abspath(os.path.join(root, path.lstrip("/")))
            header = self.headers.get("Range")
            with lock:
                stats["requests"] += 1
                stats["ranges"] += header is not None
                stats["log"].append([self.command, path, header])
            if not local.startswith(root + os.sep) or not os.path.isfile(local):
                self._send(404, b"not found")
                return
            size = os.path.getsize(local)
            start, end, code = 0, size - 1, 200
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", header or "")
            if match and (match[1] or match[2]):  # one range; several are answered whole
                if match[1]:
                    start = int(match[1])
                    end = min(int(match[2]), size - 1) if match[2] else size - 1
                else:
                    start = max(0, size - int(match[2]))
                if start >= size or end < start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                code = 206
            length = end - start + 1
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(length))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if not body:
                return
            with open(local, "rb") as f:
                f.seek(start)
                shutil.copyfileobj(_Limited(f, length), self.wfile)
            with lock:
                stats["bytes"] += length

    class _Limited:
        def __init__(self, f, length: int) -> None:
            self.f, self.left = f, length

        def read(self, n: int = -1) -> bytes:
            n = self.left if n < 0 else min(n, self.left)
            data = self.f.read(n)
            self.left -= len(data)
            return data

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "http":
        _serve_http(sys.argv[2])
    else:
        sys.exit("usage: python servers.py http DIRECTORY")

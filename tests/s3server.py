"""A real S3 API on localhost for tests: moto's server (a dev dependency), one bucket, and the environment that points
pyarrow, Polars and yolo-audit's tasks at it. Used in process (`test_object_store`) and by subprocess scripts
(`test_multinode`, which put this folder on sys.path)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs


def start(bucket: str) -> tuple[subprocess.Popen, dict[str, str], pafs.S3FileSystem]:
    """Start the server on a free port and create `bucket`; the caller sets the returned environment and stops it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}  # fmt: skip
    fs = pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1", scheme="http",
                           endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True)  # fmt: skip
    for _ in range(100):
        try:
            fs.create_dir(bucket)
            return server, env, fs
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto_server did not start: pip install 'moto[server]' (a dev dependency)")


def upload(fs: pafs.S3FileSystem, folder: Path, prefix: str) -> None:
    """Every checkpoint file under `folder` to `prefix` (bucket/path) in the bucket, at the same relative paths."""
    for path in folder.rglob("*.pt"):
        with fs.open_output_stream(f"{prefix}/{path.relative_to(folder)}") as out:
            out.write(path.read_bytes())

"""An S3 server on 127.0.0.1 for the benches that need an S3 endpoint: moto (in the bench's own process, as the tests
use it), or s3rver (Node.js, its own process, objects on disk), which serves requests several times faster than moto
here, so that a bench's S3 figures say more about the job and less about the server."""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time


class S3rver:
    """s3rver 3.7.1 (`npm install s3rver@3.7.1`) as a child process. It makes ListObjectsV2's continuation tokens
    with DES, which Node's OpenSSL 3 keeps in its legacy provider: without that provider a second page is a 500.
    It checks every request's signature against its one key pair, as S3 does."""

    key = "S3RVER"

    def __init__(self, executable: str, port: int):
        self.data = tempfile.mkdtemp(prefix="s3rver-")
        env = dict(os.environ, NODE_OPTIONS="--openssl-legacy-provider")
        self.log = tempfile.TemporaryFile()  # not a pipe: nobody reads one while it serves, and a full one blocks it
        self.proc = subprocess.Popen([executable, "-d", self.data, "-a", "127.0.0.1", "-p", str(port), "--silent"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        for _ in range(100):  # it takes a moment to listen
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"s3rver exited: {self.log.read().decode(errors='replace')[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"s3rver did not listen on port {port}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)


def start_s3_server(bucket: str, s3rver: str | None = None):
    """Start the server (s3rver when its executable is given, else moto), point this process's AWS settings at it,
    create `bucket`; returns (server, those settings) for the bench's child processes. `server.stop()` ends it."""
    import boto3
    from gan.ray_runtime import free_port
    port = free_port()
    if s3rver:
        server = S3rver(s3rver, port)
    else:
        from moto.server import ThreadedMotoServer
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    key = S3rver.key if s3rver else "bench"
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": key,
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(aws)
    boto3.client("s3").create_bucket(Bucket=bucket)
    return server, aws

"""A moto S3 server on 127.0.0.1, in the bench's own process, for the benches that need an S3 endpoint."""
from __future__ import annotations

import logging
import os


def start_moto_server(bucket: str):
    """Start the server, point this process's AWS settings at it, create `bucket`; returns (server, those settings)
    for the bench's child processes."""
    import boto3
    from moto.server import ThreadedMotoServer
    from gan.ray_runtime import free_port
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's line per request
    aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(aws)
    boto3.client("s3").create_bucket(Bucket=bucket)
    return server, aws

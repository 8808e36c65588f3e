"""The S3 fault proxy is transparent until told to fail (HEAD sizes included: the API sizes
downloads with a HEAD), then answers 503 SlowDown to everything."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.faults.s3proxy import FlakyS3Proxy


def test_proxy_is_transparent_until_broken(s3_server):
    proxy = FlakyS3Proxy(s3_server["endpoint"])
    try:
        client = boto3.client(
            "s3",
            endpoint_url=proxy.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(retries={"max_attempts": 1}),
        )
        client.put_object(Bucket=s3_server["bucket"], Key="k", Body=b"x" * 1234)
        assert client.head_object(Bucket=s3_server["bucket"], Key="k")["ContentLength"] == 1234
        assert client.get_object(Bucket=s3_server["bucket"], Key="k")["Body"].read() == b"x" * 1234
        proxy.broken = True
        with pytest.raises(ClientError, match="SlowDown"):
            client.get_object(Bucket=s3_server["bucket"], Key="k")
        assert proxy.failed >= 1
    finally:
        proxy.close()

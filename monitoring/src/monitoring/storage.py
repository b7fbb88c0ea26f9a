"""Reading and writing bytes at s3://bucket/key or a local path, the two kinds of location the job knows."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def s3_client():
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 3}, max_pool_connections=32))


def split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split(uri)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri.removeprefix("file://")).read_bytes()


def write_bytes(uri: str, body: bytes, content_type: str = "application/octet-stream") -> None:
    if is_s3(uri):
        bucket, key = split(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
        return
    path = Path(uri.removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError:
            return False
    return Path(uri.removeprefix("file://")).exists()


def list_prefix(uri: str) -> list[str]:
    """Every object (file) below `uri`, as full URIs."""
    if is_s3(uri):
        bucket, prefix = split(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [f"s3://{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", [])]
    root = Path(uri.removeprefix("file://"))
    if not root.is_dir():
        raise FileNotFoundError(f"{uri}: no such directory")
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))

"""Objects at `s3://bucket/key` or a local path: the one way every component reads and writes them.

fsspec (s3fs for s3://), from the caller's environment. S3's endpoint and credentials come from the
environment as for every AWS client: AWS_ENDPOINT_URL (MinIO, moto), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY;
a process that acts for someone else passes that identity as `credentials` (an environment of those names).
"""

from __future__ import annotations


def _fs(uri: str, credentials: dict | None = None):
    from fsspec.core import url_to_fs

    if credentials and is_s3(uri):
        options = {"key": credentials["AWS_ACCESS_KEY_ID"], "secret": credentials["AWS_SECRET_ACCESS_KEY"],
                   "endpoint_url": credentials.get("AWS_ENDPOINT_URL")}  # fmt: skip
        return url_to_fs(uri, **options)
    return url_to_fs(uri.removeprefix("file://"))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def read_bytes(uri: str, credentials: dict | None = None) -> bytes:
    fs, path = _fs(uri, credentials)
    return fs.cat_file(path)


def write_bytes(uri: str, body: bytes, credentials: dict | None = None) -> None:
    fs, path = _fs(uri, credentials)
    if not is_s3(uri):
        fs.makedirs(fs._parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(body)


def list_objects(prefix: str, credentials: dict | None = None) -> list[str]:
    """Every object below `prefix`, as full URIs, in order; none for an empty S3 prefix, an error for a missing folder."""
    fs, path = _fs(prefix, credentials)
    if not is_s3(prefix) and not fs.isdir(path):
        raise FileNotFoundError(f"{prefix}: no such directory")
    fs.invalidate_cache()  # s3fs keeps listings: a prefix that is being written to must be listed afresh
    found = fs.find(path.rstrip("/") + "/") if is_s3(prefix) else fs.find(path)
    scheme = "s3://" if is_s3(prefix) else ""
    return sorted(f"{scheme}{p}" for p in found if not p.rsplit("/", 1)[-1].startswith("."))


def read_many(uris: list[str], credentials: dict | None = None) -> dict[str, bytes | Exception]:
    """Many objects at once (s3fs fetches them concurrently); an object that cannot be read maps to its error."""
    if not uris:
        return {}
    fs, _ = _fs(uris[0], credentials)
    paths = {_fs(u, credentials)[1]: u for u in uris}
    got = fs.cat(list(paths), on_error="return")
    return {paths[p]: body for p, body in got.items()}


def parse_table(src: str, raw: bytes):
    """A parquet, csv or csv.gz file's bytes as a DataFrame (the caller's pandas); SourceError naming `src`."""
    import io

    import pandas as pd

    from ride.rules import SourceError

    name = src.split("?")[0].lower()
    try:
        if name.endswith(".parquet"):
            return pd.read_parquet(io.BytesIO(raw))
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(io.BytesIO(raw), compression="gzip" if name.endswith(".gz") else None)
    except Exception as e:
        raise SourceError(f"{src}: cannot parse: {e}") from None
    raise SourceError(f"{src}: unknown format (expected .parquet, .csv or .csv.gz)")

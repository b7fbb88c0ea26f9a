"""Download each SRC URI into the directory DEST, as KServe's storage initializer does before a model server starts.

This stands in for KServe's storage-initializer image (kserve/storage-initializer), which cannot be pulled where no
registry is reachable. It takes the same arguments: KServe's controller injects it as the init container of each
predictor pod with args [storageUri, /mnt/models], an emptyDir at /mnt/models that the model server then reads. The
download is kserve-storage's, as in upstream's image, so DEST receives what it would: the objects under an s3://
prefix land directly in DEST, with their paths below the prefix kept (s3://mlflow/1/abc/artifacts/model holding
model/MLmodel and model/model.pkl gives DEST/MLmodel and DEST/model.pkl); a URI naming one object gives
DEST/<its name>; a single .tar.gz/.tgz/.zip is unpacked.

S3 settings come from the environment, as the controller sets them from the ServiceAccount's secret:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL (e.g. http://minio.taxi-mlops:9000), S3_VERIFY_SSL,
AWS_DEFAULT_REGION. This image fetches s3://, http(s):// and local paths; the other schemes' SDKs are left out.

One line per pair on stderr (what, where, files, bytes, seconds). Exit status: 0 all downloaded, 1 a download
failed (one line saying which URI and why), 2 bad usage.
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger("storage_initializer")

parser = argparse.ArgumentParser(prog="python -m storage_initializer", usage="%(prog)s SRC DEST [SRC DEST ...]",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("pairs", nargs="*", metavar="SRC DEST",
                    help="a storage URI (s3://bucket/prefix, http(s)://…, a local path) and the directory to fill")

# The modules kserve-storage imports for a scheme whose SDK this image leaves out (pyproject.toml), and their packages.
MISSING_SDK = {"google": ("gs://", "google-cloud-storage"), "azure": ("Azure", "azure-storage-blob"),
               "huggingface_hub": ("hf://", "huggingface-hub"), "dulwich": ("git", "dulwich"),
               "hdfs": ("hdfs://", "hdfs"), "krbcontext": ("hdfs://", "krbcontext")}


def main() -> None:
    args = parser.parse_args()
    if not args.pairs or len(args.pairs) % 2:
        parser.error(f"expected pairs of SRC DEST, got {len(args.pairs)} argument(s)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    # kserve-storage logs each object it finds, and logs its errors before raising them: we say both once.
    for name in ("storage", "botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from kserve_storage import Storage

    for src, dest in zip(args.pairs[::2], args.pairs[1::2]):
        started = time.monotonic()
        try:
            Storage.download(src, dest)
        except Exception as e:  # kserve-storage raises RuntimeError for what it foresaw, SDK errors for the rest
            fail(f"cannot download {src} into {dest}: {reason(e, src)}")
        files, size = tally(Path(dest))
        log.info("%s -> %s: %d file%s, %d bytes in %.1f s", src, dest, files, "" if files == 1 else "s", size,
                 time.monotonic() - started)


def reason(e: Exception, src: str) -> str:
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in MISSING_SDK:
        scheme, package = MISSING_SDK[e.name.split(".")[0]]
        return f"{scheme} URIs need {package}, which this image leaves out (it fetches s3://, http(s):// and local paths)"
    text = denied(e.__cause__, src) or " ".join(str(e).split()) or type(e).__name__
    # No S3 error we know of quotes a secret key; this keeps it so should one start to.
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return text.replace(secret, "***") if secret else text


def denied(cause: BaseException | None, src: str) -> str | None:
    """What a refused HeadBucket means: it has no body, so kserve-storage can only say "S3 error [403]: Forbidden"."""
    response = getattr(cause, "response", None)
    if not isinstance(response, dict) or getattr(cause, "operation_name", "") != "HeadBucket":
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    endpoint, bucket = os.environ.get("AWS_ENDPOINT_URL") or "S3", urlparse(src).netloc
    if status == 404:
        return f"{endpoint} has no bucket {bucket!r}"
    if status == 403:
        return (f"{endpoint} refused access to bucket {bucket!r} (HTTP 403): AWS_ACCESS_KEY_ID is unknown there, "
                "AWS_SECRET_ACCESS_KEY is not its secret, or its policy does not let it list the bucket")
    return None


def tally(dest: Path) -> tuple[int, int]:
    """Files under dest and their bytes (kserve-storage links, rather than copies, a local source)."""
    files = [p for p in dest.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()

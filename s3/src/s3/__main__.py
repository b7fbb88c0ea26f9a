"""`python -m s3`: moto's S3 and IAM server, standing in for MinIO where MinIO's image cannot be had.

Every request is allowed until the first caller has made the buckets, users and policies, then each is checked
against the caller's policy documents (POST /moto-api/reset-auth with 0, as `local`'s S3 endpoint does). State is in
memory: a restarted container starts empty, unlike MinIO on its volume.
"""

import argparse
import logging
import os
import signal
import threading

parser = argparse.ArgumentParser(prog="python -m s3", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
parser.add_argument("--port", type=int, default=9000, help="port to listen on, MinIO's (default: %(default)s)")


def main() -> None:
    args = parser.parse_args()
    # Path-style only, as MinIO: a Service name with dots (minio.taxi-mlops) is a host, not bucket "minio".
    os.environ.setdefault("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
    from moto.server import ThreadedMotoServer

    # werkzeug logs every request and a development-server banner; this is a stand-in, its callers log what matters.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=args.host, port=args.port, verbose=False)
    server.start()
    print(f"S3 (moto) listening on {args.host}:{args.port}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop()


if __name__ == "__main__":
    main()

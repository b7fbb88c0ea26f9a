"""`python -m s3`: moto's S3 and IAM server, standing in for MinIO where MinIO's image cannot be had.

Without --policies every request is allowed, until a caller turns the checks on itself (POST /moto-api/reset-auth
with 0, as `local`'s S3 endpoint does after making its users).

With --policies and --credentials it does at every start, before it listens, what MinIO's set-up Job does once
with `mc`: it makes the --buckets, one user per policy document USER.json with that document and the access key id
and secret of the files USER/AWS_ACCESS_KEY_ID and USER/AWS_SECRET_ACCESS_KEY under --credentials (ids chosen
there, not made up), and MinIO's root from MINIO_ROOT_USER and MINIO_ROOT_PASSWORD, allowed everything. From the
first request on, each is checked against its signer's policy; unsigned requests and moto's control API
(/moto-api/) are refused. The port opens only once this is done; GET /minio/health/ready and /minio/health/live
answer 200, as MinIO's do. State is in memory: a restarted server starts again from the documents with empty
buckets, unlike MinIO on its volume. A missing or unusable document: one line naming it, exit 2.

`python -m s3 check --help`: what the set-up Job runs instead of `mc`, to check a server's users.
"""

import argparse
import os
import sys
from pathlib import Path

from .documents import InputError, read_users

parser = argparse.ArgumentParser(prog="python -m s3", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
parser.add_argument("--port", type=int, default=9000, help="port to listen on, MinIO's (default: %(default)s)")
parser.add_argument("--buckets", default="", metavar="NAME,…",
                    help="buckets to make at start, comma-separated, e.g. mlflow,predictions (default: none)")
parser.add_argument("--policies", type=Path, metavar="DIR",
                    help="one AWS policy document per user, DIR/USER.json (the ConfigMap s3-policies): "
                         "enforce them (needs --credentials)")  # fmt: skip
parser.add_argument("--credentials", type=Path, metavar="DIR",
                    help="DIR/USER/AWS_ACCESS_KEY_ID and DIR/USER/AWS_SECRET_ACCESS_KEY per user (the Secrets s3-USER)")

check_parser = argparse.ArgumentParser(
    prog="python -m s3 check",
    description="What MinIO's set-up Job checks with `mc`, for moto's server provisioned by `python -m s3 --policies`:\n"
    "for every user in --credentials, a request signed with its keys that its policy grants is allowed (a list, a\n"
    "read of a key that is not there, or a conditional write that writes nothing), and a read in a bucket none of\n"
    "its policy's resources names is refused with AccessDenied (a bucket another user's policy names, so e.g. the\n"
    "transformer is refused s3://mlflow/). One line per user; exit 0 when every user passes, 1 otherwise, 2 when a\n"
    "document is missing or unusable. Waits up to --timeout for the server to answer, as a Job's retries would.",
    formatter_class=argparse.RawDescriptionHelpFormatter,
)
check_parser.add_argument("--url", required=True, help="the S3 endpoint, e.g. http://minio:9000")
check_parser.add_argument("--credentials", type=Path, required=True, metavar="DIR",
                          help="DIR/USER/AWS_ACCESS_KEY_ID and DIR/USER/AWS_SECRET_ACCESS_KEY per user")  # fmt: skip
check_parser.add_argument("--policies", type=Path, metavar="DIR",
                          help="DIR/USER.json per user: without it only the refusal is checked (AccessDenied comes "
                               "after the signature check, so it shows the keys were accepted)")  # fmt: skip
check_parser.add_argument("--timeout", type=float, default=60,
                          help="seconds to wait for the server to answer (default: %(default)s)")  # fmt: skip


def run_server(args: argparse.Namespace) -> None:
    # Path-style only, as MinIO: a Service name with dots (minio.taxi-mlops) is a host, not bucket "minio".
    os.environ.setdefault("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
    from .server import provision, root_user, serve

    buckets = [b.strip() for b in args.buckets.split(",") if b.strip()]
    enforced = args.policies is not None
    if enforced != (args.credentials is not None):
        raise InputError("--policies and --credentials go together: a user's policy document and its keys")
    if enforced:
        users = read_users(args.credentials, args.policies)
        root = os.environ.get("MINIO_ROOT_USER"), os.environ.get("MINIO_ROOT_PASSWORD")
        if any(root) and not all(root):
            raise InputError("MINIO_ROOT_USER and MINIO_ROOT_PASSWORD go together: set both, or neither")
        provision(buckets, [*users, *([root_user(*root, users)] if all(root) else [])])
        state = (f"{len(users)} users from {args.policies}{' and the root' if all(root) else ''}, "
                 f"buckets {', '.join(buckets) or 'none'}")  # fmt: skip
    else:
        provision(buckets, [])
        state = f"buckets {', '.join(buckets) or 'none'}, every request allowed"
    serve(args.host, args.port, enforced, f"S3 (moto) listening on {args.host}:{args.port}; {state}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["check"]:
            args = check_parser.parse_args(argv[1:])
            from .check import check

            sys.exit(check(args.url, read_users(args.credentials, args.policies), args.timeout))
        run_server(parser.parse_args(argv))
    except InputError as e:
        print(f"python -m s3: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

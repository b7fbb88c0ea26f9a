"""moto's S3 and IAM server, provisioned in its own memory before it takes a request."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from contextlib import nullcontext

from .documents import InputError, User

REGION = "us-east-1"
# MinIO's probe paths, so the Deployment's probes stay as they are.
HEALTH = ("/minio/health/live", "/minio/health/ready")
ROOT_USER = "root"
ALLOW_EVERYTHING = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})


def _message(e: Exception) -> str:
    return getattr(e, "message", None) or str(e)


def provision(buckets: Iterable[str], users: list[User]) -> None:
    """The buckets, and an IAM user per policy with its document and the access key of the ids it was given.

    Done on moto's backends in this process rather than over its API: the IAM API makes every access key id up, and
    ours are chosen (the Secrets every component reads). Setting a model's attributes is what moto's maintainers
    point to for values its API will not take (getmoto/moto#2207).
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.exceptions import MalformedPolicyDocument
    from moto.iam.models import iam_backends
    from moto.s3.models import s3_backends

    # A request signed for us-east-1 is served by the "aws" partition of the default account.
    s3 = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for bucket in dict.fromkeys(buckets):
        try:
            s3.create_bucket(bucket, REGION)
        except Exception as e:  # moto's S3 errors: an invalid name
            raise InputError(f"--buckets: {bucket!r}: {_message(e)}") from None
    for user in users:
        iam.create_user(REGION, user.name)
        try:
            iam.put_user_policy(user.name, user.name, user.policy_text)
        except MalformedPolicyDocument as e:
            raise InputError(f"{user.policy_path or 'the root policy'}: {_message(e)}") from None
        key = iam.create_access_key(user.name)
        # The backend finds a key by its id (IAMBackend.access_keys), the signature check through the user's list.
        del iam.access_keys[key.access_key_id]
        key.access_key_id, key.secret_access_key = user.access_key_id, user.secret_access_key
        iam.access_keys[key.access_key_id] = key


def root_user(access_key_id: str, secret_access_key: str, users: list[User]) -> User:
    """MinIO's root as an IAM user allowed everything."""
    for user in users:
        if user.name == ROOT_USER:
            raise InputError(f"{user.policy_path}: the user {ROOT_USER} is MinIO's root (MINIO_ROOT_USER): rename it")
        if user.access_key_id == access_key_id:
            raise InputError(f"MINIO_ROOT_USER: the same access key id as user {user.name}'s")
    return User(ROOT_USER, access_key_id, secret_access_key, policy_text=ALLOW_EVERYTHING)


def _answer(start_response, status: str, body: bytes, content_type: str = "text/plain") -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


UNSIGNED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied: sign the '
            b"request with an access key in its Authorization header</Message></Error>")  # fmt: skip


def gate(app: Callable, enforced: bool) -> Callable:
    """MinIO's health paths answered here; while policies are enforced, moto's control API and unsigned requests
    refused."""

    def wsgi(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in HEALTH:
            return _answer(start_response, "200 OK", b"")
        if enforced and path.startswith("/moto-api"):
            # It takes no credentials: anyone could wipe every bucket (/moto-api/reset) or turn the checks off.
            return _answer(start_response, "403 Forbidden", b"moto's control API is off: this server enforces policies\n")
        if enforced and "HTTP_AUTHORIZATION" not in environ:
            # moto's checks read that header unconditionally and fail with a 500 without it (presigned URLs too).
            return _answer(start_response, "403 Forbidden", UNSIGNED, "application/xml")
        return app(environ, start_response)

    return wsgi


def serve(host: str, port: int, enforced: bool, ready_line: str) -> None:
    """Listen until SIGTERM or SIGINT; with `enforced`, every request is checked against its signer's policies."""
    from moto.core import enable_iam_authentication
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    # werkzeug logs every request; this is a stand-in, its callers log what matters.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = gate(DomainDispatcherApplication(create_backend_app), enforced)
    try:
        server = make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
    except OSError as e:
        raise InputError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    # moto counts requests against INITIAL_NO_AUTH_ACTION_COUNT (infinite unless set); this sets it to 0 for the
    # server's life, what `POST /moto-api/reset-auth` with 0 does, before the first request can arrive.
    with enable_iam_authentication() if enforced else nullcontext():
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        print(ready_line, flush=True)
        stopped.wait()
        server.shutdown()
        thread.join()


"""The system's processes on one machine: an S3 endpoint, an MLflow server, the predictor, the transformer.

Used by `python -m local` (make demo / up / down) and by the black-box tests, so both run the same way.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import requests

from ride import store

ROOT = Path(__file__).resolve().parents[3]
BUCKETS = ("mlflow", "predictions", "monitoring", "data", "actuals")
# One S3 user per component, each with the policy document of its name: the documents the cluster's set-up Job
# gives MinIO, read from the same files.
POLICIES = ROOT / "manifests" / "base" / "s3-policies"
USERS = tuple(sorted(p.stem for p in POLICIES.glob("*.json")))


class StepError(Exception):
    """A step of the system on one machine failed; the message says which and where its log is."""


def component_python(component: str) -> str:
    python = ROOT / component / ".venv" / "bin" / "python"
    if not python.exists():
        raise StepError(f"{component} environment missing: run `make setup`")
    return str(python)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout: float = 60, interval: float = 0.2):
    """Poll `check` until it returns something truthy; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # the thing polled is not up yet
            last = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def http_ok(url: str) -> bool:
    return requests.get(url, timeout=2).status_code == 200


@dataclass
class Process:
    """A component run as a subprocess with its output in a log file."""

    cmd: list[str]
    env: dict
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> "Process":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int | None:
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class S3Endpoint:
    """MinIO when a `minio` binary is on PATH, else moto's server on 127.0.0.1, enforcing the cluster's policies.

    Each component gets its own user with the policy document of the same name in POLICIES, as the set-up Job
    gives it in the cluster; `env_for(user)` is that component's environment. `client()` is the admin (MinIO's
    root, or a moto user allowed everything), for set-up and for reading S3 directly.

    Both can be stopped and started again with their objects and users intact (MinIO keeps them on disk, moto's
    threaded server in this process's memory), which the fault tests rely on.
    """

    def __init__(self, workdir: Path, port: int | None = None, in_process: bool = True):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.minio = shutil.which("minio")
        self.kind = "minio" if self.minio else "moto"
        self.in_process = in_process
        # MinIO's root; moto checks no key until set-up is done, then the admin user's (made in `_provision_moto`).
        self.access_key, self.secret_key = ("taxi-local", "taxi-local-secret")
        self.users: dict[str, tuple[str, str]] = {}  # user -> (access key, secret key)
        self._server = None

    def _keys(self, user: str | None) -> tuple[str, str]:
        if user is None:
            return self.access_key, self.secret_key
        if user not in self.users:
            raise StepError(f"no S3 user {user!r}: the users are {', '.join(USERS)} (one per policy in {POLICIES})")
        return self.users[user]

    def env_for(self, user: str | None = None) -> dict:
        """The environment of a process that reaches S3 as `user` (one of USERS), or as the admin."""
        access_key, secret_key = self._keys(user)
        return {
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
            "MLFLOW_S3_ENDPOINT_URL": self.url,
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
        }

    def start(self) -> "S3Endpoint":
        self._launch()
        wait_until(lambda: self.client().list_buckets() is not None, f"S3 ({self.kind}) at {self.url}", timeout=30)
        if not self.users:  # first start; a restart finds the buckets and users where it left them
            self.create_buckets()
            if self.minio:
                self._provision_minio()
            else:
                self._provision_moto()
            self._check_enforced()
        return self

    def _launch(self) -> None:
        """Start the server (a subclass may run it elsewhere, e.g. in a container, and keep its `stop()`)."""
        if self.minio:
            env = {**os.environ, "MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key}
            self._server = Process(
                [self.minio, "server", str(self.workdir / "minio-data"), "--address", f"127.0.0.1:{self.port}"],
                env,
                self.workdir / "minio.log",
            ).start()
        elif not self.in_process:
            self._server = Process(
                [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                dict(os.environ),
                self.workdir / "moto.log",
            ).start()
        else:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()

    def _provision_moto(self) -> None:
        """IAM users with the policy documents, then every request checked (moto's INITIAL_NO_AUTH_ACTION_COUNT,
        set to 0 through its API once set-up is done)."""
        iam = boto3.client("iam", endpoint_url=self.url, region_name="us-east-1",
                           aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)  # fmt: skip
        everything = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        admin = json.dumps({"Version": "2012-10-17", "Statement": [everything]})
        for user, document in [("admin", admin), *((u, (POLICIES / f"{u}.json").read_text()) for u in USERS)]:
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=document)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.users[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        self.access_key, self.secret_key = self.users.pop("admin")
        requests.post(f"{self.url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()

    def _provision_minio(self) -> None:
        """What the cluster's set-up Job does with `mc admin`: a policy, a user and their attachment per component."""
        from minio.credentials import StaticProvider
        from minio.error import MinioAdminException
        from minio.minioadmin import MinioAdmin

        admin = MinioAdmin(endpoint=f"127.0.0.1:{self.port}", secure=False,
                           credentials=StaticProvider(self.access_key, self.secret_key))  # fmt: skip
        for user in USERS:
            secret = secrets.token_hex(24)
            admin.policy_add(user, policy_file=POLICIES / f"{user}.json")
            admin.user_add(user, secret)
            try:
                admin.attach_policy([user], user=user)
            except MinioAdminException as e:  # a MinIO kept from an earlier run: attached already
                if "XMinioAdminPolicyChangeAlreadyApplied" not in str(e):
                    raise
            self.users[user] = (user, secret)

    def _check_enforced(self) -> None:
        """A component's key must be refused what its policy does not grant, or none of this is tested."""
        from botocore.exceptions import ClientError

        try:
            self.client("transformer").get_object(Bucket="mlflow", Key="model.pkl")
        except ClientError as e:
            if e.response["Error"]["Code"] == "AccessDenied":
                return
            raise
        raise StepError(f"S3 ({self.kind}) at {self.url} does not enforce the users' policies")

    @property
    def pid(self) -> int:
        """The server's process, when it runs as one (MinIO, or moto with in_process=False)."""
        if not isinstance(self._server, Process):
            raise StepError("an in-process S3 server has no pid of its own")
        return self._server.proc.pid

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, user: str | None = None):
        """An S3 client as `user`, or as the admin."""
        access_key, secret_key = self._keys(user)
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
        )

    def create_buckets(self, names=BUCKETS) -> None:
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        for name in names:
            if name not in existing:
                s3.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys of the objects below the folder `prefix` of `bucket`, as the admin sees them."""
        return [u.removeprefix(f"s3://{bucket}/") for u in store.list_objects(f"s3://{bucket}/{prefix}", self.env_for())]

    def download_dir(self, uri: str, dest: Path) -> list[Path]:
        out = []
        for found in store.list_objects(uri, self.env_for()):
            path = dest / found[len(uri.rstrip("/")) :].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.read_bytes(found, self.env_for()))
            out.append(path)
        return out


def mlflow_server(
    workdir: Path, s3: S3Endpoint, *extra: str, port: int | None = None, user: str = "mlflow"
) -> tuple[Process, str]:
    """The tracking server; as in the cluster it only reads S3 (`--no-serve-artifacts`: clients write themselves)."""
    port = port or free_port()
    env = {**os.environ, **s3.env_for(user)}
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [component_python("tracking"), "-m", "tracking", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--port", str(port), *extra]  # fmt: skip
    proc = Process(cmd, env, workdir / "mlflow.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), f"MLflow server at {url}", timeout=180, interval=0.5)
    except TimeoutError:
        proc.stop()
        raise StepError(f"MLflow server did not start; see {proc.log_path}")
    return proc, url


def start_predictor(workdir: Path, s3: S3Endpoint, model_dir: str, port: int | None = None) -> tuple[Process, str]:
    """The local stand-in for KServe's sklearn runtime, serving `model_dir` (s3://…) as trip-duration."""
    port = port or free_port()
    proc = Process(
        [component_python("transformer"), "-m", "transformer.sklearn_runtime", "--model_name", "trip-duration",
         "--model_dir", model_dir, "--http_port", str(port)],
        {**os.environ, **s3.env_for("predictor"), "OMP_NUM_THREADS": "1"},
        workdir / f"predictor-{port}.log",
    ).start()  # fmt: skip
    host = f"127.0.0.1:{port}"
    wait_until(
        lambda: proc.alive() and http_ok(f"http://{host}/v2/models/trip-duration/ready"),
        f"predictor at {host} (log: {proc.log_path})",
        timeout=90,
    )
    return proc, host


def start_transformer(
    workdir: Path, s3: S3Endpoint, predictor_host: str, log_uri: str, version: str, port: int | None = None,
    args: tuple[str, ...] = (), **env: str,
) -> tuple[Process, str]:
    port = port or free_port()
    proc = Process(
        [component_python("transformer"), "-m", "transformer", "--model_name", "trip-duration",
         "--predictor_host", predictor_host, "--predictor_protocol", "v2", "--http_port", str(port), *args],
        {
            **os.environ,
            **s3.env_for("transformer"),
            "MODEL_VERSION": version,
            "PREDICTION_LOG_URI": log_uri,
            "PREDICTION_LOG_SPILL_DIR": str(workdir / f"spill-{port}"),
            "PREDICTION_LOG_FLUSH_SECONDS": "0.5",
            **env,
        },
        workdir / f"transformer-{port}.log",
    ).start()  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: proc.alive() and http_ok(f"{url}/v1/models/trip-duration"), f"transformer at {url}", timeout=60)
    return proc, url

"""The s3 image's server (`python -m s3`), as the cluster's `minio` pod runs it: provisioned at start from the
policy documents and the keys mounted as files, enforcing each user's policy from its first request; and
`python -m s3 check`, which the set-up Job runs against it."""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import uuid

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from harness import BUCKETS, POLICIES, USERS, Process, component_python, free_port, wait_until
from test_security import ACCESS, observed

ROOT_KEYS = ("root-user", secrets.token_hex(16))


def credentials_dir(path, secret_of=lambda user: secrets.token_hex(24)) -> dict[str, tuple[str, str]]:
    """One folder per user with its key files, laid out as the kubelet mounts the projected Secrets s3-<user> (each
    entry a link into `..data`, itself a link to a timestamped folder); the access key id is the user's name, as
    `make secret` chooses it."""
    keys, data = {}, path / "..2030_01_01_00_00_00.000000001"
    for user in USERS:
        (data / user).mkdir(parents=True)
        keys[user] = (user, secret_of(user))
        (data / user / "AWS_ACCESS_KEY_ID").write_text(keys[user][0] + "\n")
        (data / user / "AWS_SECRET_ACCESS_KEY").write_text(keys[user][1] + "\n")
        (path / user).symlink_to(f"..data/{user}")
    (path / "..data").symlink_to(data.name)
    return keys


class Server:
    def __init__(self, workdir, *options: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [component_python("s3"), "-m", "s3", "--host", "127.0.0.1", "--port", str(self.port), *options]
        self.proc = Process(cmd, {"PATH": "/usr/bin:/bin", **(env or {})}, workdir / f"s3-{self.port}.log").start()

    def ready(self) -> "Server":
        # As the Deployment's readiness probe asks.
        wait_until(lambda: requests.get(f"{self.url}/minio/health/ready", timeout=1).status_code == 200,
                   f"python -m s3 on {self.url} (log: {self.proc.log_path})", timeout=30, interval=0.05)  # fmt: skip
        return self

    def client(self, keys: tuple[str, str], service: str = "s3", **config):
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1", config=Config(**config),
                            aws_access_key_id=keys[0], aws_secret_access_key=keys[1])  # fmt: skip

    def first_answer(self, keys: tuple[str, str], bucket: str) -> str:
        """The error code of the first answer to a read in `bucket` with `keys`, polled from the server's start."""
        s3 = self.client(keys, retries={"total_max_attempts": 1})

        def answer():
            try:
                s3.get_object(Bucket=bucket, Key="model.pkl")
                return "allowed"
            except EndpointConnectionError:
                return None
            except ClientError as e:
                return e.response["Error"]["Code"]

        return wait_until(answer, f"python -m s3 on {self.url} (log: {self.proc.log_path})", timeout=30, interval=0.02)


def provisioned(credentials) -> tuple[str, ...]:
    return ("--buckets", ",".join(BUCKETS), "--policies", str(POLICIES), "--credentials", str(credentials))


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The server as the cluster runs it; one given another secret for drift than the files the check reads; and one
    without options, allowing every request (as `local` and the container tier use it). Started together: each takes
    a few seconds to import moto."""
    work = tmp_path_factory.mktemp("s3-standin")
    keys = credentials_dir(work / "credentials")
    credentials_dir(work / "other", lambda user: keys[user][1] if user != "drift" else secrets.token_hex(24))
    root = {"MINIO_ROOT_USER": ROOT_KEYS[0], "MINIO_ROOT_PASSWORD": ROOT_KEYS[1]}
    started = {
        "cluster": Server(work, *provisioned(work / "credentials"), env=root),
        "other-secret": Server(work, *provisioned(work / "other"), env=root),
        "open": Server(work),
    }
    try:
        first = started["cluster"].first_answer(keys["transformer"], "mlflow")
        for server in started.values():
            server.ready()
        yield {**started, "keys": keys, "credentials": work / "credentials", "first answer": first}
    finally:
        for server in started.values():  # all at once: each takes a moment to exit
            server.proc.proc.send_signal(signal.SIGTERM)
        for server in started.values():
            server.proc.stop()


def test_it_listens_only_once_provisioned(servers):
    """Polled from its start, its first answer to a read the transformer's policy refuses is AccessDenied (one that
    listened before making its users and turning the checks on would answer NoSuchBucket, or the object)."""
    assert servers["first answer"] == "AccessDenied"
    cluster = servers["cluster"]
    assert cluster.proc.log().splitlines() == [
        f"S3 (moto) listening on 127.0.0.1:{cluster.port}; {len(USERS)} users from {POLICIES} and the root, "
        f"buckets {', '.join(BUCKETS)}"
    ]


@pytest.mark.parametrize("user", USERS)
def test_each_user_may_do_exactly_what_its_policy_grants(servers, user):
    cluster = servers["cluster"]
    probe = f"access-check/{uuid.uuid4().hex}"
    assert observed(cluster.client(servers["keys"][user]), cluster.client(ROOT_KEYS), probe) == ACCESS[user]


def test_the_components_writes_land_with_their_own_keys(servers):
    cluster, keys = servers["cluster"], servers["keys"]
    cluster.client(keys["training"]).put_object(Bucket="mlflow", Key="1/models/m-1/artifacts/model.pkl", Body=b"m")
    cluster.client(keys["transformer"]).put_object(Bucket="predictions", Key="logs/part-1.jsonl", Body=b"{}\n")
    assert cluster.client(keys["predictor"]).get_object(Bucket="mlflow", Key="1/models/m-1/artifacts/model.pkl")[
        "Body"].read() == b"m"  # fmt: skip
    with pytest.raises(ClientError, match="AccessDenied"):
        cluster.client(keys["transformer"]).put_object(Bucket="mlflow", Key="1/models/m-1/artifacts/model.pkl",
                                                       Body=b"not a model")  # fmt: skip


def test_wrong_keys_are_refused(servers):
    cluster = servers["cluster"]
    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        cluster.client(("training", "not-its-secret")).list_objects_v2(Bucket="mlflow")
    with pytest.raises(ClientError, match="InvalidAccessKeyId"):
        cluster.client(("nobody", "secret")).list_objects_v2(Bucket="mlflow")
    unsigned = requests.get(f"{cluster.url}/mlflow/", timeout=5)
    assert unsigned.status_code == 403 and "<Code>AccessDenied</Code>" in unsigned.text


def test_the_root_may_do_anything(servers):
    cluster = servers["cluster"]
    s3 = cluster.client(ROOT_KEYS)
    s3.create_bucket(Bucket="scratch")
    s3.put_object(Bucket="scratch", Key="k", Body=b"v")
    assert s3.get_object(Bucket="scratch", Key="k")["Body"].read() == b"v"
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {*BUCKETS, "scratch"}
    assert {u["UserName"] for u in cluster.client(ROOT_KEYS, "iam").list_users()["Users"]} == {*USERS, "root"}


def test_motos_control_api_is_refused_once_policies_are_enforced(servers):
    cluster = servers["cluster"]
    assert requests.post(f"{cluster.url}/moto-api/reset-auth", data=b"1000", timeout=5).status_code == 403
    assert requests.post(f"{cluster.url}/moto-api/reset", timeout=5).status_code == 403
    with pytest.raises(ClientError, match="AccessDenied"):
        cluster.client(servers["keys"]["transformer"]).list_objects_v2(Bucket="mlflow")


def test_without_options_every_request_is_allowed(servers):
    open_ = servers["open"]
    assert open_.proc.log().splitlines() == [f"S3 (moto) listening on 127.0.0.1:{open_.port}; buckets none, "
                                             "every request allowed"]  # fmt: skip
    s3 = open_.client(("anyone", "anything"))
    s3.create_bucket(Bucket="open")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["open"]
    assert requests.get(f"{open_.url}/minio/health/live", timeout=5).status_code == 200


def check(server: Server, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([component_python("s3"), "-m", "s3", "check", "--url", server.url, *options],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_check_passes_every_user_of_a_provisioned_server(servers):
    proc = check(servers["cluster"], "--credentials", str(servers["credentials"]), "--policies", str(POLICIES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == list(USERS)
    assert all(": ok, " in line and "refused (AccessDenied)" in line for line in lines), lines
    transformer = next(line for line in lines if line.startswith("transformer "))
    assert "PutObject s3://predictions/" in transformer and "s3://mlflow/" in transformer.split("GetObject in")[1]
    assert check(servers["cluster"], "--credentials", str(servers["credentials"])).returncode == 0  # refusals alone


def test_check_fails_a_user_whose_secret_the_server_does_not_have(servers):
    proc = check(servers["other-secret"], "--credentials", str(servers["credentials"]), "--policies", str(POLICIES))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if ": FAIL" in line]
    assert len(failed) == 1 and failed[0].startswith("drift ") and "SignatureDoesNotMatch" in failed[0], proc.stdout


def test_check_fails_a_server_that_refuses_nothing(servers):
    proc = check(servers["open"], "--credentials", str(servers["credentials"]))
    assert proc.returncode == 1 and proc.stdout.count("(not refused; expected AccessDenied)") == len(USERS), proc.stdout


def test_check_gives_up_on_a_server_that_never_answers(tmp_path):
    credentials_dir(tmp_path)
    proc = subprocess.run([component_python("s3"), "-m", "s3", "check", "--url", f"http://127.0.0.1:{free_port()}",
                           "--credentials", str(tmp_path), "--timeout", "1"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "did not answer within 1 s" in proc.stdout, proc.stdout + proc.stderr


def missing_key_file(policies, credentials):
    (credentials / "predictor" / "AWS_SECRET_ACCESS_KEY").resolve().unlink()
    return credentials / "predictor" / "AWS_SECRET_ACCESS_KEY"


def invalid_policy(policies, credentials):
    (policies / "drift.json").write_text('{"Version": "2012-10-17", "Statement": [')
    return policies / "drift.json"


def policy_without_keys(policies, credentials):
    (credentials / "mlflow").unlink()
    return credentials / "mlflow"


def policy_moto_rejects(policies, credentials):
    (policies / "training.json").write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]}')
    return policies / "training.json"


# The check reads the documents as the server does, but leaves validating a policy's statements to the server.
SPOILT = [*((command, spoil) for command in ("serve", "check") for spoil in (missing_key_file, invalid_policy,
                                                                             policy_without_keys)),
          ("serve", policy_moto_rejects)]  # fmt: skip


@pytest.mark.parametrize(("command", "spoil"), SPOILT, ids=[f"{c}-{s.__name__}" for c, s in SPOILT])
def test_a_bad_document_is_one_line_naming_it_and_exit_2(tmp_path, command, spoil):
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    credentials_dir(tmp_path / "credentials")
    named = spoil(policies, tmp_path / "credentials")
    args = ["check", "--url", "http://127.0.0.1:9"] if command == "check" else ["--port", str(free_port())]
    proc = subprocess.run([component_python("s3"), "-m", "s3", *args, "--policies", str(policies),
                           "--credentials", str(tmp_path / "credentials")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and str(named) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""

"""The storage initializer run as KServe's controller runs it: args [storageUri, /mnt/models], the S3 secret's
variables in the environment, against moto's S3 server checking each request against the predictor's policy."""

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "manifests" / "base" / "s3-policies"
MODEL = "s3://mlflow/1/run/artifacts/model"
# An MLflow model directory, as training logs it (one nested file, to see that paths below the prefix are kept).
FILES = {
    "MLmodel": b"flavors:\n  sklearn:\n    pickled_model: model.pkl\n",
    "model.pkl": bytes(range(256)) * 40,
    "requirements.txt": b"scikit-learn==1.5.2\n",
    "metadata/MLmodel": b"flavors: {}\n",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 and IAM on a free port: the model's objects, a predictor user with the predictor's policy, a
    transformer user with the transformer's (which may not read mlflow/), then every request checked."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    setup = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    client = boto3.client("s3", **setup)
    client.create_bucket(Bucket="mlflow")
    for name, body in FILES.items():
        client.put_object(Bucket="mlflow", Key=f"{MODEL.removeprefix('s3://mlflow/')}/{name}", Body=body)
    iam = boto3.client("iam", **setup)
    admin = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]})
    keys = {}
    for user, policy in [("predictor", (POLICIES / "predictor.json").read_text()),
                         ("transformer", (POLICIES / "transformer.json").read_text()), ("admin", admin)]:
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=policy)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    requests.post(f"{url}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    yield url, keys
    server.stop()


def kserve_env(url: str, key: tuple[str, str], home: Path) -> dict:
    """What KServe's controller gives the init container from the ServiceAccount's secret and its annotations."""
    host = url.removeprefix("http://")
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1],
            "S3_ENDPOINT": host, "AWS_ENDPOINT_URL": url, "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0"}


def initializer(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storage_initializer", *args], env=env, capture_output=True,
                          text=True, timeout=180)


def tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_the_contents_of_the_prefix_land_in_dest_with_their_paths(s3, tmp_path):
    url, keys = s3
    dest = tmp_path / "mnt" / "models"  # its parents do not exist yet
    run = initializer(MODEL, str(dest), env=kserve_env(url, keys["predictor"], tmp_path))
    assert run.returncode == 0, run.stderr
    assert tree(dest) == FILES  # no model/ folder: /mnt/models/model.pkl is where the sklearn runtime looks
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert f"{MODEL} -> {dest}: 4 files, {sum(map(len, FILES.values()))} bytes in " in lines[0]
    assert keys["predictor"][1] not in run.stderr


def test_one_object_lands_under_its_name_and_each_pair_gets_its_line(s3, tmp_path):
    url, keys = s3
    first, second = tmp_path / "a", tmp_path / "b"
    run = initializer(f"{MODEL}/model.pkl", str(first), f"{MODEL}/", str(second),
                      env=kserve_env(url, keys["predictor"], tmp_path))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert tree(first) == {"model.pkl": FILES["model.pkl"]}
    assert tree(second) == FILES
    assert [line.split(" -> ")[1].split(":")[0] for line in run.stderr.splitlines()] == [str(first), str(second)]


@pytest.mark.parametrize("uri, user, says", [
    ("s3://mlflow/1/run/artifacts/nothing-here", "predictor", "No model found in 1/run/artifacts/nothing-here"),
    ("s3://no-such-bucket/1/run/artifacts/model", "admin", "has no bucket 'no-such-bucket'"),
    (MODEL, "transformer", "refused access to bucket 'mlflow' (HTTP 403)"),
    (MODEL, "wrong-secret", "refused access to bucket 'mlflow' (HTTP 403)"),
])  # fmt: skip
def test_a_failed_download_is_one_line_naming_the_uri_and_exit_1(s3, tmp_path, uri, user, says):
    url, keys = s3
    key = (keys["predictor"][0], "not-the-secret") if user == "wrong-secret" else keys[user]
    dest = tmp_path / "models"
    run = initializer(uri, str(dest), env=kserve_env(url, key, tmp_path))
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines() == [run.stderr.strip()], run.stderr
    assert run.stderr.startswith(f"error: cannot download {uri} into {dest}: ") and says in run.stderr, run.stderr
    assert key[1] not in run.stderr
    assert not dest.exists() or not tree(dest)


def test_an_unreachable_endpoint_is_one_line_naming_it(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    run = initializer(MODEL, str(tmp_path / "models"), env=kserve_env(closed, ("AKIA", "secret-key"), tmp_path))
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines() == [f'error: cannot download {MODEL} into {tmp_path / "models"}: '
                                       f'Could not connect to the endpoint URL: "{closed}/mlflow"']  # fmt: skip


def test_a_scheme_whose_sdk_the_image_leaves_out_says_so(tmp_path):
    run = initializer("gs://bucket/model", str(tmp_path / "models"))
    assert run.returncode == 1
    assert "gs:// URIs need google-cloud-storage, which this image leaves out" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("args", [[], [MODEL], [MODEL, "/mnt/models", "s3://mlflow/other"]])
def test_anything_but_pairs_is_a_usage_error(args):
    run = initializer(*args)
    assert run.returncode == 2
    assert "usage: python -m storage_initializer SRC DEST [SRC DEST ...]" in run.stderr
    assert f"expected pairs of SRC DEST, got {len(args)} argument(s)" in run.stderr


def test_help_says_what_it_stands_in_for():
    run = initializer("--help")
    assert run.returncode == 0
    assert "KServe's storage-initializer image" in run.stdout and "/mnt/models" in run.stdout

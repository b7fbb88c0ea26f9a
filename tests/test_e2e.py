"""End to end on a real cluster (`make e2e`): after `make deploy`, what a user checks, with the Makefile's own targets.
The cluster is kind's (the e2e workflow), or with PROVIDER=source the one cluster/source runs on this machine (the
Makefile puts its kubectl and kubeconfig first). Skipped, saying why, where that cluster's tools are missing."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
import requests

from harness import ROOT, USERS, Process, free_port, wait_until
from test_security import ACCESS, denied, observed

pytestmark = pytest.mark.e2e
NAMESPACE = "taxi-mlops"
RIDE = {"ride_id": "ride_xyz", "ride": {"PULocationID": 100, "DOLocationID": 102, "trip_distance": 30}}


PROVIDER = os.environ.get("PROVIDER", "kind")


def missing_tools() -> str | None:
    if PROVIDER == "source":
        if not shutil.which("kubectl"):
            return "kubectl not found on PATH (`make e2e PROVIDER=source` puts cluster/build's first)"
        ready = subprocess.run(["kubectl", "get", "nodes", "-o", 'jsonpath={..conditions[?(@.type=="Ready")].status}'],
                               capture_output=True, text=True)  # fmt: skip
        if "True" not in ready.stdout:
            return "the source-built cluster has no Ready node: `make deploy PROVIDER=source` first"
        return None
    for tool in ("docker", "kind", "kubectl"):
        if not shutil.which(tool):
            return f"{tool} not found on PATH"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "docker is installed but no Docker engine is running"
    return None


def kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=True).stdout


def make(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    # Under `make e2e` a nested make would print "Entering/Leaving directory" after the JSON line the tests read.
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"make {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    return proc


def serving_version() -> str:
    return kubectl("get", "inferenceservice", "trip-duration", "-n", NAMESPACE,
                   "-o", "jsonpath={.metadata.annotations.taxi-mlops/model-version}")  # fmt: skip


@contextmanager
def port_forward(service: str, remote: int, tmp_path):
    """`kubectl port-forward` to a Service (it binds one pod: open a new one after a rollout)."""
    port = free_port()
    forward = Process(["kubectl", "port-forward", "-n", NAMESPACE, f"service/{service}", f"{port}:{remote}"],
                      dict(os.environ), tmp_path / f"port-forward-{service}-{port}.log").start()  # fmt: skip
    try:
        yield port
    finally:
        forward.stop()


@pytest.fixture(scope="module")
def deployed():
    reason = missing_tools()
    if reason:
        pytest.skip(f"e2e needs a {'source-built' if PROVIDER == 'source' else 'kind'} cluster: {reason}")
    ready = subprocess.run(["kubectl", "wait", "--for=condition=Ready", "inferenceservice/trip-duration", "-n", NAMESPACE,
                            "--timeout=0s"], capture_output=True)  # fmt: skip
    if ready.returncode != 0:  # the workflow has run `make deploy` already; a developer may not have
        make("deploy", timeout=3600)


@pytest.fixture
def transformer(deployed, tmp_path):
    with port_forward("trip-duration-transformer", 80, tmp_path) as port:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v1/models/trip-duration", timeout=5).ok,
                   "the transformer through port-forward", timeout=60)  # fmt: skip
        yield port


def secret(name: str, key: str) -> str:
    return base64.b64decode(kubectl("get", "secret", name, "-n", NAMESPACE, "-o", f"jsonpath={{.data.{key}}}")).decode()


@pytest.fixture(scope="module")
def minio(deployed, tmp_path_factory):
    """MinIO through a port-forward: `client()` as its root, `client(user)` with the keys of Secret s3-<user>."""
    import boto3

    with port_forward("minio", 9000, tmp_path_factory.mktemp("minio")) as port:

        def client(user: str | None = None):
            keys = ((secret("minio-root", "MINIO_ROOT_USER"), secret("minio-root", "MINIO_ROOT_PASSWORD")) if user is None
                    else (secret(f"s3-{user}", "AWS_ACCESS_KEY_ID"), secret(f"s3-{user}", "AWS_SECRET_ACCESS_KEY")))  # fmt: skip
            return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                                aws_access_key_id=keys[0], aws_secret_access_key=keys[1])  # fmt: skip

        wait_until(lambda: client().list_buckets() is not None, "MinIO through port-forward", timeout=60)
        yield client


@pytest.fixture(scope="module")
def predictions(minio):
    """Reads the prediction-log records in s3://predictions/logs, as MinIO's root."""
    s3 = minio()

    def since(start: datetime) -> dict[str, dict]:
        """Records written since `start`, deduplicated by record_id (delivery is at-least-once)."""
        records = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="predictions", Prefix="logs/"):
            for item in page.get("Contents", []):
                if item["LastModified"] < start - timedelta(seconds=5):
                    continue
                body = s3.get_object(Bucket="predictions", Key=item["Key"])["Body"].read()
                if item["Key"].endswith(".gz"):
                    body = gzip.decompress(body)
                for line in body.decode().splitlines():
                    record = json.loads(line)
                    # The cluster shares this machine's clock (kind's node is a container, the source-built one a
                    # process): no tolerance, or the ride `make predict` sent just before would count too.
                    if datetime.fromisoformat(record["ts"].replace("Z", "+00:00")) >= start:
                        records[record["record_id"]] = record
        return records

    yield since


@pytest.mark.parametrize("user", USERS)
def test_minio_allows_each_components_key_exactly_its_row(minio, user):
    """The policies the set-up Job gave MinIO, tried with the keys `make secret` made."""
    assert observed(minio(user), minio(), f"access-check/{uuid.uuid4().hex}") == ACCESS[user]


def test_minio_refuses_the_transformer_a_model_write_and_the_drift_job_a_log_write(minio):
    key = f"access-check/{uuid.uuid4().hex}/model.pkl"
    assert denied(minio("transformer").put_object, Bucket="mlflow", Key=key, Body=b"not a model")
    assert denied(minio("drift").put_object, Bucket="predictions", Key=key, Body=b"not a log")


def test_make_predict_returns_the_workshops_ride_with_ride_id_and_model_version(transformer):
    out = make("predict", f"LOCAL_PORT={transformer}").stdout
    body = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert body["ride_id"] == RIDE["ride_id"]
    assert 1 <= body["prediction"]["duration"] <= 60
    assert body["model_version"] == serving_version()


def scored(out: str) -> int:
    """How many rides `make traffic` says were scored (`N scored` when it reports rejects too, else `replayed N rides`)."""
    m = re.search(r"([\d,]+) (?:rides )?scored", out) or re.search(r"replayed ([\d,]+) rides", out)
    assert m, out
    return int(m[1].replace(",", ""))


def test_make_traffic_fills_the_prediction_logs_with_one_record_per_scored_ride(transformer, predictions):
    start = datetime.now(timezone.utc)
    n = scored(make("traffic", f"LOCAL_PORT={transformer}", "TRAFFIC_RIDES=1000").stdout)
    assert n > 0
    wait_until(lambda: len(predictions(start)) >= n, f"{n} log records in s3://predictions/logs", timeout=120)
    records = predictions(start).values()
    assert len(records) == n
    assert len({r["ride_id"] for r in records}) == n, "one record per scored ride"


def test_make_drift_reports_drift_on_traffic_the_suite_shifted(transformer, predictions):
    """Rides from JFK to an unknown zone, 25 miles each, outnumbering the replayed month: a definite verdict."""
    start = datetime.now(timezone.utc)
    ride = {"PULocationID": 132, "DOLocationID": 265, "trip_distance": 25.0}
    for batch in range(3):
        instances = [{"ride_id": f"shifted-{batch}-{i}", "ride": ride} for i in range(500)]
        r = requests.post(
            f"http://127.0.0.1:{transformer}/v1/models/trip-duration:predict", json={"instances": instances}, timeout=60
        )
        assert r.status_code == 200, r.text
    wait_until(lambda: len(predictions(start)) >= 1500, "the shifted rides' log records", timeout=120)
    out = make("drift", timeout=1200).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "drift" and summary["drift"] is True
    assert summary["n_current"] >= 1500
    table = out.strip().splitlines()[:-1]
    assert any("PULocationID" in line for line in table) and any("trip_distance" in line for line in table)


def last_json(out: str) -> dict:
    """The last JSON line a target printed: the train or rollback step's result, the drift job's summary."""
    return json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))


def finished(job: str) -> str | None:
    conditions = json.loads(kubectl("get", "job", job, "-n", NAMESPACE, "-o", "jsonpath={.status.conditions}") or "[]")
    return next((c["type"] for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)


def retraining_jobs_running() -> list[str]:
    jobs = json.loads(kubectl("get", "jobs", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=retraining",
                              "-o", "json"))  # fmt: skip
    return [j["metadata"]["name"] for j in jobs["items"] if not finished(j["metadata"]["name"])]


@pytest.fixture
def drift_schedule_paused(deployed):
    """On kind the drift CronJob runs every 10 minutes: it would judge the same traffic and start retraining Jobs of its
    own while the test drives the loop. Paused for the test (`make drift` still runs it), resumed after."""
    kubectl("patch", "cronjob", "drift", "-n", NAMESPACE, "--type", "merge", "-p", '{"spec":{"suspend":true}}')
    try:
        yield
    finally:
        kubectl("patch", "cronjob", "drift", "-n", NAMESPACE, "--type", "merge", "-p", '{"spec":{"suspend":false}}')


def served_version(port: int) -> str:
    wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/v1/models/trip-duration", timeout=5).ok,
               "the transformer through port-forward", timeout=60)  # fmt: skip
    body = requests.post(f"http://127.0.0.1:{port}/v1/models/trip-duration:predict", json=RIDE, timeout=30).json()
    return body["model_version"]


@pytest.mark.timeout(5400)  # two training Jobs, a retraining Job and two rollbacks, each waited for
def test_the_drift_job_retrains_an_older_model_and_make_rollback_brings_it_back(drift_schedule_paused, predictions,
                                                                                 tmp_path):  # fmt: skip
    """The loop in the cluster, as `make loop` shows it on one machine: a model trained on 2021-01 (a lockdown month)
    serves 2022-02 on purpose (GATE_MARGIN=-1 lets it past the fair gate); `make traffic` reports the rides' actual
    durations; the drift job asks for retraining and starts a Job from the suspended CronJob `retrain`, whose challenger,
    trained on those rides, beats the older model on the same rides and is rolled out; `make rollback` serves the older
    one again, and a second `make rollback` returns."""
    wait_until(lambda: not retraining_jobs_running(), "earlier retraining Jobs to end", timeout=1800, interval=10)
    older = last_json(make("train", "TRAIN_DATA=2021-01", "VAL_DATA=2021-02", "GATE_MARGIN=-1", timeout=3600).stdout)
    assert older["promoted"] and serving_version() == str(older["version"]), older

    start = datetime.now(timezone.utc)
    with port_forward("trip-duration-transformer", 80, tmp_path) as port:
        assert served_version(port) == str(older["version"])
        n = scored(make("traffic", f"LOCAL_PORT={port}", "TRAFFIC_RIDES=20000").stdout)
    wait_until(lambda: len(predictions(start)) >= n, f"{n} log records in s3://predictions/logs", timeout=300,
               interval=5)  # fmt: skip
    summary = last_json(make("drift", timeout=1200).stdout)
    assert summary["model_version"] == str(older["version"])
    retrain = summary["retrain"]
    assert retrain["wanted"] is True and retrain["job"], retrain

    job = retrain["job"]
    wait_until(lambda: finished(job), f"retraining Job {job}", timeout=3600, interval=10)
    logs = kubectl("logs", "-n", NAMESPACE, f"job/{job}", "-c", "train", "--tail=1")
    assert finished(job) == "Complete", kubectl("logs", "-n", NAMESPACE, f"job/{job}", "--all-containers", "--tail=40")
    challenger = json.loads(logs)
    assert challenger["promoted"] and challenger["champion"] == str(older["version"]), challenger
    assert challenger["rmse"] < challenger["champion_rmse"]  # on the same, newest rides
    assert serving_version() == str(challenger["version"])
    with port_forward("trip-duration-transformer", 80, tmp_path) as port:
        assert served_version(port) == str(challenger["version"])

    back = last_json(make("rollback").stdout)
    assert (back["version"], back["previous"]) == (str(older["version"]), str(challenger["version"]))
    assert serving_version() == str(older["version"])
    with port_forward("trip-duration-transformer", 80, tmp_path) as port:
        assert served_version(port) == str(older["version"])
    again = last_json(make("rollback").stdout)
    assert (again["version"], again["previous"]) == (str(challenger["version"]), str(older["version"]))
    assert serving_version() == str(challenger["version"])

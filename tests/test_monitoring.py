"""The drift job as the CronJob runs it: over logs the real transformer wrote, against the training reference."""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest
import requests

import ride
from harness import ROOT, ApiStandIn, free_port, run_cli, start_predictor, start_transformer, train, unique
from local import traffic
from test_manifests import kustomize

def replay(url: str, frame: pd.DataFrame) -> list[str]:
    """Send rides through the transformer the way `make traffic` does; return the ids of the scored ones."""
    return list(traffic.replay(url, frame, singles=0).scored)


class Webhook:
    def __init__(self):
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                outer.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def logs(workdir, s3, predictor, model, months):
    """Two windows of real transformer logs of raw rides in pick-up order: as they come, then with longer trips."""
    prefix = f"s3://predictions/{unique('drift')}"
    proc, url = start_transformer(workdir, s3, predictor[1], prefix, model["version"])
    rides = traffic.rides(str(months["val"]))
    try:
        same = replay(url, rides.iloc[:1500].assign(ride_id=lambda d: "same-" + d.ride_id))
        longer = rides.iloc[1500:].assign(ride_id=lambda d: "long-" + d.ride_id, trip_distance=lambda d: d.trip_distance * 2)
        shifted = replay(url, longer)
    finally:
        proc.stop()  # SIGTERM flushes the prediction log
    actuals = workdir / "actuals.parquet"
    rides.iloc[:1500].assign(ride_id=lambda d: "same-" + d.ride_id)[["ride_id", "duration"]].to_parquet(actuals)
    return {"prefix": prefix, "same": same, "shifted": shifted, "actuals": actuals, "rides": rides}


def drift(s3, mlflow_url, *args, env=None):
    return run_cli("monitoring", *args, "--tracking-uri", mlflow_url, env={**s3.env_for("drift"), **(env or {})})


def test_logs_like_the_reference_are_not_drift(s3, mlflow_url, model, logs, workdir):
    # Only the first window: the ride ids make the two windows separable by a one-version, deduped read.
    only_same = f"{logs['prefix']}-same-copy"
    copy_objects(s3, logs["prefix"], only_same, keep=lambda rec: rec["ride_id"].startswith("same-"))
    report_uri = f"s3://monitoring/{unique('ok')}"
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}@staging", "--current", only_same,
                   "--report-uri", report_uri, "--actuals", str(logs["actuals"]), "--log-to-mlflow")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.json
    assert out["drift"] is False and out["status"] == "ok"
    assert out["n_current"] == len(logs["same"]) and out["model_version"] == model["version"]
    assert out["reference"].startswith(f"models:/{model['name']}/{model['version']} ")
    assert set(out["columns"]) == {"PULocationID", "DOLocationID", "trip_distance", "prediction"}
    assert out["columns"]["PULocationID"]["test"] == "chi2" and out["columns"]["trip_distance"]["test"] == "ks"
    # Live error only on rides whose actual duration is one training learns from (1-60 min).
    learnable = ride.learnable(logs["rides"].iloc[:1500].assign(ride_id=lambda d: "same-" + d.ride_id))
    assert out["performance"]["n_with_actuals"] == len(logs["same"])
    assert out["performance"]["n_joined"] == len(set(learnable.ride_id) & set(logs["same"])) < len(logs["same"])
    assert out["performance"]["rmse"] == pytest.approx(model["rmse"], rel=0.5)
    assert out["calibration"]["windows"] >= 50 and set(out["calibration"]["power"]) == {"longer_trips", "moved_zones"}
    table = result.stdout.splitlines()
    assert any(line.startswith("trip_distance") and line.rstrip().endswith("no") for line in table)
    assert any(line.startswith("live error on") and "1-60 min" in line for line in table)
    assert any(line.startswith("thresholds from") and "contiguous windows" in line for line in table)
    assert out["report_agrees"] is True

    folder = out["report"]
    assert folder.startswith(f"{report_uri}/reports/dt=")
    keys = set(s3.keys("monitoring", folder.split("/", 3)[3]))
    names = {k.rsplit("/", 1)[1] for k in keys}
    assert names == {"summary.json", "report.html", "report.json", "predictions.png"}
    png = s3.client().get_object(Bucket="monitoring", Key=next(k for k in keys if k.endswith(".png")))["Body"].read()
    assert png.startswith(b"\x89PNG")

    runs = requests.post(f"{mlflow_url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment_id(mlflow_url)]},
                         timeout=10).json()["runs"]  # fmt: skip
    assert any(m["key"] == "p_value_trip_distance" for r in runs for m in r["data"]["metrics"])
    # Its MLflow artifacts go next to the reports: the drift job's key may not write where the models are.
    artifacts = {r["info"]["artifact_uri"] for r in runs}
    assert all(a.startswith(f"{report_uri}/mlflow/") for a in artifacts), artifacts
    assert any(k.endswith("/summary.json") for a in artifacts for k in s3.keys("monitoring", a.split("/", 3)[3]))


def experiment_id(mlflow_url: str) -> str:
    r = requests.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name",
                     params={"experiment_name": "trip-duration-monitoring"}, timeout=10)  # fmt: skip
    return r.json()["experiment"]["experiment_id"]


def copy_objects(s3, source: str, dest: str, keep) -> None:
    bucket, _, src_prefix = source.removeprefix("s3://").partition("/")
    _, _, dst_prefix = dest.removeprefix("s3://").partition("/")
    client = s3.client()
    for key in s3.keys(bucket, src_prefix + "/"):
        lines = gzip.decompress(client.get_object(Bucket=bucket, Key=key)["Body"].read()).splitlines()
        kept = [line for line in lines if keep(json.loads(line))]
        if kept:
            body = gzip.compress(b"\n".join(kept) + b"\n")
            client.put_object(Bucket=bucket, Key=dst_prefix + key[len(src_prefix) :], Body=body)


def test_longer_trips_are_drift_alerted_and_fail_the_job(s3, mlflow_url, model, logs, tmp_path):
    hook = Webhook()
    only_long = f"{logs['prefix']}-long-copy"
    copy_objects(s3, logs["prefix"], only_long, keep=lambda rec: rec["ride_id"].startswith("long-"))
    report_dir = tmp_path / "report"
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}", "--current", only_long, "--fail-on-drift",
                   "--report-uri", str(report_dir), env={"ALERT_WEBHOOK_URL": hook.url})  # fmt: skip
    assert result.returncode == 1, result.stderr
    out = result.json
    assert out["drift"] is True
    assert out["columns"]["trip_distance"]["drifted"] and out["columns"]["prediction"]["drifted"]
    drifted = sum(c["drifted"] for c in out["columns"].values())
    assert html_verdicts(out["report_html"]) == {"detected": drifted, "not detected": len(out["columns"]) - drifted}
    assert out["reference"].startswith(f"models:/{model['name']}/{model['version']} ")  # the version in the logs
    assert len(hook.received) == 1 and hook.received[0]["drift"] is True


def test_duplicates_and_corrupt_objects_are_counted_not_fatal(s3, mlflow_url, model, logs):
    prefix = f"{logs['prefix']}-messy"
    copy_objects(s3, logs["prefix"], prefix, keep=lambda rec: rec["ride_id"].startswith("same-"))
    bucket, _, key_prefix = prefix.removeprefix("s3://").partition("/")
    client = s3.client()
    first = s3.keys(bucket, key_prefix + "/")[0]
    client.copy_object(Bucket=bucket, Key=first.replace(".jsonl.gz", "-again.jsonl.gz"),
                       CopySource={"Bucket": bucket, "Key": first})  # fmt: skip  (at-least-once delivery)
    partition = first.rsplit("/", 1)[0]
    client.put_object(Bucket=bucket, Key=f"{partition}/corrupt.jsonl.gz", Body=b"\x1f\x8b not really gzip")
    client.put_object(Bucket=bucket, Key=f"{partition}/garbage.jsonl", Body=b'{"record_id": 1, "ts": [}\n')
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}@staging", "--current", prefix)
    assert result.returncode == 0, result.stderr
    assert result.json["unreadable_objects"] == 2
    assert result.json["duplicates_removed"] > 0
    assert result.json["n_current"] == len(logs["same"])
    assert "skipped 2 unreadable" in result.stdout


def test_empty_window_is_not_enough_data(s3, mlflow_url, model, logs):
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}@staging", "--current", logs["prefix"],
                   "--since", "2001-01-01T00:00:00Z", "--until", "2001-01-02T00:00:00Z", "--fail-on-drift")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.json["status"] == "not_enough_data" and result.json["drift"] is False
    assert "not enough data" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference", "models:/no_such_model@staging"], "no_such_model"),
        (["--reference", "/nonexistent/reference.parquet"], "file not found"),
    ],
)
def test_missing_reference_is_exit_2_with_one_line(s3, mlflow_url, logs, args, message):
    result = drift(s3, mlflow_url, *args, "--current", logs["prefix"])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreachable_s3_is_exit_2_with_one_line(s3, mlflow_url, model):
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}@staging", "--current", "s3://predictions/x",
                   env=env)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in result.stderr


def test_help_lists_exit_codes():
    result = run_cli("monitoring", "--help")
    assert result.returncode == 0 and "Exit codes" in result.stdout


def test_each_version_is_judged_against_its_own_reference(workdir, s3, mlflow_url, predictor, model, months):
    """Around a promotion a window holds two versions: each is judged against the rides it was validated on."""
    second = train(mlflow_url, s3, months["train"], months["csv"], model["name"], "--gate-margin", "-1000")
    assert second.returncode == 0 and second.json["version"] != model["version"], second.stderr
    prefix = f"s3://predictions/{unique('versions')}"
    rides = traffic.rides(str(months["val"]))
    for version, chunk in ((model["version"], rides.iloc[:800]), (second.json["version"], rides.iloc[800:1600])):
        proc, url = start_transformer(workdir, s3, predictor[1], prefix, version)
        try:
            replay(url, chunk)
        finally:
            proc.stop()
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}", "--current", prefix)
    assert result.returncode == 0, result.stderr
    judged = {v["model_version"]: v["reference"] for v in result.json["versions"]}
    assert judged == {
        model["version"]: f"models:/{model['name']}/{model['version']} (run {model['run_id']})",
        second.json["version"]: f"models:/{model['name']}/{second.json['version']} (run {second.json['run_id']})",
    }
    assert result.json["model_version"] == second.json["version"]  # the newest first

    pinned = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}/{model['version']}", "--current", prefix)
    assert [v["model_version"] for v in pinned.json["versions"]] == [model["version"]]
    assert pinned.json["left_out"][second.json["version"]]["why"] == f"not version {model['version']}"
    assert f"left out: version {second.json['version']}" in pinned.stdout


def test_an_unexpected_error_is_exit_2_not_drift(s3, mlflow_url, logs, tmp_path):
    broken = tmp_path / "reference.parquet"
    pd.DataFrame({"PULocationID": [1] * 900, "DOLocationID": [2] * 900, "trip_distance": [1.0] * 900,
                  "prediction": ["not a number"] * 900}).to_parquet(broken)  # fmt: skip
    result = drift(s3, mlflow_url, "--reference", str(broken), "--current", logs["prefix"], "--fail-on-drift")
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr


def test_real_months_raw_windows_and_a_lockdown_month(real_data, s3, mlflow_url, workdir):
    """Reference: 2022-02 as TLC published it. A window of its raw rides is not drift; 2021-01 (lockdown) is.

    The statistics over many windows and every day of the month are in monitoring/tests/test_real_months.py
    and, at full count, `make bench`.
    """
    ref = real_data / "green_tripdata_2022-02.parquet"
    cache = str(workdir / "calibration")
    feb = pd.read_parquet(ref)
    window = workdir / "feb-window.parquet"
    feb[list(ride.FEATURES)].sample(5000, random_state=0).to_parquet(window)
    result = drift(s3, mlflow_url, "--reference", str(ref), "--current", str(window), "--calibration-cache", cache)
    assert result.returncode == 0, result.stderr
    assert result.json["drift"] is False, result.stdout

    old = workdir / "jan-2021-window.parquet"
    pd.read_parquet(real_data / "green_tripdata_2021-01.parquet").sample(5000, random_state=0).to_parquet(old)
    result = drift(s3, mlflow_url, "--reference", str(ref), "--current", str(old), "--calibration-cache", cache)
    assert result.returncode == 0, result.stderr
    assert result.json["drift"] is True
    assert all(result.json["columns"][c]["drifted"] for c in ride.FEATURES)


def test_real_traffic_end_to_end_is_not_drift_and_the_report_agrees(real_data, workdir, s3, mlflow_url):
    """Train on 2022-01/2022-02, serve, replay 20,000 raw rides of 2022-02, judge the logs against @staging."""
    name = unique("real_e2e")
    trained = train(mlflow_url, s3, real_data / "green_tripdata_2022-01.parquet",
                    real_data / "green_tripdata_2022-02.parquet", name)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    proc, host = start_predictor(workdir, s3, trained.json["storage_uri"])
    prefix = f"s3://predictions/{unique('real')}"
    transformer, url = start_transformer(workdir, s3, host, prefix, trained.json["version"])
    try:
        replayed = traffic.replay(url, traffic.rides(str(real_data / "green_tripdata_2022-02.parquet"), 20_000))
    finally:
        transformer.stop()
        proc.stop()
    assert len(replayed.scored) + sum(replayed.rejected.values()) == 20_000 and replayed.rejected["trip_distance"] > 0
    report_dir = workdir / "real-report"
    result = drift(s3, mlflow_url, "--reference", f"models:/{name}@staging", "--current", prefix,
                   "--report-uri", str(report_dir))  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.json
    assert out["drift"] is False and out["n_current"] == len(replayed.scored), result.stdout
    assert out["report_agrees"] is True
    assert html_verdicts(out["report_html"]) == {"detected": 0, "not detected": len(out["columns"])}


def html_verdicts(path: str) -> dict:
    """What the report a user opens says, column by column (evidently writes 'Data drift [not] detected.')."""
    html = open(path).read()
    return {"detected": html.count("Data drift detected."), "not detected": html.count("Data drift not detected.")}


def write_actuals(s3, prefix: str, rides: pd.DataFrame, slower: float = 1.0) -> None:
    """Actuals as a dispatch system reports them: one in ten never arrives, some twice, one object damaged."""
    client = s3.client()
    bucket, _, key = prefix.removeprefix("s3://").partition("/")
    records = [{"ride_id": r.ride_id, "dropoff_datetime": "2030-02-01T10:00:00.000Z", "duration": r.duration * slower}
               for i, r in enumerate(rides.itertuples()) if i % 10]  # fmt: skip
    ts = ride.utc_timestamp()
    for chunk in (records[:400], records[300:]):  # rides 300-399 arrive twice
        client.put_object(Bucket=bucket, Key=f"{key}/{ride.actuals_key(ts)}", Body=ride.jsonl_gz(chunk))
    client.put_object(Bucket=bucket, Key=f"{key}/{ride.actuals_key(ts)}", Body=b"\x1f\x8b not gzip at all")


def test_live_error_from_actuals_in_s3_and_its_own_verdict(s3, mlflow_url, model, logs, tmp_path):
    only_same = f"{logs['prefix']}-same-live"
    copy_objects(s3, logs["prefix"], only_same, keep=lambda rec: rec["ride_id"].startswith("same-"))
    same = logs["rides"].iloc[:1500].assign(ride_id=lambda d: "same-" + d.ride_id)
    scored = same[same.ride_id.isin(logs["same"])]

    ok_prefix = f"s3://actuals/{unique('ok')}"
    write_actuals(s3, ok_prefix, scored)
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}", "--current", only_same,
                   "--actuals", ok_prefix, "--fail-on-degradation")  # fmt: skip
    assert result.returncode == 0, result.stderr
    perf = result.json["performance"]
    arrived = [r for i, r in enumerate(scored.itertuples()) if i % 10]
    assert perf["n_with_actuals"] == len(arrived) and result.json["unreadable_actuals"] == 1
    assert perf["n_joined"] == sum(1 <= r.duration <= 60 for r in arrived) and perf["degraded"] is False
    assert result.json["retrain"] == {"wanted": False, "job": None,
                                      "reason": f"version {model['version']}: no drift, live error not degraded"}  # fmt: skip

    slow_prefix = f"s3://actuals/{unique('slow')}"
    write_actuals(s3, slow_prefix, scored, slower=1.6)  # every ride took 60 % longer than the model thought
    report_dir = tmp_path / "report"
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}", "--current", only_same,
                   "--actuals", slow_prefix, "--fail-on-degradation", "--report-uri", str(report_dir), "--log-to-mlflow")  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    out = result.json
    assert out["degraded"] is True and out["performance"]["rmse_ratio"] > 1.2 and out["drift"] is False
    assert out["retrain"]["wanted"] is True and "live error degraded" in out["retrain"]["reason"]
    assert any(line.startswith("live error on") and line.endswith("DEGRADED (limit 1.2x)") for line in result.stdout.splitlines())
    assert out["report_agrees"] is True
    assert "RMSE: Less or Equal" in open(out["report_html"]).read()
    runs = requests.post(f"{mlflow_url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [experiment_id(mlflow_url)],
                         "filter": "metrics.degraded = 1"}, timeout=10).json()["runs"]  # fmt: skip
    tags = {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
    assert tags["retrain.wanted"] == "True" and "live error degraded" in tags["retrain.reason"]


class BatchApi(ApiStandIn):
    """The batch/v1 API of one namespace: the suspended CronJob `retrain` as kustomize renders it, with the uid the API
    server gives an object; Jobs listed by label and created. A created Job stays active (no condition)."""

    def __init__(self, namespace: str, cronjob: dict):
        self.base = f"/apis/batch/v1/namespaces/{namespace}"
        self.cronjob = {**cronjob, "metadata": {**cronjob["metadata"], "uid": str(uuid.uuid4())}}
        self.jobs: list[dict] = []
        super().__init__()

    def route(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict]:
        if (method, path) == ("GET", f"{self.base}/cronjobs/{self.cronjob['metadata']['name']}"):
            return 200, self.cronjob
        if (method, path) == ("GET", f"{self.base}/jobs"):
            key, _, value = query["labelSelector"][0].partition("=")
            items = [j for j in self.jobs if j["metadata"].get("labels", {}).get(key) == value]
            return 200, {"apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": items}
        if (method, path) == ("POST", f"{self.base}/jobs"):
            self.jobs.append({**json.loads(body), "status": {}})
            return 201, self.jobs[-1]
        return self.not_found()

    def calls(self) -> list[tuple[str, str, str | None]]:
        """(verb, resource, name) of each request, as RBAC sees it."""
        verbs = {("GET", True): "get", ("GET", False): "list", ("POST", False): "create"}
        out = []
        for method, path, *_ in self.requests:
            resource, _, name = path.removeprefix(self.base + "/").partition("/")
            out.append((verbs[(method, bool(name))], resource, name or None))
        return out


def test_degradation_starts_one_retraining_job_from_the_retrain_cronjob(s3, mlflow_url, model, logs, tmp_path):
    """The drift CronJob's trigger, against a stand-in API server serving the CronJob `retrain` as the manifests render
    it: the Job it creates is that CronJob's template with an owner reference, as `kubectl create job --from` makes; a
    second run while that Job is active starts none and says why; its calls are exactly what its Role grants."""
    only_same = f"{logs['prefix']}-same-trigger"
    copy_objects(s3, logs["prefix"], only_same, keep=lambda rec: rec["ride_id"].startswith("same-"))
    same = logs["rides"].iloc[:1500].assign(ride_id=lambda d: "same-" + d.ride_id)
    slow_prefix = f"s3://actuals/{unique('slow')}"
    write_actuals(s3, slow_prefix, same[same.ride_id.isin(logs["same"])], slower=1.6)
    rendered = kustomize(ROOT / "manifests" / "overlays" / "kind")
    cronjob = next(d for d in rendered if d["kind"] == "CronJob" and d["metadata"]["name"] == "retrain")
    role = next(d for d in rendered if d["kind"] == "Role" and d["metadata"]["name"] == "retraining-starter")
    api = BatchApi("taxi-mlops", cronjob)
    env = {"KUBECONFIG": str(api.kubeconfig(tmp_path, "taxi-mlops")), "POD_NAMESPACE": "taxi-mlops"}
    args = ["--reference", f"models:/{model['name']}", "--current", only_same, "--actuals", slow_prefix,
            "--retrain-cronjob", "retrain", "--calibration-cache", str(tmp_path / "calibration")]  # fmt: skip
    try:
        first = drift(s3, mlflow_url, *args, env=env)
        assert first.returncode == 0, first.stderr
        decision = first.json["retrain"]
        assert decision["wanted"] is True and "live error degraded" in decision["reason"], decision
        assert [j["metadata"]["name"] for j in api.jobs] == [decision["job"]]
        job = api.jobs[0]
        assert job["spec"] == cronjob["spec"]["jobTemplate"]["spec"]
        assert job["metadata"]["labels"] == {"app.kubernetes.io/component": "retraining"}
        assert job["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "retrain",
                                                       "uid": api.cronjob["metadata"]["uid"], "controller": True}]  # fmt: skip

        second = drift(s3, mlflow_url, *args, env=env)
        assert second.returncode == 0, second.stderr
        assert second.json["retrain"]["wanted"] is True and second.json["retrain"]["job"] is None
        assert second.json["retrain"]["reason"].endswith("; a retraining Job is still running")
        assert f"retraining Job {decision['job']} is still running: not starting another" in second.stderr
        assert len(api.jobs) == 1
    finally:
        api.stop()
    granted = {(verb, resource, name) for rule in role["rules"] for verb in rule["verbs"] for resource in rule["resources"]
               for name in rule.get("resourceNames", [None])}  # fmt: skip
    assert set(api.calls()) == granted == {("get", "cronjobs", "retrain"), ("list", "jobs", None), ("create", "jobs", None)}

"""The drift job as the CronJob runs it: over logs the real transformer wrote, against the training reference."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest
import requests

from harness import free_port, run_cli, start_transformer, unique
from stack import traffic

def replay(url: str, frame: pd.DataFrame, prefix: str) -> list[str]:
    """Send rides through the transformer the way `make traffic` does, with ride ids; return the ids."""
    frame = frame.assign(ride_id=[f"{prefix}-{i}" for i in frame.index])
    assert traffic.replay(url, frame, singles=0) == len(frame)
    return frame["ride_id"].tolist()


def rides_of(path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    df["duration"] = (df.lpep_dropoff_datetime - df.lpep_pickup_datetime).dt.total_seconds() / 60
    return df[df.duration.between(1, 60)].reset_index(drop=True)


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
    """Two windows of real transformer logs: rides like the validation month, then longer trips."""
    prefix = f"s3://predictions/{unique('drift')}"
    proc, url = start_transformer(workdir, s3, predictor[1], prefix, model["version"])
    try:
        val = rides_of(months["val"])
        same = replay(url, val.iloc[:1500], "same")
        longer = val.iloc[1500:3000].assign(trip_distance=lambda d: d.trip_distance * 2)
        shifted = replay(url, longer, "long")
    finally:
        proc.stop()  # SIGTERM flushes the prediction log
    actuals = workdir / "actuals.parquet"
    pd.DataFrame({"ride_id": same, "duration": val.iloc[:1500]["duration"].to_numpy()}).to_parquet(actuals)
    return {"prefix": prefix, "same": same, "shifted": shifted, "actuals": actuals}


def drift(s3, mlflow_url, *args, env=None):
    return run_cli("monitoring", *args, "--tracking-uri", mlflow_url, env={**s3.env, **(env or {})})


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
    assert out["n_current"] == 1500 and out["model_version"] == model["version"]
    assert set(out["columns"]) == {"PULocationID", "DOLocationID", "trip_distance", "prediction"}
    assert out["columns"]["PULocationID"]["test"] == "chi2" and out["columns"]["trip_distance"]["test"] == "ks"
    assert out["performance"]["n_joined"] == 1500
    assert out["performance"]["rmse"] == pytest.approx(model["rmse"], rel=0.5)
    table = result.stdout.splitlines()
    assert any(line.startswith("trip_distance") and line.rstrip().endswith("no") for line in table)

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


def test_longer_trips_are_drift_alerted_and_fail_the_job(s3, mlflow_url, model, logs):
    hook = Webhook()
    only_long = f"{logs['prefix']}-long-copy"
    copy_objects(s3, logs["prefix"], only_long, keep=lambda rec: rec["ride_id"].startswith("long-"))
    result = drift(s3, mlflow_url, "--reference", f"models:/{model['name']}", "--current", only_long, "--fail-on-drift",
                   env={"ALERT_WEBHOOK_URL": hook.url})  # fmt: skip
    assert result.returncode == 1, result.stderr
    out = result.json
    assert out["drift"] is True
    assert out["columns"]["trip_distance"]["drifted"] and out["columns"]["prediction"]["drifted"]
    assert "version" in out["reference"]  # models:/NAME resolved through the version in the logs
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
    assert result.json["n_current"] == 1500
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


def test_real_months(real_data, s3, mlflow_url, workdir):
    """Reference: 2022-02. Windows drawn from 2022-02 itself are not flagged; 2021-01 is.

    Measured: 2021-01 (pandemic winter) against 2022-02 differs in zones and distances at every window
    size we tried (500 to 74k rides): chi-squared and K-S p-values below 1e-9 against thresholds near 1e-3.
    """
    ref = real_data / "green_tripdata_2022-02.parquet"
    cache = str(workdir / "calibration")
    feb = rides_of(ref)
    for seed in range(3):
        window = workdir / f"feb-window-{seed}.parquet"
        feb.sample(5000, random_state=seed).to_parquet(window)
        result = drift(s3, mlflow_url, "--reference", str(ref), "--current", str(window), "--calibration-cache", cache)
        assert result.returncode == 0, result.stderr
        assert result.json["drift"] is False, result.stdout

    old = workdir / "jan-2021-window.parquet"
    rides_of(real_data / "green_tripdata_2021-01.parquet").sample(5000, random_state=0).to_parquet(old)
    result = drift(s3, mlflow_url, "--reference", str(ref), "--current", str(old), "--calibration-cache", cache)
    assert result.returncode == 0, result.stderr
    assert result.json["drift"] is True
    assert all(result.json["columns"][c]["drifted"] for c in ("PULocationID", "DOLocationID", "trip_distance"))

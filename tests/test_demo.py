"""`make demo`, `make up` and `make down` as a user runs them, offline, on small synthetic months."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import requests

from harness import ROOT, free_port


def local_env(months, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    return {
        **env,
        "DATA_DIR": str(months["train"].parent),
        "STATE_DIR": str(tmp_path / "state"),
        "TRAIN_MONTH": "2030-01",
        "VAL_MONTH": "2030-02",
        "TRAFFIC_MONTH": "2030-02",
        "TRAFFIC_RIDES": "1000",
        **{var: str(free_port()) for var in ("S3_PORT", "MLFLOW_PORT", "PREDICTOR_PORT", "TRANSFORMER_PORT")},
    }


def run_local(*args, env, timeout=600):
    return subprocess.run(
        [str(ROOT / "local" / ".venv" / "bin" / "python"), "-m", "local", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_demo_runs_the_whole_loop_and_cleans_up(months, tmp_path):
    env = local_env(months, tmp_path)
    result = run_local("demo", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in range(1, 8):
        assert f"==> [{step}/7]" in out
    summary = json.loads(out.strip().splitlines()[-1])
    # The first 1,000 rides of the month as a dispatcher sends them: the glitches come back as errors, unlogged.
    rejected = sum(summary["rides_rejected"].values())
    assert summary["rides_sent"] == 1000 and summary["rides_scored"] + rejected == 1000
    assert rejected >= 1 and set(summary["rides_rejected"]) <= {"trip_distance", "PULocationID", "DOLocationID"}
    assert summary["log_records"] == summary["rides_scored"]
    assert summary["model_version"] == "1" and summary["storage_uri"].startswith("s3://mlflow/")
    assert summary["drift"] is False and summary["rmse"] < 3
    assert (tmp_path / "state" / "monitoring").exists() and summary["report"].endswith(tuple("0123456789Z"))
    assert os.path.exists(summary["report"] + "/report.html")
    for line in ("model ", "storage URI", "rides ", "scored", "rejected", "log records", "drift", "HTML report", "MLflow UI", "curl"):
        assert line in out, line
    assert "feature        test" in out  # the drift table
    for var in ("S3_PORT", "MLFLOW_PORT", "PREDICTOR_PORT", "TRANSFORMER_PORT"):
        assert port_free(int(env[var])), f"{var} still in use after the demo"


def test_taken_port_is_one_clear_line(months, tmp_path):
    env = local_env(months, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(env["MLFLOW_PORT"])))
        s.listen()
        result = run_local("demo", env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: port {env['MLFLOW_PORT']} (MLflow) is taken: stop what uses it (`make down` if it is this system) "
        "or set MLFLOW_PORT=…"
    )
    assert port_free(int(env["S3_PORT"]))


def test_up_serves_until_down(months, tmp_path):
    env = local_env(months, tmp_path)
    result = run_local("up", env=env)
    try:
        assert result.returncode == 0, result.stderr[-3000:]
        url = f"http://127.0.0.1:{env['TRANSFORMER_PORT']}/v1/models/trip-duration:predict"
        r = requests.post(url, json={"ride_id": "up", "ride": {"PULocationID": 10, "DOLocationID": 20, "trip_distance": 2}}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        assert requests.get(f"http://127.0.0.1:{env['MLFLOW_PORT']}/health", timeout=10).status_code == 200
    finally:
        down = run_local("down", env=env, timeout=120)
    assert down.returncode == 0 and "stopped transformer" in down.stdout
    for var in ("S3_PORT", "MLFLOW_PORT", "PREDICTOR_PORT", "TRANSFORMER_PORT"):
        assert port_free(int(env[var])), f"{var} still in use after make down"
    assert "nothing to stop" in run_local("down", env=env).stdout


def test_upload_copies_local_months_to_s3(s3, tmp_path):
    """What `make upload-data` runs against the cluster's MinIO, here against the test S3 as its admin."""
    month = tmp_path / "green_tripdata_2030-01.parquet"
    month.write_bytes(b"PAR1 not really")
    env = {**os.environ, **s3.env_for()}
    result = run_local("upload", "--to", "s3://data/upload-test/", str(month), env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert s3.keys("data", "upload-test") == ["upload-test/green_tripdata_2030-01.parquet"]
    missing = run_local("upload", "--to", "s3://data/upload-test/", str(tmp_path / "nope.parquet"), env=env, timeout=120)
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope.parquet'}: file not found"

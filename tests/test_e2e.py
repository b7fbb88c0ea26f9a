"""End to end on a real kind cluster: `make deploy`, port-forward, predict, traffic, drift (`make e2e`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import requests

from harness import ROOT, Process, free_port, wait_until

pytestmark = pytest.mark.e2e


def missing_tools() -> str | None:
    for tool in ("docker", "kind", "kubectl"):
        if not shutil.which(tool):
            return f"{tool} not found on PATH"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "docker is installed but no Docker engine is running"
    return None


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    reason = missing_tools()
    if reason:
        pytest.skip(f"e2e needs a kind cluster: {reason}")
    subprocess.run(["make", "deploy"], cwd=ROOT, check=True, timeout=3600)
    port = free_port()
    forward = Process(
        ["kubectl", "port-forward", "-n", "taxi-mlops", "service/trip-duration-transformer", f"{port}:80"],
        dict(os.environ),
        tmp_path_factory.mktemp("e2e") / "port-forward.log",
    ).start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/v1/models/trip-duration", timeout=5).ok, "the port-forward", timeout=60)
    yield url, port
    forward.stop()


def test_predict_through_the_port_forward(deployed):
    url, _ = deployed
    r = requests.post(f"{url}/v1/models/trip-duration:predict", timeout=30,
                      json={"ride_id": "ride_xyz", "ride": {"PULocationID": 100, "DOLocationID": 102, "trip_distance": 30}})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ride_id"] == "ride_xyz" and 1 <= body["prediction"]["duration"] <= 60 and body["model_version"]


def test_traffic_then_drift_job_reads_the_logs(deployed):
    _, port = deployed
    env = {**os.environ, "LOCAL_PORT": str(port), "TRANSFORMER_PORT": str(port), "TRAFFIC_RIDES": "1000"}
    subprocess.run(["make", "traffic"], cwd=ROOT, env=env, check=True, timeout=600)
    out = subprocess.run(["make", "drift"], cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=1200).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["n_current"] >= 1000 and summary["status"] in ("ok", "drift")

from __future__ import annotations

import os

import pyarrow
import pytest
from hypothesis import settings

from harness import SHARED_DATA, S3Endpoint, mlflow_server, start_predictor, synthetic_month, train, unique

# See ride/startup.py: pyarrow's multi-threaded pool can abort the interpreter at exit.
pyarrow.set_cpu_count(1)

# CI replays the same examples on every run, so a red build points at the change that caused it;
# FUZZ_EXAMPLES and a run without CI explore new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("taxi")


@pytest.fixture(scope="session")
def s3(workdir):
    endpoint = S3Endpoint(workdir / "s3").start()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def mlflow_url(workdir, s3):
    """One MLflow server for the session (it takes ~15 s to start), artifacts straight on S3."""
    proc, url = mlflow_server(workdir / "mlflow", s3)
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def months(workdir):
    """Small synthetic TLC months: train, validation, and one whose durations are noise."""
    d = workdir / "months"
    return {
        "train": synthetic_month(d / "green_tripdata_2030-01.parquet", 2030, 1, seed=1),
        "val": synthetic_month(d / "green_tripdata_2030-02.parquet", 2030, 2, seed=2),
        "noise": synthetic_month(d / "noise.parquet", 2030, 1, seed=3, noise_only=True),
        "csv": synthetic_month(d / "green_tripdata_2030-03.csv", 2030, 3, seed=4),
    }


@pytest.fixture(scope="session")
def real_data():
    if not (SHARED_DATA / "green_tripdata_2022-01.parquet").exists():
        pytest.skip(f"real TLC months not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def model(mlflow_url, s3, months, workdir):
    """A model trained through the CLI and registered as <name>@staging, also downloaded for comparisons."""
    name = unique("serving")
    result = train(mlflow_url, s3, months["train"], months["val"], name)
    assert result.returncode == 0, result.stderr
    local = workdir / f"model-{name}"
    s3.download_dir(result.json["storage_uri"], local)
    return {**result.json, "name": name, "local_dir": local}


@pytest.fixture(scope="session")
def predictor(workdir, s3, model):
    proc, host = start_predictor(workdir, s3, model["storage_uri"])
    yield proc, host
    proc.stop()

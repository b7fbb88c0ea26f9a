"""Real processes for the black-box tests: an S3 endpoint, an MLflow server, the components' CLIs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import requests

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "nyc-tlc"
BUCKETS = ("mlflow", "predictions", "monitoring", "data")


def component_python(component: str) -> str:
    python = ROOT / component / ".venv" / "bin" / "python"
    if not python.exists():
        raise RuntimeError(f"{component} environment missing: run `make setup`")
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
    """MinIO when a `minio` binary is on PATH, else moto's server on 127.0.0.1.

    Both can be stopped and started again with their objects intact (MinIO keeps them on disk, moto's
    threaded server in this process's memory), which the fault tests rely on.
    """

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.minio = shutil.which("minio")
        self.kind = "minio" if self.minio else "moto"
        self.access_key, self.secret_key = ("taxi-test", "taxi-test-secret")
        self._server = None

    @property
    def env(self) -> dict:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.url,
            "MLFLOW_S3_ENDPOINT_URL": self.url,
            "S3_USE_HTTPS": "0",
            "S3_VERIFY_SSL": "0",
        }

    def start(self) -> "S3Endpoint":
        if self.minio:
            env = {**os.environ, "MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key}
            self._server = Process(
                [self.minio, "server", str(self.workdir / "minio-data"), "--address", f"127.0.0.1:{self.port}"],
                env,
                self.workdir / "minio.log",
            ).start()
        else:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per S3 request otherwise
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
        wait_until(lambda: self.client().list_buckets() is not None, f"S3 ({self.kind}) at {self.url}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def create_buckets(self, names=BUCKETS) -> None:
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets()["Buckets"]}
        for name in names:
            if name not in existing:
                s3.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def download_dir(self, uri: str, dest: Path) -> list[Path]:
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        out = []
        for key in self.keys(bucket, prefix.rstrip("/") + "/"):
            path = dest / key[len(prefix) :].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.client().download_file(bucket, key, str(path))
            out.append(path)
        return out


def mlflow_server(workdir: Path, s3: S3Endpoint, *extra: str) -> tuple[Process, str]:
    port = free_port()
    env = {**os.environ, **s3.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(Path(component_python("training")).parent / "mlflow"),
        "server",
        "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        *(extra or ("--default-artifact-root", "s3://mlflow/", "--no-serve-artifacts")),
    ]  # fmt: skip
    proc = Process(cmd, env, workdir / "mlflow.log").start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/health"), f"MLflow server at {url}", timeout=180, interval=0.5)
    except TimeoutError:
        proc.stop()
        raise RuntimeError(f"MLflow server did not start:\n{proc.log()[-3000:]}")
    return proc, url


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    json: dict | None = field(default=None)


def run_cli(component: str, *args: str, env: dict | None = None, timeout: float = 300) -> Result:
    """`python -m <component> args…` in the component's own environment."""
    proc = subprocess.run(
        [component_python(component), "-m", component, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    parsed = None
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            parsed = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
    return Result(proc.returncode, proc.stdout, proc.stderr, parsed)


def synthetic_month(
    path: Path, year: int, month: int, n: int = 3000, seed: int = 0, noise_only: bool = False
) -> Path:
    """A small TLC-shaped green-taxi month whose duration depends on zones and distance."""
    rng = np.random.default_rng(seed)
    pu = rng.integers(1, 60, n)
    do = rng.integers(1, 60, n)
    distance = np.round(rng.gamma(2.0, 1.5, n), 2)
    minutes = 2 + 3.2 * distance + (pu % 7) * 0.8 + (do % 5) * 0.6 + rng.normal(0, 1.0, n)
    if noise_only:  # durations unrelated to the features: a model fitted on this is worse
        minutes = rng.uniform(1, 60, n)
    minutes = np.clip(minutes, 1.2, 59)
    start = pd.Timestamp(year=year, month=month, day=1) + pd.to_timedelta(rng.integers(0, 27 * 86400, n), unit="s")
    frame = pd.DataFrame(
        {
            "VendorID": rng.integers(1, 3, n),
            "lpep_pickup_datetime": start,
            "lpep_dropoff_datetime": start + pd.to_timedelta(minutes * 60, unit="s").round("s"),
            "store_and_fwd_flag": "N",
            "RatecodeID": 1.0,
            "PULocationID": pu.astype("int64"),
            "DOLocationID": do.astype("int64"),
            "passenger_count": 1.0,
            "trip_distance": distance,
            "fare_amount": np.round(3 + 2.5 * distance, 2),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


# Runs in the transformer's environment: scikit-learn 1.5.2 and joblib, as KServe's sklearn runtime.
LOAD_LIKE_KSERVE = """
import json, sys, glob, joblib, pandas as pd, sklearn
assert sklearn.__version__ == "1.5.2", sklearn.__version__
files = [f for ext in ("pkl", "joblib", "pickle") for f in glob.glob(f"{sys.argv[1]}/*.{ext}")]
assert len(files) == 1, files
model = joblib.load(files[0])
rows = pd.read_json(sys.stdin, orient="records")
print(json.dumps(model.predict(rows).tolist()))
"""


def predict_like_kserve(model_dir, rows: pd.DataFrame) -> list[float]:
    out = subprocess.run(
        [component_python("transformer"), "-c", LOAD_LIKE_KSERVE, str(model_dir)],
        input=rows.to_json(orient="records"),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def train(mlflow_url, s3, train_src, val_src, model_name, *extra):
    return run_cli(
        "training",
        "train",
        "--train-data", str(train_src),
        "--val-data", str(val_src),
        "--tracking-uri", mlflow_url,
        "--model-name", model_name,
        *extra,
        env=s3.env,
    )  # fmt: skip


def start_predictor(workdir: Path, s3: S3Endpoint, model_dir: str, port: int | None = None) -> tuple[Process, str]:
    """The local stand-in for KServe's sklearn runtime, serving `model_dir` (s3://…) as trip-duration."""
    port = port or free_port()
    proc = Process(
        [component_python("transformer"), "-m", "transformer.sklearn_runtime", "--model_name", "trip-duration",
         "--model_dir", model_dir, "--http_port", str(port)],
        {**os.environ, **s3.env, "OMP_NUM_THREADS": "1"},
        workdir / f"predictor-{port}.log",
    ).start()  # fmt: skip
    host = f"127.0.0.1:{port}"
    wait_until(
        lambda: proc.alive() and http_ok(f"http://{host}/v2/models/trip-duration/ready"),
        f"predictor at {host}\n{proc.log()[-2000:]}",
        timeout=90,
    )
    return proc, host


def start_transformer(
    workdir: Path, s3: S3Endpoint, predictor_host: str, log_uri: str, version: str, **env: str
) -> tuple[Process, str]:
    port = free_port()
    proc = Process(
        [component_python("transformer"), "-m", "transformer", "--model_name", "trip-duration",
         "--predictor_host", predictor_host, "--predictor_protocol", "v2", "--http_port", str(port)],
        {
            **os.environ,
            **s3.env,
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


def read_prediction_logs(s3: S3Endpoint, uri: str) -> list[dict]:
    import gzip

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    records = []
    for key in s3.keys(bucket, prefix):
        body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.endswith(".gz"):
            body = gzip.decompress(body)
        records += [json.loads(line) for line in body.splitlines() if line.strip()]
    return records

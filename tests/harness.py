"""Helpers of the black-box tests; the processes themselves come from the stack package."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from stack.processes import (  # noqa: F401  (re-exported for the tests)
    ROOT,
    Process,
    S3Endpoint,
    component_python,
    free_port,
    http_ok,
    mlflow_server,
    start_predictor,
    start_transformer,
    wait_until,
)

SHARED_DATA = ROOT.parent / "shared" / "data" / "nyc-tlc"


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, to take the server away without stopping it.

    `cut()` refuses new connections and drops the open ones (the server is down); `stall()` accepts connections
    and never answers (the server hangs); `restore()` forwards again, on the same port. The server keeps its
    state throughout: moto's S3 server keeps its objects only in memory.
    """

    def __init__(self, target_url: str):
        host, _, port = target_url.removeprefix("http://").rstrip("/").partition(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stalled = False
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> "TcpProxy":
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the port comes back
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            self._listener.close()
            self._listener = None
        self._drop_open()

    def stall(self) -> None:
        self.stalled = True
        self._drop_open()
        if self._listener is None:
            self.start()

    def restore(self) -> None:
        self.stalled = False
        if self._listener is None:
            self.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            if self.stalled:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._close(client)
                continue
            self._track(upstream)
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source)
            self._close(sink)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _drop_open(self) -> None:
        with self._lock:
            open_now = list(self._open)
        for sock in open_now:
            self._close(sock)


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

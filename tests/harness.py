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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from stack.processes import (  # noqa: F401  (re-exported for the tests)
    BUCKETS,
    POLICIES,
    ROOT,
    USERS,
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
    path: Path, year: int, month: int, n: int = 3000, seed: int = 0, noise_only: bool = False, minutes_per_mile: float = 3.2
) -> Path:
    """A small TLC-shaped green-taxi month whose duration depends on zones and distance (`minutes_per_mile`).

    Odd rides included, as in TLC's own months: short hops with zero distance, trips that end before they start
    or run for hours, odometer glitches of thousands of miles, and pick-ups outside the month.
    """
    rng = np.random.default_rng(seed)
    pu = rng.integers(1, 60, n)
    do = rng.integers(1, 60, n)
    distance = np.round(rng.gamma(2.0, 1.5, n), 2)
    minutes = 2 + minutes_per_mile * distance + (pu % 7) * 0.8 + (do % 5) * 0.6 + rng.normal(0, 1.0, n)
    if noise_only:  # durations unrelated to the features: a model fitted on this is worse
        minutes = rng.uniform(1, 60, n)
    minutes = np.clip(minutes, 1.2, 59)
    start = pd.Timestamp(year=year, month=month, day=1) + pd.to_timedelta(rng.integers(0, 27 * 86400, n), unit="s")
    odd = rng.random(n)
    hop = odd < 0.025  # a ride cancelled at the kerb: same zone, no distance, under a minute
    do, distance, minutes = np.where(hop, pu, do), np.where(hop, 0.0, distance), np.where(hop, rng.uniform(0, 0.9, n), minutes)
    minutes = np.where((odd >= 0.025) & (odd < 0.035), rng.uniform(61, 1400, n), minutes)  # the meter left running
    minutes = np.where((odd >= 0.035) & (odd < 0.04), -rng.uniform(1, 30, n), minutes)  # drop-off before pick-up
    glitch = (odd >= 0.04) & (odd < 0.043)
    distance = np.where(glitch, np.round(rng.uniform(1_000, 250_000, n), 2), distance)  # odometer glitches
    distance[rng.choice(n, 3, replace=False)] = 33884.0  # at least a few, whatever the seed
    start = start.where(~((odd >= 0.043) & (odd < 0.044)), pd.Timestamp("2009-01-01 00:03:25"))
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
            "fare_amount": np.round(3 + 2.5 * np.minimum(distance, 100), 2),
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
rows = pd.DataFrame(json.load(sys.stdin))
print(json.dumps(model.predict(rows).tolist()))
"""


def predict_like_kserve(model_dir, rows: pd.DataFrame) -> list[float]:
    out = subprocess.run(
        [component_python("transformer"), "-c", LOAD_LIKE_KSERVE, str(model_dir)],
        input=json.dumps(rows.to_dict(orient="records")),  # exact floats: pandas' JSON rounds them
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
        env=s3.env_for("training"),
    )  # fmt: skip


def read_prediction_logs(s3: S3Endpoint, uri: str) -> list[dict]:
    """Every record below `uri` as written, duplicates included (delivery is at-least-once), read as the admin."""
    from ride import LOG_FIELDS
    from ride.reader import read_records

    return read_records(uri, LOG_FIELDS, ["record_id"], credentials=s3.env_for()).frame.to_dict("records")


def metric(url: str, name: str) -> float:
    """A sample of the Prometheus text a server exposes at /metrics, e.g. `rides_rejected_total{reason="ride_id"}`."""
    import requests

    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


class ApiStandIn:
    """A small HTTP server standing in for the Kubernetes API server, which cannot run here: the kubernetes client in a
    component's environment speaks real HTTP to it. Subclasses answer in `route`; every request is recorded as
    (method, path, query, content type, body)."""

    def __init__(self):
        self.requests: list[tuple] = []
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

        for method in ("GET", "POST", "PATCH", "PUT"):
            setattr(Handler, f"do_{method}", lambda handler, method=method: stand_in.handle(handler, method))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        body = h.rfile.read(int(h.headers.get("Content-Length", 0))) if method != "GET" else b""
        query = parse_qs(url.query)
        with self.lock:
            self.requests.append((method, url.path, query, h.headers.get("Content-Type"), body))
            status, answer = self.route(method, url.path, query, body)
        data = json.dumps(answer).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def route(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict]:
        raise NotImplementedError

    @staticmethod
    def not_found() -> tuple[int, dict]:
        return 404, {"kind": "Status", "code": 404, "reason": "NotFound"}

    def kubeconfig(self, folder: Path, namespace: str) -> Path:
        """A kubeconfig that points the kubernetes client here, as a pod's in-cluster config points it at the API."""
        path = folder / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "job", "user": {"token": "stand-in"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "job", "namespace": namespace}}],
        }))  # fmt: skip
        return path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

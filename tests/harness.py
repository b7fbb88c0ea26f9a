"""Helpers of the black-box tests; the processes themselves come from the `local` package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd

from local.processes import (  # noqa: F401  (re-exported for the tests)
    BUCKETS,
    POLICIES,
    ROOT,
    USERS,
    Process,
    S3Endpoint,
    component_python,
    free_port,
    mlflow_server,
    start_predictor,
    start_transformer,
    wait_until,
)
from local.proxy import TcpProxy  # noqa: F401  (re-exported for the tests)
from local.synthetic import synthetic_month  # noqa: F401

SHARED_DATA = ROOT.parent / "shared" / "data" / "nyc-tlc"
UPSTREAM = ROOT.parent / "shared" / "upstream"  # KServe's release files, one folder per version
VERSIONS = dict(line.split("=", 1) for line in (ROOT / "versions.env").read_text().splitlines()
                if "=" in line and not line.startswith("#"))  # fmt: skip
# The binaries cluster/build makes (`make test` runs it), cached by version outside the repository.
CLUSTER_CACHE = Path(os.environ.get("TAXI_MLOPS_CACHE", Path.home() / ".cache" / "taxi-mlops"))
K8S_BIN = CLUSTER_CACHE / f"k8s-{VERSIONS['K8S_VERSION']}" / "bin"
# The pinned kubectl cluster/build made; a machine's own only where that could not be built (no Go toolchain).
KUBECTL = str(K8S_BIN / "kubectl") if (K8S_BIN / "kubectl").exists() else "kubectl"


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
    """Every record below `uri` exactly as written, duplicates included (delivery is at-least-once), read as the
    admin. Parsed here, not by the product's tolerant reader: a missing or extra field, or an unreadable object,
    fails the test."""
    import gzip

    from ride import store

    credentials = s3.env_for()
    records = []
    for key, body in sorted(store.read_many(store.list_objects(uri, credentials), credentials).items()):
        assert not isinstance(body, Exception), f"{key}: {body}"
        records += [json.loads(line) for line in gzip.decompress(body).decode().splitlines()]
    return records


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

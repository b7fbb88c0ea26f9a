"""`python -m local demo|up|down|traffic`: the whole loop on one machine, no Kubernetes, no Docker."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from ride import startup, store
from ride.reader import read_predictions
from local import processes, traffic
from local.processes import ROOT, Process, S3Endpoint, StepError, component_python

MODEL_NAME = "trip_duration"
LOG_URI = "s3://predictions/logs"
ACTUALS_URI = "s3://actuals/rides"
CURL = (
    "curl -s localhost:{port}/v1/models/trip-duration:predict -H 'Content-Type: application/json' "
    """-d '{{"ride_id": "ride_xyz", "ride": {{"PULocationID": 100, "DOLocationID": 102, "trip_distance": 30}}}}'"""
)


@dataclass
class Config:
    state: Path = ROOT / ".local"
    s3_port: int = 9000
    mlflow_port: int = 5000
    predictor_port: int = 8081
    transformer_port: int = 8080
    train_month: str = "2022-01"
    val_month: str = "2022-02"
    traffic_month: str = "2022-02"
    traffic_rides: int = 3000

    @classmethod
    def from_env(cls, **defaults) -> "Config":
        """Each field from its upper-case environment variable (STATE_DIR for state), else `defaults`, else the default."""
        values = dict(defaults)
        for name, default in vars(cls(**defaults)).items():
            var = "STATE_DIR" if name == "state" else name.upper()
            if var in os.environ:
                try:
                    values[name] = type(default)(os.environ[var])
                except ValueError:
                    raise StepError(f"{var}={os.environ[var]!r} is not a valid {type(default).__name__}") from None
        return cls(**values)

    @property
    def logs(self) -> Path:
        return self.state / "logs"


class Progress:
    def __init__(self, total: int):
        self.total, self.step, self.started = total, 0, time.monotonic()

    def __call__(self, message: str) -> None:
        self.step += 1
        print(f"==> [{self.step}/{self.total}] {message}  (+{time.monotonic() - self.started:.0f}s)", flush=True)


def check_ports(cfg: Config) -> None:
    for name, var, port in (
        ("S3", "S3_PORT", cfg.s3_port),
        ("MLflow", "MLFLOW_PORT", cfg.mlflow_port),
        ("predictor", "PREDICTOR_PORT", cfg.predictor_port),
        ("transformer", "TRANSFORMER_PORT", cfg.transformer_port),
    ):
        with socket.socket() as s:
            # As the servers do: connections of an earlier run in TIME_WAIT do not make a port taken.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                raise StepError(
                    f"port {port} ({name}) is taken: stop what uses it (`make down` if it is this system) or set {var}=…"
                ) from None


def run_step(component: str, args: list[str], env: dict, log: Path) -> dict:
    """A component's CLI; its output goes to `log`; its last stdout line is JSON; any exit but 0 stops the system."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.run(
            [component_python(component), "-m", component, *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    with open(log, "a") as out:
        out.write(proc.stdout)
    if proc.returncode != 0 or not proc.stdout.strip():
        last = log.read_text().strip().splitlines()[-1:] or [""]
        raise StepError(f"`python -m {component} {args[0]}` failed: {last[0]} (log: {log})")
    return {"json": json.loads(proc.stdout.strip().splitlines()[-1]), "stdout": proc.stdout}


class System:
    """S3, MLflow, a trained model, the predictor and the transformer, each a process with a log file."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.procs: dict[str, Process] = {}
        self.s3: S3Endpoint | None = None
        self.model: dict = {}  # what @staging resolves to: run_id, version, source
        self.trained: dict = {}  # the first training run's result

    def env(self, user: str | None = None) -> dict:
        """A step's environment: MLflow, and S3 as `user` (as in the cluster, each component its own)."""
        return {**(self.s3.env_for(user) if user else {}), "MLFLOW_TRACKING_URI": self.mlflow_url}

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.mlflow_port}"

    @property
    def transformer_url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.transformer_port}"

    def start(self, progress: Progress) -> None:
        cfg = self.cfg
        check_ports(cfg)
        cfg.logs.mkdir(parents=True, exist_ok=True)

        if not processes.shutil.which("minio"):
            # moto keeps objects in memory only: a registry left from an earlier run would point at nothing.
            processes.shutil.rmtree(cfg.state / "mlflow", ignore_errors=True)
        self.s3 = S3Endpoint(cfg.logs, port=cfg.s3_port, in_process=False)
        self.s3.start()
        progress(f"S3 ({self.s3.kind}) at {self.s3.url}")

        proc, _ = processes.mlflow_server(cfg.state / "mlflow", self.s3, port=cfg.mlflow_port)
        self.procs["mlflow"] = proc
        progress(f"MLflow at {self.mlflow_url} (sqlite in {cfg.state / 'mlflow'})")

        self.trained = trained = self.train(["--train-data", cfg.train_month, "--val-data", cfg.val_month], "train")
        progress(
            f"trained on {cfg.train_month}, validated on {cfg.val_month}: RMSE {trained['rmse']:.2f} min, "
            f"version {trained['version']} ({'promoted to @staging' if trained['promoted'] else trained['reason']})"
        )
        self.deploy()
        progress(f"{MODEL_NAME}@staging is version {self.model['version']} at {self.model['source']}")
        progress(f"predictor at http://127.0.0.1:{cfg.predictor_port}, transformer at {self.transformer_url}")

    def train(self, args: list[str], log: str) -> dict:
        return run_step("training", ["train", *args, "--model-name", MODEL_NAME], self.env("training"),
                        self.cfg.logs / f"{log}.log")["json"]  # fmt: skip

    def deploy(self) -> None:
        """What the cluster's deploy step does, on one machine: serve the version @staging holds.

        A running transformer gets SIGTERM first, which flushes its prediction log."""
        cfg = self.cfg
        for name in ("transformer", "predictor"):
            if name in self.procs:
                self.procs.pop(name).stop(signal.SIGTERM)
        resolved = run_step(
            "training", ["storage-uri", "--model-name", MODEL_NAME, "--alias", "staging"], self.env(), cfg.logs / "storage-uri.log"
        )["json"]
        self.model = resolved
        proc, host = processes.start_predictor(cfg.logs, self.s3, resolved["source"], port=cfg.predictor_port)
        self.procs["predictor"] = proc
        proc, _ = processes.start_transformer(
            cfg.logs, self.s3, host, LOG_URI, resolved["version"], port=cfg.transformer_port,
            PREDICTION_LOG_SPILL_DIR=str(cfg.state / "spill"),
        )  # fmt: skip
        self.procs["transformer"] = proc

    def drift(self, args: list[str], log: str) -> dict:
        """The drift job over the prediction log, as the CronJob runs it (without --fail-on-*: drift is exit 0 too)."""
        return run_step(
            "monitoring",
            ["--reference", f"models:/{MODEL_NAME}", "--current", LOG_URI, "--actuals", ACTUALS_URI, *args],
            self.env("drift"),
            self.cfg.logs / f"{log}.log",
        )

    def stop(self) -> None:
        for name in ("transformer", "predictor", "mlflow"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                proc.stop()
        if self.s3 is not None:
            self.s3.stop()

    def save(self) -> None:
        state = {name: proc.proc.pid for name, proc in self.procs.items()}
        state["s3"] = self.s3.pid
        # Each component's keys (moto makes them at start), for whatever is run against the system while it is up.
        users = {"admin": [self.s3.access_key, self.s3.secret_key], **{u: list(k) for u, k in self.s3.users.items()}}
        path = self.cfg.state / "up.json"
        path.write_text(json.dumps({"pids": state, "model": self.model, "s3": {"url": self.s3.url, "users": users}}, indent=2))
        path.chmod(0o600)

    def count_logged(self) -> int:
        return len(read_predictions(LOG_URI, credentials=self.s3.env_for()).frame)  # as the operator

    def wait_logged(self, since, n: int) -> None:
        """Until the transformer has shipped `n` records scored since `since` (it flushes every half second here)."""
        processes.wait_until(lambda: len(read_predictions(LOG_URI, since, credentials=self.s3.env_for()).frame) >= n,
                             f"{n:,} prediction-log records in {LOG_URI}", timeout=120, interval=0.5)  # fmt: skip


def demo(cfg: Config) -> dict:
    progress = Progress(7)
    system = System(cfg)
    try:
        system.start(progress)
        rides = traffic.rides(cfg.traffic_month, cfg.traffic_rides or None)
        replayed = traffic.replay(system.transformer_url, rides)
        actuals = traffic.write_actuals(ACTUALS_URI, rides, system.s3.env_for("dispatcher"))
        system.procs.pop("transformer").stop(signal.SIGTERM)  # SIGTERM flushes every buffered log record
        logged = system.count_logged()
        progress(f"replayed the first {len(rides):,} rides of {cfg.traffic_month} as a dispatcher sends them: "
                 f"{replayed.summary}; {logged:,} log records in {LOG_URI}")  # fmt: skip

        drift = system.drift(["--window", "24h", "--report-uri", str(cfg.state / "monitoring"), "--log-to-mlflow"], "drift")
        progress("drift job done")
        summary = {
            "rmse": system.trained["rmse"],
            "model_version": system.model["version"],
            "storage_uri": system.model["source"],
            "rides_sent": len(rides),
            "rides_scored": len(replayed.scored),
            "rides_rejected": dict(replayed.rejected),
            "log_records": logged,
            "actuals": actuals,
            "drift": drift["json"]["drift"],
            "drift_status": drift["json"]["status"],
            "report": drift["json"]["report"],
            "report_html": drift["json"].get("report_html"),
            "performance": drift["json"].get("performance"),
            "mlflow_ui": system.mlflow_url,
        }
        print_summary(cfg, summary, drift["stdout"])
        (cfg.state / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        system.stop()


def print_summary(cfg: Config, s: dict, drift_stdout: str) -> None:
    table = [line for line in drift_stdout.strip().splitlines()[:-1]]
    perf = s.get("performance") or {}
    print()
    print("=" * 30 + " taxi-mlops demo " + "=" * 30)
    print(f"model          {MODEL_NAME} version {s['model_version']} @staging, RMSE {s['rmse']:.2f} min on {cfg.val_month}")
    print(f"storage URI    {s['storage_uri']}")
    rejected = sum(s["rides_rejected"].values())
    why = ", ".join(f"{field} {n:,}" for field, n in s["rides_rejected"].items())
    print(f"rides          {s['rides_sent']:,} of {cfg.traffic_month} sent in pick-up order: {s['rides_scored']:,} scored, "
          f"{rejected:,} rejected" + (f" ({why})" if why else ""))  # fmt: skip
    print(f"log records    {s['log_records']:,} in {LOG_URI}; actual durations of all {s['actuals']:,} in {ACTUALS_URI}")
    if perf.get("rmse"):
        print(f"live RMSE      {perf['rmse']:.2f} min on the {perf['n_joined']:,} scored rides whose actual duration was 1-60 min")
    print(f"drift          {'YES' if s['drift'] else 'no'}")
    for line in table:
        print(f"    {line}")
    if s["report_html"]:
        print(f"HTML report    {s['report_html']}")
    print(f"MLflow UI      `make up`, then open {s['mlflow_ui']}")
    print(f"try it         `make up`, then: {CURL.format(port=cfg.transformer_port)}")
    print(json.dumps(s))


def up(cfg: Config) -> None:
    system = System(cfg)
    try:
        system.start(Progress(5))
    except BaseException:
        system.stop()
        raise
    system.save()
    print(f"\nthe system is up (state in {cfg.state}); `make down` stops it.")
    print(f"MLflow UI      {system.mlflow_url}")
    print(f"S3             {system.s3.url} (admin key {system.s3.access_key}, secret {system.s3.secret_key}; "
          f"each component's keys in {cfg.state / 'up.json'})")
    print(f"try it         {CURL.format(port=cfg.transformer_port)}")


def down(cfg: Config) -> None:
    path = cfg.state / "up.json"
    if not path.exists():
        print("nothing to stop: nothing is up")
        return
    pids = json.loads(path.read_text())["pids"]
    for name, pid in pids.items():
        try:
            os.killpg(pid, signal.SIGTERM)
            print(f"stopped {name} (pid {pid})")
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    for pid in pids.values():
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    path.unlink()


def dispatcher(cfg: Config) -> dict:
    """The dispatcher's S3 identity in the system `make up` started."""
    path = cfg.state / "up.json"
    if not path.exists():
        raise StepError("no S3 keys for the actuals: set AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                         "(the dispatcher's), start the system on this machine (`make up`), or pass --actuals-uri ''")  # fmt: skip
    s3 = json.loads(path.read_text())["s3"]
    key, secret = s3["users"]["dispatcher"]
    return {"AWS_ENDPOINT_URL": s3["url"], "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}


def upload(to: str, files: list[Path]) -> None:
    for path in files:
        if not path.is_file():
            raise StepError(f"{path}: file not found")
        store.write_bytes(store.join(to, path.name), path.read_bytes())
        print(f"uploaded {path} to {store.join(to, path.name)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m local",
        description="The whole system on one machine, no Kubernetes and no Docker.",
        epilog="Environment: DATA_DIR (local TLC months; else they are downloaded and cached), STATE_DIR "
        "(default .local), S3_PORT 9000, MLFLOW_PORT 5000, PREDICTOR_PORT 8081, TRANSFORMER_PORT 8080, "
        "TRAIN_MONTH 2022-01, VAL_MONTH 2022-02, TRAFFIC_MONTH 2022-02, TRAFFIC_RIDES 3000 (for `loop`: 2021-01, "
        "2021-02, 2022-02 and 20000 rides a phase).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="start everything, train, serve, replay rides, run the drift job, summarize, clean up")
    sub.add_parser("up", help="start S3, MLflow, train, and serve; leave it running")
    sub.add_parser("loop", help="close the loop: an older model serves newer rides with actuals, the drift job asks for "
                   "retraining, a challenger trained on the logged rides is promoted and served, rollback and back")  # fmt: skip
    sub.add_parser("down", help="stop what `up` started")
    t = sub.add_parser("traffic", help="replay rides of a month through a transformer")
    t.add_argument("--url", default="http://localhost:8080")
    t.add_argument("--month", default=os.environ.get("TRAFFIC_MONTH", "2022-02"), help="YYYY-MM or a TLC parquet file")
    t.add_argument("--rides", type=int, default=int(os.environ.get("TRAFFIC_RIDES", 3000)),
                   help="how many rides, from the month's first pick-up on; 0 sends every ride (default 3000)")
    t.add_argument("--actuals-uri", default=ACTUALS_URI,
                   help=f"where the rides' actual durations are reported, as the dispatcher's S3 user: the AWS_* "
                   f"variables, else those of the system `make up` started; '' reports none (default {ACTUALS_URI})")  # fmt: skip
    u = sub.add_parser("upload", help="copy local files to an s3:// prefix (endpoint and keys from AWS_* variables)")
    u.add_argument("--to", required=True, help="s3://bucket/prefix/")
    u.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)

    # Ctrl-C and `kill` both end in the `finally` that stops every process we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        cfg = Config.from_env()
        if args.command == "demo":
            demo(cfg)
        elif args.command == "loop":
            from local.loop import loop

            # An older model on newer rides: 2021-01 (lockdown) serving 2022-02; each phase 20,000 rides.
            loop(Config.from_env(train_month="2021-01", val_month="2021-02", traffic_month="2022-02", traffic_rides=20_000))
        elif args.command == "up":
            up(cfg)
        elif args.command == "down":
            down(cfg)
        elif args.command == "upload":
            upload(args.to, args.files)
        else:
            rides = traffic.rides(args.month, args.rides or None)
            replayed = traffic.replay(args.url, rides)
            print(f"replayed the first {len(rides):,} rides of {args.month} in pick-up order through {args.url}: "
                  f"{replayed.summary}")
            if args.actuals_uri:
                written = traffic.write_actuals(args.actuals_uri, rides, None if os.environ.get("AWS_ACCESS_KEY_ID") else dispatcher(cfg))
                print(f"reported the actual durations of {written:,} rides to {args.actuals_uri}")
    except (StepError, TimeoutError, requests.RequestException) as e:
        startup.fail(str(e))
    except KeyboardInterrupt:
        print("interrupted: every process this started has been stopped", file=sys.stderr)
        sys.exit(130)

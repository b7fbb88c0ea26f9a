"""Least privilege, as SECURITY.md claims it: every container of the cluster path locked down, each reaching only its
own component's Secret and no Kubernetes token unless it calls the API, and one S3 user per component whose policy
grants exactly what that component needs, enforced by the S3 endpoint the whole suite runs against."""

from __future__ import annotations

import json
import re
import subprocess
import uuid

import pytest
import requests
import yaml
from botocore.exceptions import ClientError

from harness import BUCKETS, POLICIES, ROOT, USERS, read_prediction_logs, start_transformer, unique, wait_until
from local.processes import StepError
from test_manifests import kustomize_tagged, render_isvc

# What each component may do in S3 (read: list the bucket and get its objects; write: put objects), and nothing else.
ACCESS = {
    "training": {"read": {"mlflow", "data", "predictions", "actuals"}, "write": {"mlflow"}},
    "predictor": {"read": {"mlflow"}, "write": set()},  # KServe's storage initializer fetches the model
    "transformer": {"read": set(), "write": {"predictions"}},  # so it cannot replace a model the predictor unpickles
    "drift": {"read": {"predictions", "mlflow", "actuals", "monitoring"}, "write": {"monitoring"}},  # its cache too
    "mlflow": {"read": {"mlflow"}, "write": set()},  # the UI's artifact views; clients write artifacts themselves
    "dispatcher": {"read": set(), "write": {"actuals"}},  # a dispatch system reporting how long rides took
}

# (kind, name, container) → the Secrets it may reach. Every container of the cluster path is here: a new one fails
# the walk until it is placed. The predictor's Secret comes through its ServiceAccount, kserve-s3.
SECRETS = {
    ("Deployment", "minio", "minio"): {"minio-root"},
    ("Job", "minio-setup", "mc"): {"minio-root", *(f"s3-{user}" for user in USERS)},
    ("Deployment", "mlflow", "mlflow"): {"s3-mlflow"},
    # The training pipeline's CronJobs: retrain's step reads the logs and actuals with training's key; rollback's needs
    # MLflow alone.
    **{("CronJob", name, "transformer-image"): set() for name in ("training", "retrain", "rollback")},
    ("CronJob", "training", "train"): {"s3-training"},
    ("CronJob", "retrain", "train"): {"s3-training"},
    ("CronJob", "rollback", "rollback"): set(),
    **{("CronJob", name, "deploy"): set() for name in ("training", "retrain", "rollback")},
    ("CronJob", "drift", "drift"): {"s3-drift"},
    ("InferenceService", "trip-duration", "predictor"): {"s3-predictor"},
    ("InferenceService", "trip-duration", "transformer"): {"s3-transformer"},
}
# The containers that call the Kubernetes API, and so mount a service-account token: deploy rolls the InferenceService,
# drift starts retraining Jobs.
API_CALLERS = {*(("CronJob", name, "deploy") for name in ("training", "retrain", "rollback")), ("CronJob", "drift", "drift")}
# What each ServiceAccount may do through its RoleBindings, rule by rule: (verbs, API group, resource, resourceNames).
GRANTS = {
    "training": {(("get", "create", "patch"), "serving.kserve.io", "inferenceservices", None),
                 (("get",), "apps", "deployments", None)},
    "drift": {(("get",), "batch", "cronjobs", ("retrain",)), (("list",), "batch", "jobs", None),
              (("create",), "batch", "jobs", None)},
}  # fmt: skip
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    """What `make apply` applies, and the InferenceService the training pipeline's deploy container renders."""
    return [*kustomize_tagged(tmp_path_factory.mktemp("build")), render_isvc()]


def pods(docs: list[dict]):
    """(kind, name, component, pod spec, containers) for every pod the cluster path runs."""
    for doc in docs:
        kind, name, spec = doc["kind"], doc["metadata"]["name"], doc.get("spec", {})
        if kind == "InferenceService":
            yield kind, name, "predictor", spec["predictor"], [spec["predictor"]["model"]]
            yield kind, name, "transformer", spec["transformer"], spec["transformer"]["containers"]
            continue
        if kind == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec:
            pod = spec["template"]["spec"]
            yield kind, name, None, pod, pod.get("initContainers", []) + pod["containers"]


def containers(docs: list[dict]):
    """((kind, name, container), pod spec, container) for every container; an InferenceService's by component."""
    for kind, name, component, pod, listed in pods(docs):
        for c in listed:
            yield (kind, name, component or c["name"]), pod, c


def test_every_container_runs_locked_down(docs):
    """Non-root with a UID, RuntimeDefault seccomp, no privilege escalation, no capabilities, a read-only root
    filesystem, CPU and memory requests and limits: in the manifests and in the rendered InferenceService."""
    seen = set()
    for where, pod, c in containers(docs):
        seen.add(where)
        effective = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        assert effective.get("runAsNonRoot") is True and effective.get("runAsUser", 0) > 0, where
        assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False and sc.get("capabilities") == {"drop": ["ALL"]}, where
        assert sc.get("readOnlyRootFilesystem") is True and not sc.get("privileged"), where
        for need in ("requests", "limits"):
            assert set(c.get("resources", {}).get(need, {})) >= {"cpu", "memory"}, f"{where}: {need}"
    assert seen == set(SECRETS), "every container of the cluster path is walked, and placed in SECRETS"


def secrets_reached(pod: dict, container: dict, accounts: dict[str, dict]) -> set[str]:
    names = {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
    names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    for volume in pod.get("volumes", []):
        if volume["name"] in mounted:
            names |= {volume["secret"]["secretName"]} if "secret" in volume else set()
            names |= {s["secret"]["name"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s}
    account = accounts.get(pod.get("serviceAccountName", "default"), {})
    return names | {s["name"] for s in account.get("secrets", [])}  # what KServe hands the storage initializer


def test_no_container_reaches_a_secret_but_its_own_components(docs):
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    reached = {where: secrets_reached(pod, c, accounts) for where, pod, c in containers(docs)}
    assert reached == SECRETS


def mounts_token(pod: dict, container: dict, accounts: dict[str, dict]) -> bool:
    automount = pod.get("automountServiceAccountToken",
                        accounts.get(pod.get("serviceAccountName", "default"), {}).get("automountServiceAccountToken", True))  # fmt: skip
    token_volumes = {v["name"] for v in pod.get("volumes", [])
                     if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))}  # fmt: skip
    return automount or any(m["name"] in token_volumes for m in container.get("volumeMounts", []))


def test_only_the_containers_that_call_the_api_mount_a_token(docs):
    """No pod and no ServiceAccount automounts one (KServe's shipped default would, for the InferenceService's pods);
    the deploy container mounts the token where the kubernetes client's in-cluster config reads it."""
    accounts = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    assert accounts and all(a.get("automountServiceAccountToken") is False for a in accounts.values())
    for kind, name, component, pod, _ in pods(docs):
        assert pod.get("automountServiceAccountToken") is False, f"{kind}/{name} {component or ''}"
    with_token = {where for where, pod, c in containers(docs) if mounts_token(pod, c, accounts)}
    assert with_token == API_CALLERS
    for where, pod, c in containers(docs):
        if where in API_CALLERS:
            mount = next(m for m in c["volumeMounts"] if m["mountPath"] == TOKEN_PATH)
            sources = next(v for v in pod["volumes"] if v["name"] == mount["name"])["projected"]["sources"]
            files = {f"{kind}:{item['path']}" for source in sources for kind, v in source.items()
                     for item in v.get("items", [v])}  # fmt: skip
            assert files == {"serviceAccountToken:token", "configMap:ca.crt", "downwardAPI:namespace"}


def test_each_service_account_is_granted_exactly_its_calls(docs):
    """The deploy container's account rolls the InferenceService; the drift job's reads the one CronJob it starts
    retraining Jobs from, lists Jobs (one retraining at a time) and creates them; nothing else, and no other account is
    bound to anything."""
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    granted: dict[str, set] = {}
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["roleRef"]["kind"] == "Role", "namespaced grants only"
        for subject in binding["subjects"]:
            assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", "taxi-mlops")
            granted.setdefault(subject["name"], set()).update(
                (tuple(r["verbs"]), *r["apiGroups"], *r["resources"], tuple(r["resourceNames"]) if "resourceNames" in r else None)
                for r in roles[binding["roleRef"]["name"]]["rules"])  # fmt: skip
    assert granted == GRANTS
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for kind, name, _, pod, _ in pods(docs):
        if any((kind, name, c) in API_CALLERS for c in ("deploy", "drift")):
            assert pod["serviceAccountName"] in GRANTS, f"{kind}/{name}"


def test_nothing_is_exposed_outside_the_cluster(docs):
    """Reached only through `kubectl port-forward`: ClusterIP Services, a cluster-local InferenceService, no host
    ports, host network or host paths, and no port of the kind node mapped onto the host."""
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", doc["metadata"]["name"]
        if doc["kind"] == "InferenceService":
            assert doc["metadata"]["labels"]["networking.kserve.io/visibility"] == "cluster-local"
    for kind, name, _, pod, listed in pods(docs):
        assert not pod.get("hostNetwork") and not any("hostPath" in v for v in pod.get("volumes", [])), f"{kind}/{name}"
        assert not any("hostPort" in port for c in listed for port in c.get("ports", [])), f"{kind}/{name}"
    kind_config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert not any("extraPortMappings" in node for node in kind_config["nodes"])


def grants(document: dict) -> dict[str, set[str]]:
    """A policy document as {"read": buckets, "write": buckets}; anything it says beyond that fails here."""
    assert document["Version"] == "2012-10-17"
    listed, got, put = set(), set(), set()
    for statement in document["Statement"]:
        assert set(statement) <= {"Sid", "Effect", "Action", "Resource"} and statement["Effect"] == "Allow", statement
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                bucket = re.fullmatch(r"arn:aws:s3:::([a-z0-9-]+)(/\*)?", resource)
                assert bucket, f"{resource}: one whole bucket or all its objects, no other pattern"
                on_objects = bool(bucket[2])
                if action in ("s3:ListBucket", "s3:HeadBucket") and not on_objects:
                    listed.add(bucket[1])
                elif action == "s3:GetObject" and on_objects:
                    got.add(bucket[1])
                elif action == "s3:PutObject" and on_objects:
                    put.add(bucket[1])
                else:
                    pytest.fail(f"{action} on {resource}: not a read or a write of a bucket")
    assert listed == got, "a bucket read is listed and its objects got"
    return {"read": got, "write": put}


def test_each_components_policy_grants_exactly_its_row_of_the_table():
    assert set(USERS) == set(ACCESS)
    for user in USERS:
        assert grants(json.loads((POLICIES / f"{user}.json").read_text())) == ACCESS[user], user
    assert {b for row in ACCESS.values() for buckets in row.values() for b in buckets} <= set(BUCKETS)


def test_the_set_up_job_gets_the_policy_documents_as_they_are(docs):
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("s3-policies"))
    assert {k: json.loads(v) for k, v in config["data"].items()} == {
        f"{user}.json": json.loads((POLICIES / f"{user}.json").read_text()) for user in USERS
    }


def test_make_secret_makes_every_secret_once_and_annotates_only_the_predictors():
    out = subprocess.run(["make", "-n", "secret"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    created = re.findall(r"\|\| \\?\s*kubectl create secret generic (\S+) -n taxi-mlops (.*)", out)
    assert [name for name, _ in created] == ["minio-root", *(f"s3-{user}" for user in USERS)]
    for name, literals in created[1:]:
        assert f'"--from-literal=AWS_ACCESS_KEY_ID={name.removeprefix("s3-")}"' in literals
        assert '"--from-literal=AWS_SECRET_ACCESS_KEY=$(openssl rand -hex 24)"' in literals
    for name in ["minio-root", *(f"s3-{user}" for user in USERS)]:
        assert f"kubectl get secret {name} -n taxi-mlops >/dev/null 2>&1 ||" in out, f"{name} is kept when it exists"
    assert re.findall(r"kubectl annotate --overwrite secret (\S+)", out) == ["s3-predictor"]


MC = """#!/bin/sh
echo "$*" >> "$CALLS"
"""


def test_the_set_up_job_makes_each_user_from_its_secret_with_its_policy(docs, tmp_path):
    """The Job's own script, run with a stand-in `mc` and its volumes laid out as the kubelet would mount them."""
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "minio-setup")
    pod = job["spec"]["template"]["spec"]
    mc = pod["containers"][0]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("s3-policies"))
    mounts = {m["name"]: m["mountPath"] for m in mc["volumeMounts"]}
    for volume in pod["volumes"]:
        where = tmp_path / mounts[volume["name"]].lstrip("/")
        if "configMap" in volume:
            for key, value in config["data"].items():
                (where / key).parent.mkdir(parents=True, exist_ok=True)
                (where / key).write_text(value)
        for source in volume.get("projected", {}).get("sources", []):
            for item in source["secret"]["items"]:  # each value names its Secret and key, to be traced below
                (where / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (where / item["path"]).write_text(f"{source['secret']['name']}.{item['key']}")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "mc").write_text(MC)
    (tmp_path / "bin" / "mc").chmod(0o755)
    script = mc["args"][0]
    for path in mounts.values():
        script = script.replace(f"{path}/", f"{tmp_path}{path}/")
    calls = tmp_path / "calls"
    subprocess.run([*mc["command"][:-1], "-c", script], check=True, env={
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "CALLS": str(calls),
        "MINIO_ROOT_USER": "root-user", "MINIO_ROOT_PASSWORD": "root-password"})  # fmt: skip
    made = calls.read_text().splitlines()
    assert made[0] == "alias set local http://minio:9000 root-user root-password"
    assert sorted(re.findall(r"^mb --ignore-existing local/(\S+)$", "\n".join(made), re.M)) == sorted(BUCKETS)
    for user in USERS:
        key, secret = f"s3-{user}.AWS_ACCESS_KEY_ID", f"s3-{user}.AWS_SECRET_ACCESS_KEY"
        assert f"admin policy create local {user} {tmp_path}/policies/{user}.json" in made
        assert f"admin user add local {key} {secret}" in made
        assert f"admin policy attach local {user} --user {key}" in made
    assert len(made) == 1 + len(BUCKETS) + 3 * len(USERS)


# ---------------------------------------------------------------------------------------------------------------
# Enforcement: the suite's S3 endpoint (moto's server, or MinIO when a `minio` binary is on PATH) checks every
# request against these documents, so the components' own tests show each one does its job with its own key.


def denied(call, **kwargs) -> bool:
    try:
        call(**kwargs)
        return False
    except ClientError as e:
        if e.response["Error"]["Code"] in ("AccessDenied", "403"):
            return True
        raise


def observed(client, admin, probe: str) -> dict[str, set[str]]:
    """What `client` may do, tried in every bucket: list it and get an object the admin put (read), put one (write)."""
    access = {"read": set(), "write": set()}
    for bucket in BUCKETS:
        admin.put_object(Bucket=bucket, Key=probe, Body=b"probe")
        can_list = not denied(client.list_objects_v2, Bucket=bucket, Prefix=probe)
        can_get = not denied(client.get_object, Bucket=bucket, Key=probe)
        assert can_list == can_get, f"{bucket}: listed {can_list}, got {can_get}"
        access["read"] |= {bucket} if can_get else set()
        access["write"] |= set() if denied(client.put_object, Bucket=bucket, Key=f"{probe}-written", Body=b"x") else {bucket}
    return access


@pytest.mark.parametrize("user", USERS)
def test_the_s3_endpoint_allows_each_user_exactly_its_row(s3, user):
    assert observed(s3.client(user), s3.client(), f"access-check/{uuid.uuid4().hex}") == ACCESS[user]


def test_the_transformer_is_refused_a_model_write_and_the_drift_job_a_log_write(s3):
    """The issue's two cases, spelt out: a taken-over transformer cannot replace model.pkl; drift cannot forge logs."""
    key = f"access-check/{uuid.uuid4().hex}/model.pkl"
    assert denied(s3.client("transformer").put_object, Bucket="mlflow", Key=key, Body=b"not a model")
    assert denied(s3.client("drift").put_object, Bucket="predictions", Key=key, Body=b"not a log")
    assert key not in s3.keys("mlflow", "access-check/") + s3.keys("predictions", "access-check/")


def test_the_transformer_as_local_runs_it_cannot_log_into_the_model_bucket(workdir, s3, predictor, model):
    """The real process with its own key (as start_transformer gives it): pointed at s3://mlflow, every flush is
    refused and counted, and nothing lands there; pointed at s3://predictions, it logs."""
    ride = {"ride_id": "r1", "ride": {"PULocationID": 7, "DOLocationID": 236, "trip_distance": 2.1}}
    prefix = unique("forged")
    proc, url = start_transformer(workdir, s3, predictor[1], f"s3://mlflow/{prefix}", model["version"])
    try:
        assert requests.post(f"{url}/v1/models/trip-duration:predict", json=ride, timeout=10).status_code == 200

        def failures() -> float:
            text = requests.get(f"{url}/metrics", timeout=5).text
            return float(re.search(r"^prediction_log_flush_failures_total (\S+)$", text, re.M)[1])

        wait_until(lambda: failures() > 0, "a refused flush of the prediction log")
        assert s3.keys("mlflow", prefix) == []
    finally:
        proc.stop()
    log_uri = f"s3://predictions/{prefix}"
    proc, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"])
    try:
        assert requests.post(f"{url}/v1/models/trip-duration:predict", json=ride, timeout=10).status_code == 200
    finally:
        proc.stop()
    assert [r["ride_id"] for r in read_prediction_logs(s3, log_uri)] == ["r1"]


def test_the_mlflow_ui_shows_artifacts_with_a_read_only_key(mlflow_url, model):
    """The tracking server runs with the `mlflow` user's key (read only, as in the cluster): the UI's artifact views
    list and serve a run's and a model's files from S3."""
    run, model_id = model["run_id"], re.search(r"/models/(m-[0-9a-f]+)/", model["storage_uri"])[1]
    listed = requests.get(f"{mlflow_url}/api/2.0/mlflow/artifacts/list", params={"run_id": run}, timeout=10)
    assert listed.status_code == 200 and "reference" in {f["path"] for f in listed.json()["files"]}
    reference = requests.get(f"{mlflow_url}/get-artifact", params={"run_uuid": run, "path": "reference/reference.parquet"},
                             timeout=10)  # fmt: skip
    assert reference.status_code == 200 and reference.content[:4] == b"PAR1"
    mlmodel = requests.get(f"{mlflow_url}/ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/files",
                           params={"artifact_file_path": "MLmodel"}, timeout=10)  # fmt: skip
    assert mlmodel.status_code == 200 and "sklearn" in mlmodel.text


def test_a_component_is_never_handed_the_admin_key(s3):
    keys = {s3.env_for(user)["AWS_ACCESS_KEY_ID"] for user in USERS}
    assert len(keys) == len(USERS) and s3.access_key not in keys
    with pytest.raises(StepError, match="no S3 user 'root'"):
        s3.env_for("root")


def test_every_protected_row_of_security_md_names_tests_that_exist():
    """A row without a test, or naming one that was renamed away, is a claim nothing checks."""
    text = (ROOT / "SECURITY.md").read_text()
    table = next(b for b in text.split("## Protected, and how")[1].split("\n\n") if b.startswith("| concern"))
    rows = [row for row in table.splitlines()[2:] if row.startswith("|")]
    assert len(rows) >= 10
    for row in rows:
        proof = row.rstrip("|").rsplit("|", 1)[1]
        cited = re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)`", proof)
        assert cited, f"no test named in: {row[:60]}"
        module = None
        for file, name in cited:
            module = file or module
            assert re.search(rf"^def {name}\(", (ROOT / "tests" / module).read_text(), re.M), f"{module}::{name}"

"""`make deploy`'s own sequence against a real kube-apiserver, etcd, kube-controller-manager and KServe's controllers.

The binaries are built from Go modules by `cluster/build` (cached outside the repository, by version) and started by
`cluster/source` (`make cluster PROVIDER=source SOURCE_NODE=no`): certificates made at start, RBAC and Node authorizers, KServe's
`manager` and `llmisvc` as processes with their webhooks pointed at them by URL, as envtest does. Then `make kserve
secret apply PROVIDER=source` with upstream's release files, unchanged. What is real here: every admission and
authorization decision (RBAC, the API server's schema validation, server-side apply, KServe's webhooks), KServe's
controller turning the InferenceService into Deployments and Services, the Deployment, Job, CronJob and garbage
collection controllers. What is not: this tier starts no node (SOURCE_NODE=no: pods stay Pending), so it runs
without root or Docker; test_source_e2e.py runs the same cluster with its node through `make deploy` and the e2e
suite.

The stand-in API server of test_deploy.py keeps what this tier cannot show: a rollout through to completion (its
scripted controller makes pods "available"), and an API server that cannot be reached. rehearsal.py keeps what a
fresh kind cluster does that this one does not reproduce: cert-manager's own webhook before its CA is injected, and the
failures of the older `make kserve` sequences.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from harness import CLUSTER_CACHE as CACHE
from harness import KUBECTL, ROOT, VERSIONS, component_python, wait_until
from harness import UPSTREAM as RELEASES
from test_manifests import render_isvc
from test_security import GRANTS

pytestmark = pytest.mark.source_cluster

NAMESPACE, NAME = "taxi-mlops", "trip-duration"
KSERVE = VERSIONS["KSERVE_VERSION"]
UPSTREAM = RELEASES / f"kserve-{KSERVE}"
BINARIES = [CACHE / f"k8s-{VERSIONS['K8S_VERSION']}" / "bin" / b for b in
            ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")] + [
    CACHE / f"etcd-{VERSIONS['ETCD_VERSION']}" / "bin" / "etcd",
    *(CACHE / f"kserve-{VERSIONS['KSERVE_VERSION']}" / "bin" / b for b in ("manager", "llmisvc"))]  # fmt: skip
STORAGE_URI = "s3://mlflow/1/models/m-source/artifacts"
TAG = "t-source"


class Cluster:
    def __init__(self, state: Path, build: Path):
        self.state, self.build = state, build
        self.env = {**os.environ, "SOURCE_CLUSTER_DIR": str(state), "TAXI_MLOPS_CACHE": str(CACHE)}

    def make(self, *targets: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["make", *targets, "PROVIDER=source", "SOURCE_NODE=no", f"KSERVE_RELEASE={UPSTREAM}", f"BUILD_DIR={self.build}", f"TAG={TAG}"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, f"make {' '.join(targets)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([KUBECTL, "--kubeconfig", kubeconfig or self.state / "kubeconfig", *args],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-n", NAMESPACE, "-o", "json", *args).stdout)

    def account(self, name: str) -> Path:
        """A kubeconfig holding ServiceAccount NAME's token (a TokenRequest), as its pod would authenticate."""
        out = subprocess.run([ROOT / "cluster" / "source", "kubeconfig", NAMESPACE, name], env=self.env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return Path(out.strip())



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    missing = [str(b) for b in BINARIES if not os.access(b, os.X_OK)]
    if missing:
        pytest.skip(f"the source-built cluster is not built ({len(missing)} binaries missing, e.g. {missing[0]}): "
                    "run cluster/build (about 25 min cold on 2 cores)")  # fmt: skip
    if not UPSTREAM.is_dir():
        pytest.skip(f"KServe's release files are not at {UPSTREAM}")
    # A short path: the controllers' webhook certificates live under the state folder.
    c = Cluster(tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("build"))
    try:
        c.make("cluster", "kserve", "secret", "apply")
        yield c
    finally:
        c.make("clean", check=False)


def deploy(cluster: Cluster, account: str = "training", timeout: float = 20, **env) -> subprocess.CompletedProcess:
    """`python -m training deploy` as the training Job's deploy container runs it, with ACCOUNT's token."""
    return subprocess.run(
        [component_python("training"), "-m", "training", "deploy", "--storage-uri", STORAGE_URI, "--model-version", "3",
         "--timeout", str(timeout), "--poll", "2"],
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(cluster.account(account)),
             "TRANSFORMER_IMAGE": f"taxi-mlops/transformer:{TAG}", **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def render() -> dict:
    return render_isvc(STORAGE_URI, "3", TRANSFORMER_IMAGE=f"taxi-mlops/transformer:{TAG}")


def apply_manifest(cluster: Cluster, manifest: dict) -> subprocess.CompletedProcess:
    """training.isvc.apply (the deploy command's own call) on MANIFEST, as the training account; no waiting."""
    code = ("import json, sys\nfrom training.isvc import apply, DeployError\n"
            "try:\n    apply(json.load(sys.stdin), timeout=0, poll=0)\n"
            "except (DeployError, TimeoutError) as e:\n    sys.exit(f'error: {e}')\n")  # fmt: skip
    return subprocess.run([component_python("training"), "-c", code], input=json.dumps(manifest),
                          env={"PATH": "/usr/bin:/bin", "KUBECONFIG": str(cluster.account("training"))},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def deployed(cluster):
    return deploy(cluster)


def owned_by(obj: dict, kind: str, uid: str) -> bool:
    return any(o["kind"] == kind and o["uid"] == uid and o.get("controller") for o in obj["metadata"].get("ownerReferences", []))


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_deploy_as_the_training_account_gets_past_the_render_check_and_waits_for_pods(deployed):
    """RBAC lets the training account apply and read; KServe's Deployments carry this render's hash (else the wait
    would say "does not have this render yet"); with no node, it waits for available replicas and says so."""
    assert deployed.returncode != 0, deployed.stderr
    last = deployed.stderr.strip().splitlines()[-1]
    assert "not rolled out after 20s" in last
    for component in ("predictor", "transformer"):
        assert f"deployment {NAME}-{component}: 0 of 1 updated replicas available" in last


def test_kserves_controller_makes_deployments_and_services_from_our_render(cluster, deployed):
    isvc = cluster.get(f"inferenceservice/{NAME}")
    uid, wanted = isvc["metadata"]["uid"], render()
    assert isvc["metadata"]["annotations"]["taxi-mlops/render-hash"] == wanted["metadata"]["annotations"]["taxi-mlops/render-hash"]
    for component in ("predictor", "transformer"):
        deployment = cluster.get(f"deployment/{NAME}-{component}")
        assert owned_by(deployment, "InferenceService", uid), component
        template = deployment["spec"]["template"]
        assert template["metadata"]["annotations"]["taxi-mlops/render-hash"] == isvc["metadata"]["annotations"]["taxi-mlops/render-hash"]
        assert template["spec"]["automountServiceAccountToken"] is False, component
        service = cluster.get(f"service/{NAME}-{component}")
        assert owned_by(service, "InferenceService", uid), component
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, 8080)], component
    pod_spec = cluster.get(f"deployment/{NAME}-transformer")["spec"]["template"]["spec"]
    (transformer,) = pod_spec["containers"]
    ours = wanted["spec"]["transformer"]["containers"][0]
    assert transformer["image"] == f"taxi-mlops/transformer:{TAG}"
    args = " ".join(transformer["args"])
    assert f"--predictor_host {NAME}-predictor.{NAMESPACE}" in args and "--predictor_protocol v2" in args, args
    assert env_of(ours).items() <= env_of(transformer).items()
    assert ours["securityContext"].items() <= transformer["securityContext"].items()
    assert pod_spec["securityContext"] == wanted["spec"]["transformer"]["securityContext"]
    (predictor,) = cluster.get(f"deployment/{NAME}-predictor")["spec"]["template"]["spec"]["containers"]
    # The ClusterServingRuntime's: the source overlay's, upstream's with our stand-in for kserve/sklearnserver.
    assert predictor["image"] == f"taxi-mlops/transformer:{TAG}"
    assert predictor["command"] == ["python", "-m", "transformer.sklearn_runtime"]
    assert f"--model_name={NAME}" in predictor["args"]
    assert wanted["spec"]["predictor"]["model"]["securityContext"].items() <= predictor["securityContext"].items()


def test_the_pod_webhook_injects_the_storage_initializer_with_kserve_s3s_credentials(cluster, deployed):
    """The ReplicaSet controller creates the pod; KServe's pod mutator (a webhook called by the API server) adds the
    storage initializer with the S3 settings and keys of the ServiceAccount kserve-s3's Secret."""
    pods = wait_until(lambda: cluster.get("pods", "-l", f"component=predictor,serving.kserve.io/inferenceservice={NAME}")["items"], "predictor pod", interval=1)  # fmt: skip
    (pod,) = pods
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert pod["spec"]["serviceAccountName"] == "kserve-s3" and pod["spec"]["automountServiceAccountToken"] is False
    (init,) = pod["spec"]["initContainers"]
    assert (init["name"], init["image"], init["args"]) == ("storage-initializer", f"kserve/storage-initializer:{KSERVE}", [STORAGE_URI, "/mnt/models"])  # fmt: skip
    env = env_of(init)
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "s3-predictor", "key": "AWS_ACCESS_KEY_ID"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "s3-predictor", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert (env["AWS_ENDPOINT_URL"], env["S3_USE_HTTPS"], env["AWS_DEFAULT_REGION"]) == (f"http://minio.{NAMESPACE}:9000", "0", "us-east-1")  # fmt: skip
    # Upstream gives the injected container no securityContext of its own: it runs as the pod's non-root user with
    # the pod's seccomp profile, but keeps the runtime's default capabilities and a writable root (SECURITY.md).
    assert "securityContext" not in init
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (server,) = pod["spec"]["containers"]
    assert {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True} in server["volumeMounts"]
    assert pod["status"]["phase"] == "Pending"  # no node: the next tier runs it


def test_a_second_render_without_a_key_loses_it_on_the_server(cluster, deployed):
    """Server-side apply with one field manager: what a later render no longer says is removed, and KServe's
    controller removes it from the Deployment too."""
    manifest = render()
    container = manifest["spec"]["transformer"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "PREDICTION_LOG_SPILL_DIR"]
    result = apply_manifest(cluster, manifest)
    assert "not rolled out" in result.stderr, result.stderr
    isvc_env = env_of(cluster.get(f"inferenceservice/{NAME}")["spec"]["transformer"]["containers"][0])
    assert "PREDICTION_LOG_SPILL_DIR" not in isvc_env and "PREDICTION_LOG_URI" in isvc_env
    wait_until(lambda: "PREDICTION_LOG_SPILL_DIR" not in env_of(
        cluster.get(f"deployment/{NAME}-transformer")["spec"]["template"]["spec"]["containers"][0]),
        "the transformer Deployment without the dropped variable", interval=1)  # fmt: skip
    assert deploy(cluster, timeout=0).returncode != 0  # the full render again, for what follows
    assert "PREDICTION_LOG_SPILL_DIR" in env_of(cluster.get(f"inferenceservice/{NAME}")["spec"]["transformer"]["containers"][0])


def test_an_unknown_field_fails_with_the_api_servers_message(cluster, deployed):
    manifest = render()
    manifest["spec"]["predictor"]["minReplicass"] = 1
    result = apply_manifest(cluster, manifest)
    assert result.returncode == 1
    assert ".spec.predictor.minReplicass: field not declared in schema" in result.stderr, result.stderr


def test_a_role_missing_get_on_deployments_fails_with_rbacs_message(cluster, deployed):
    role = cluster.get("role/inferenceservice-deployer")
    index = next(i for i, r in enumerate(role["rules"]) if r["resources"] == ["deployments"])
    cluster.kubectl("patch", "-n", NAMESPACE, "role/inferenceservice-deployer", "--type=json",
                    "-p", json.dumps([{"op": "remove", "path": f"/rules/{index}"}]))  # fmt: skip
    try:
        result = deploy(cluster, timeout=5)
    finally:  # put back for what follows
        cluster.kubectl("patch", "-n", NAMESPACE, "role/inferenceservice-deployer", "--type=json",
                        "-p", json.dumps([{"op": "add", "path": f"/rules/{index}", "value": role["rules"][index]}]))  # fmt: skip
    assert result.returncode != 0
    assert ("403 Forbidden" in result.stderr and f'User \\"system:serviceaccount:{NAMESPACE}:training\\" cannot get '
            'resource \\"deployments\\" in API group \\"apps\\"' in result.stderr), result.stderr  # fmt: skip


def test_jobs_from_the_cronjobs_belong_to_the_real_controllers(cluster):
    """`make train`'s `kubectl create job --from=cronjob/training`, and the drift job's retraining trigger with the
    drift account's token: Jobs owned by their CronJob, whose pods the Job controller creates; one retraining at a time."""
    cluster.kubectl("create", "job", "training-now", "--from=cronjob/training", "-n", NAMESPACE)
    cronjob = cluster.get("cronjob/training")
    assert owned_by(cluster.get("job/training-now"), "CronJob", cronjob["metadata"]["uid"])
    code = ("from datetime import datetime, timezone\nfrom monitoring.retrain import start_job\n"
            "print(start_job('retrain', datetime.now(timezone.utc)))\n")  # fmt: skip
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": str(cluster.account("drift")), "POD_NAMESPACE": NAMESPACE}
    first = subprocess.run([component_python("monitoring"), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    name = first.stdout.strip().splitlines()[-1]
    assert name.startswith("retrain-")
    assert owned_by(cluster.get(f"job/{name}"), "CronJob", cluster.get("cronjob/retrain")["metadata"]["uid"])
    second = subprocess.run([component_python("monitoring"), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert second.stdout.strip().splitlines()[-1] == "None", second.stderr  # the first is still running (Pending)
    for job in ("training-now", name):
        uid = cluster.get(f"job/{job}")["metadata"]["uid"]
        wait_until(lambda: [p for p in cluster.get("pods")["items"] if owned_by(p, "Job", uid)], f"job/{job}'s pod", interval=1)


def can_i(cluster: Cluster, account: str) -> dict[tuple, set[str]]:
    """(resource or URL, resource names) → verbs, as `kubectl auth can-i --list` prints them for ACCOUNT's token."""
    out = cluster.kubectl("auth", "can-i", "--list", "-n", NAMESPACE, kubeconfig=cluster.account(account)).stdout
    rows: dict[tuple, set[str]] = {}
    for line in out.splitlines()[1:]:
        resource, urls, names, verbs = re.fullmatch(r"(\S*)\s*\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]", line.strip()).groups()
        rows.setdefault((resource or urls, tuple(names.split())), set()).update(verbs.split())
    return rows


def test_each_service_account_can_do_exactly_securitys_rows(cluster):
    """`kubectl auth can-i --list` by each ServiceAccount's own token, against the real authorizer: what every
    authenticated user may (discovery, self reviews) and exactly SECURITY.md's rows; nothing for the others."""
    baseline = can_i(cluster, "default")
    assert {resource for resource, _ in baseline if not resource.startswith("/")} == {
        "selfsubjectreviews.authentication.k8s.io", "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io"}  # fmt: skip
    accounts = [sa["metadata"]["name"] for sa in cluster.get("serviceaccounts")["items"]]
    assert {"default", "training", "drift", "kserve-s3"} <= set(accounts)
    for account in accounts:
        expected: dict[tuple, set[str]] = {}
        for verbs, group, resource, names in GRANTS.get(account, ()):
            expected.setdefault((f"{resource}.{group}", names or ()), set()).update(verbs)
        granted = {row: verbs for row, verbs in can_i(cluster, account).items() if baseline.get(row) != verbs}
        assert granted == expected, account


def test_undeploy_leaves_the_rest_to_the_garbage_collector_and_keeps_the_data(cluster, deployed):
    cluster.make("undeploy")
    assert cluster.kubectl("get", "inferenceservice", NAME, "-n", NAMESPACE, check=False).returncode == 1
    def left() -> list[str]:
        out = cluster.kubectl("get", "deployments,replicasets,services,jobs,pods", "-n", NAMESPACE, "-o", "name").stdout
        return out.split()
    wait_until(lambda: not left(), "the InferenceService's and the CronJobs' objects collected", 120, interval=1)
    kept = cluster.kubectl("get", "pvc,secrets", "-n", NAMESPACE, "-o", "name").stdout.split()
    assert {"persistentvolumeclaim/minio-data", "persistentvolumeclaim/mlflow-db", "secret/minio-root", "secret/s3-predictor"} <= set(kept)  # fmt: skip

"""Apply rehearsal: `make -n deploy`'s kubectl calls replayed, in order, against a model of the API server
(rehearsal.py) fed with the real files: KServe's release files from ../shared/upstream, our tagged overlay, and the
InferenceService `render-isvc` prints in the training Job's environment.

test_source_cluster.py runs the same `make kserve secret apply` against a real API server and KServe's controllers,
and there checks for real what this model used to: RBAC by each ServiceAccount's token (the drift account reads no
CronJob but `retrain`), Jobs from CronJobs, the garbage collector. What stays here is what that tier cannot show:
the kind path's cert-manager (its webhook Available before its CA is injected: the source cluster has a stand-in),
the sequences `make deploy` had before its install order was fixed, the Jobs' pods running to completion (`make
train`, `make rollback`, `make drift` wait for that; no node runs pods there yet), and a Secret forgotten by `make
secret` failing the set-up Job."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from harness import ROOT, UPSTREAM, USERS, VERSIONS, component_python
from rehearsal import ApiServer, calls, cert_manager_release, load, replay
from test_manifests import TAG, kustomize

# The sequence `make deploy` ran before the install order was fixed: `make -n deploy` at commit cff6e85.
BEFORE = (Path(__file__).parent / "recorded" / "make-n-deploy.before.txt").read_text()
# What `make secret` creates: MinIO's root, and one per component's S3 user (one per policy document).
SECRETS = ["minio-root", *(f"s3-{user}" for user in USERS)]
CERT_MANAGER = re.compile(r"https://github\.com/cert-manager/cert-manager/releases/download/v[\d.]+/cert-manager\.yaml")
KSERVE = re.compile(r"https://github\.com/kserve/kserve/releases/download/(v[\d.]+)/([\w-]+\.yaml)")


@pytest.fixture(scope="module")
def upstream():
    folder = UPSTREAM / f"kserve-{VERSIONS['KSERVE_VERSION']}"
    if not (folder / "kserve.yaml").exists():
        pytest.skip(f"KServe {VERSIONS['KSERVE_VERSION']} release files not present at {folder}")
    return folder


def files(source: str) -> list[dict]:
    if CERT_MANAGER.fullmatch(source):
        return cert_manager_release()
    if m := KSERVE.fullmatch(source):
        path = UPSTREAM / f"kserve-{m[1]}" / m[2]
        assert path.exists(), f"the rehearsal has no copy of {source}"
        return list(load(path))
    return [d for d in yaml.safe_load_all((ROOT / source).read_text()) if d]


def render_isvc(env: dict) -> dict:
    out = subprocess.run(
        [component_python("training"), "-m", "training", "render-isvc", "--storage-uri", "s3://mlflow/1/models/m-1/artifacts",
         "--model-version", "1"],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", **env},
    ).stdout  # fmt: skip
    return yaml.safe_load(out)


def cluster() -> ApiServer:
    return ApiServer(files=files, kustomize=lambda d: kustomize(ROOT / d), render_isvc=render_isvc)


def make_n(target: str, build: Path) -> str:
    """`make -n TARGET` with the overlay it applies written first (make -n only prints `make overlay`'s commands)."""
    subprocess.run(["make", "-s", "overlay", f"BUILD_DIR={build}", f"TAG={TAG}"], cwd=ROOT, check=True)
    return subprocess.run(["make", "-n", target, f"BUILD_DIR={build}", f"TAG={TAG}"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip


@pytest.fixture(scope="module")
def deployed(upstream, tmp_path_factory):
    build = tmp_path_factory.mktemp("build")
    outcome = replay(make_n("deploy", build), cluster())
    return outcome, build


def test_make_deploy_passes_the_rehearsal(deployed):
    outcome, _ = deployed
    assert outcome.failed is None, f"`{' '.join(outcome.failed.argv)}` refused: {outcome.errors}"
    server = outcome.server
    isvc = server.get("serving.kserve.io", "InferenceService", "taxi-mlops", "trip-duration")
    assert isvc["spec"]["transformer"]["containers"][0]["image"] == f"taxi-mlops/transformer:{TAG}"
    assert "serviceaccount training created InferenceService/trip-duration -n taxi-mlops" in server.log
    assert server.get("serving.kserve.io", "ClusterServingRuntime", "", "kserve-sklearnserver")


def test_the_old_sequence_fails_where_a_fresh_cluster_refuses_kserve_yaml(upstream):
    """Issue item 1: kserve.yaml has no Namespace, and holds a ClusterStorageContainer next to its CRD."""
    outcome = replay(BEFORE, cluster())
    assert outcome.failed and outcome.failed.argv[-1].endswith("/kserve.yaml")
    assert 'namespaces "kserve" not found' in outcome.errors
    assert 'no matches for kind "ClusterStorageContainer" in version "serving.kserve.io/v1alpha1"' in outcome.errors


KSERVE_APPLY = (
    "kubectl apply --server-side --force-conflicts -f https://github.com/kserve/kserve/releases/download/v0.20.0/"
)
CA_WAIT = ("kubectl wait --for=jsonpath='{.webhooks[0].clientConfig.caBundle}' validatingwebhookconfiguration/cert-manager-webhook"
           " mutatingwebhookconfiguration/cert-manager-webhook\n")  # fmt: skip


def before_with_item_1_fixed(ca_wait: str) -> str:
    fixed = BEFORE.replace(
        KSERVE_APPLY + "kserve.yaml\n",
        "kubectl wait --for=condition=Established crd --all\n" + ca_wait + "kubectl create namespace kserve\n"
        + KSERVE_APPLY + "kserve-crds.yaml\nkubectl wait --for=condition=Established crd --all\n" + KSERVE_APPLY
        + "kserve.yaml\nkubectl wait --for=condition=Established crd --all\n",
    )  # fmt: skip
    assert fixed != BEFORE
    return fixed


def test_the_old_sequence_in_upstreams_order_still_meets_cert_managers_webhook_without_its_ca(upstream):
    """Issue item 3: cert-manager's Deployments are Available before cainjector has injected the webhook's CA, so
    kserve.yaml's Issuer and Certificates can be refused."""
    outcome = replay(before_with_item_1_fixed(ca_wait=""), cluster())
    assert outcome.failed and outcome.failed.argv[-1].endswith("/kserve.yaml")
    assert re.search(r'Issuer/selfsigned-issuer: failed calling webhook "webhook.cert-manager.io": '
                     r"ValidatingWebhookConfiguration cert-manager-webhook has no CA yet", outcome.errors)  # fmt: skip


def test_the_old_sequence_in_upstreams_order_still_races_llmisvc_webhook(upstream):
    """Issue item 2: kserve-cluster-resources.yaml reaches the API server while only kserve-controller-manager was
    waited for; llmisvc-controller-manager's webhook admits its LLMInferenceServiceConfigs."""
    outcome = replay(before_with_item_1_fixed(ca_wait=CA_WAIT), cluster())
    assert outcome.failed and outcome.failed.argv[-1].endswith("/kserve-cluster-resources.yaml")
    assert re.search(r'LLMInferenceServiceConfig/\S+: failed calling webhook "llminferenceserviceconfig\.\S+": '
                     r"deployment kserve/llmisvc-controller-manager \(behind service llmisvc-webhook-server-service\) "
                     r"not waited Available", outcome.errors)  # fmt: skip


def test_rollback_train_and_drift_after_deploy_pass_the_rehearsal(deployed):
    """`make apply` applied the suspended CronJobs: `make rollback` and `make train` create their Jobs from them, whose
    deploy container rolls the InferenceService; the drift job's account may start a retraining Job from `retrain`."""
    outcome, build = deployed
    server = outcome.server
    for target, job in (("rollback", "rollback"), ("train", "training"), ("drift", "$job")):
        start = len(server.log)
        after = replay(make_n(target, build), server)
        assert after.failed is None, f"make {target}: `{' '.join(after.failed.argv)}` refused: {after.errors}"
        assert f"kubectl created Job/{job} -n taxi-mlops" in server.log[start:]
        if target != "drift":
            assert "serviceaccount training updated InferenceService/trip-duration -n taxi-mlops" in server.log[start:]
    rollback = server.get("batch", "Job", "taxi-mlops", "rollback")
    assert rollback["metadata"]["ownerReferences"] == [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "rollback"}]
    assert [c["name"] for c in rollback["spec"]["template"]["spec"]["initContainers"]] == ["transformer-image", "rollback"]


def test_make_rollback_before_make_apply_finds_no_cronjob(upstream, tmp_path):
    outcome = replay(make_n("rollback", tmp_path), cluster())
    assert outcome.failed and outcome.failed.argv[1:3] == ["create", "job"]
    assert outcome.errors == 'cronjobs.batch "rollback" not found'


def test_undeploy_keeps_the_data_and_deploy_runs_again(deployed):
    outcome, build = deployed
    server = outcome.server
    after = replay(make_n("undeploy", build), server)
    assert after.failed is None, after.errors
    kept = {(k[1], k[3]) for k in server.objects if k[2] == "taxi-mlops"}
    assert {("PersistentVolumeClaim", "minio-data"), ("PersistentVolumeClaim", "mlflow-db"),
            *(("Secret", name) for name in SECRETS)} <= kept  # fmt: skip
    assert server.get("", "Namespace", "", "taxi-mlops")
    gone = {("InferenceService", "trip-duration"), ("Deployment", "minio"), ("Deployment", "mlflow"), ("CronJob", "drift"),
            ("Job", "training"), ("Job", "rollback"), ("Role", "inferenceservice-deployer"), ("Role", "retraining-starter"),
            *(("CronJob", name) for name in ("training", "retrain", "rollback"))}  # fmt: skip
    assert not gone & kept
    again = replay(make_n("deploy", build), server)
    assert again.failed is None, again.errors
    for name in SECRETS:
        assert server.log.count(f"kubectl created Secret/{name} -n taxi-mlops") == 1, f"{name} was kept, not remade"


def test_a_secret_make_secret_forgets_fails_the_set_up_job_that_needs_them_all(deployed):
    """Every component's Secret is referenced by MinIO's set-up Job: the rehearsal sees one go missing."""
    _, build = deployed
    script = make_n("deploy", build)
    forgot = re.sub(r"^.*create secret generic s3-transformer .*\n", "", script, flags=re.M)
    assert forgot != script
    outcome = replay(forgot, cluster())
    assert outcome.failed and "job/minio-setup" in outcome.failed.line
    assert "secret s3-transformer not found" in outcome.errors


# The model's rules, each shown to refuse, on small sequences (so a rule that never fires is noticed).

CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec: {group: example.com, scope: Namespaced, names: {kind: Widget, plural: widgets},
       versions: [{name: v1, served: true, storage: true}]}
"""
WIDGET = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: ns}\n"


def small(tmp_path, **docs: str) -> ApiServer:
    for name, text in docs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    return ApiServer(files=lambda s: [d for d in yaml.safe_load_all(Path(s).read_text()) if d],
                     kustomize=lambda d: [], render_isvc=lambda env: {})  # fmt: skip


def test_the_model_refuses_a_kind_whose_crd_was_not_waited_established(tmp_path):
    server = small(tmp_path, crd=CRD, widget=WIDGET)
    ok = f"kubectl create namespace ns\nkubectl apply -f {tmp_path}/crd.yaml\n"
    assert "not waited Established" in replay(ok + f"kubectl apply -f {tmp_path}/widget.yaml\n", server).errors
    server = small(tmp_path)
    waited = (
        ok
        + f"kubectl wait --for=condition=Established crd/widgets.example.com\nkubectl apply -f {tmp_path}/widget.yaml\n"
    )
    assert replay(waited, server).failed is None


def test_the_model_refuses_an_object_in_a_missing_namespace(tmp_path):
    server = small(tmp_path, cm="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: nowhere}\n")
    assert (
        replay(f"kubectl apply -f {tmp_path}/cm.yaml\n", server).errors == 'ConfigMap/c: namespaces "nowhere" not found'
    )


def test_the_model_refuses_a_wait_on_an_object_that_does_not_exist_yet(tmp_path):
    outcome = replay(
        "kubectl wait --for=condition=Available deployment/minio -n default --timeout=1s\n", small(tmp_path)
    )
    assert outcome.errors == "kubectl wait: not found: Deployment/minio"


def test_the_model_refuses_a_client_side_apply_of_kserves_crds(upstream):
    outcome = replay(
        f"kubectl apply -f https://github.com/kserve/kserve/releases/download/{VERSIONS['KSERVE_VERSION']}/kserve-crds.yaml\n",
        cluster(),
    )
    assert "Too long: must have at most 262144 bytes" in outcome.errors


def test_the_shell_reader_finds_kubectl_calls_in_conditions_pipes_and_after_or():
    line = ("kubectl get secret s -n x >/dev/null 2>&1 || kubectl create secret generic s -n x \"--from-literal=K=$(openssl rand -hex 4)\"; "
            "for t in $(seq 10 10 30); do if kubectl wait --for=condition=Complete job/j --timeout=10s >/dev/null 2>&1; then break; fi; done; "
            "kubectl create namespace n --dry-run=client -o yaml | kubectl apply -f -")  # fmt: skip
    found = [(c.argv[1], c.op, c.condition) for c in calls(line)[0] if c.kubectl]
    assert found == [
        ("get", None, False),
        ("create", "||", False),
        ("wait", ";", True),
        ("create", ";", False),
        ("apply", "|", False),
    ]

"""`python -m training deploy` against a stand-in for the Kubernetes API server.

No kube-apiserver can run here, so a small HTTP server (harness.ApiStandIn) stands in for it: the kubernetes client
in the training environment speaks real HTTP to it, and a scripted controller moves the InferenceService's Deployments
through a rollout the way KServe's controller and the Deployment controller would. What these tests prove is when
the deploy command decides that the rollout is done (a real rollout needs a node that runs pods), and that an API
server it cannot reach is one line. What a real API server decides (RBAC for the training account, server-side apply
removing what a later render drops, schema errors) and what KServe's controller makes of the render are proven by
test_source_cluster.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache

import pytest
import yaml

from harness import ApiStandIn, component_python

NAMESPACE, NAME = "taxi-mlops", "trip-duration"
ISVC_PATH = f"/apis/serving.kserve.io/v1beta1/namespaces/{NAMESPACE}/inferenceservices/{NAME}"
DEPLOYMENT_PATH = re.compile(rf"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/([\w-]+)$")
STORAGE_URI = "s3://mlflow/1/models/m-0123/artifacts"


def deployment(name: str, render: str, generation: int = 1, observed: int = 1, replicas: int = 1,
               updated: int = 1, available: int = 1) -> dict:  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": generation},
        "spec": {"replicas": 1, "template": {"metadata": {"annotations": {"taxi-mlops/render-hash": render}}}},
        "status": {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                   "availableReplicas": available},
    }  # fmt: skip


def isvc_status(ready: bool, observed: int = 1) -> dict:
    # KServe copies observedGeneration from a Deployment: it says nothing about the InferenceService's own generation.
    return {"observedGeneration": observed, "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                                            "message": "" if ready else "predictor not ready"}]}  # fmt: skip


class StandIn(ApiStandIn):
    """Serves an InferenceService and its two Deployments; each GET of the InferenceService after the apply moves the
    scripted controller one step on."""

    def __init__(self, before: dict | None, steps: list):
        self.isvc = before
        self.deployments: dict[str, dict] = {}
        self.steps, self.step = steps, -1
        super().__init__()

    def route(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict]:
        if path == ISVC_PATH and method == "PATCH":
            applied = yaml.safe_load(body)
            generation = (self.isvc or {}).get("metadata", {}).get("generation", 0) + 1
            status = (self.isvc or {}).get("status", {})
            self.isvc = {**applied, "metadata": {**applied["metadata"], "generation": generation}, "status": status}
            self.step = 0
            self.steps[0](self)
            return 200, self.isvc
        if path == ISVC_PATH and method == "GET":
            if self.isvc is None:
                return self.not_found()
            if 0 <= self.step < len(self.steps) - 1:
                self.step += 1
                self.steps[self.step](self)
            return 200, self.isvc
        match = DEPLOYMENT_PATH.match(path)
        if match and method == "GET":
            found = self.deployments.get(match[1])
            return (200, found) if found else self.not_found()
        return 405, {"kind": "Status", "code": 405, "message": f"the stand-in does not serve {method} {path}"}


JOB_ENV = {"TRANSFORMER_IMAGE": "taxi-mlops/transformer:t-123", "POD_NAMESPACE": NAMESPACE}


def deploy(tmp_path, stand_in: StandIn, *args: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "KUBECONFIG": str(stand_in.kubeconfig(tmp_path, NAMESPACE)),
        **JOB_ENV,
    }
    return subprocess.run(
        [component_python("training"), "-m", "training", "deploy", "--storage-uri", STORAGE_URI, "--model-version", "7",
         "--poll", "0.02", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


@lru_cache(maxsize=1)
def render() -> str:
    return subprocess.run(
        [component_python("training"), "-m", "training", "render-isvc", "--storage-uri", STORAGE_URI, "--model-version", "7"],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin", **JOB_ENV},
    ).stdout  # fmt: skip


def rendered() -> dict:
    """What `render-isvc` prints in the training Job's environment, for the version `deploy` is given."""
    return yaml.safe_load(render())


NEW = rendered()["metadata"]["annotations"]["taxi-mlops/render-hash"]


def old_version_serving(s: StandIn) -> None:
    """Version 6 serves, rolled out and Ready; the apply has not reached the controller yet."""
    s.deployments = {f"{NAME}-{c}": deployment(f"{NAME}-{c}", "old-render") for c in ("predictor", "transformer")}
    s.isvc["status"] = isvc_status(True, observed=s.isvc["metadata"]["generation"])


def transformer_template_changed(s: StandIn) -> None:
    s.deployments[f"{NAME}-transformer"] = deployment(f"{NAME}-transformer", NEW, generation=2, observed=1)


def transformer_surging(s: StandIn) -> None:
    s.deployments[f"{NAME}-transformer"] = deployment(
        f"{NAME}-transformer", NEW, 2, 2, replicas=2, updated=1, available=1
    )


def predictor_rolling(s: StandIn) -> None:
    s.deployments[f"{NAME}-transformer"] = deployment(f"{NAME}-transformer", NEW, 2, 2)
    s.deployments[f"{NAME}-predictor"] = deployment(f"{NAME}-predictor", NEW, 2, 2, replicas=1, updated=1, available=0)


def rolled_out(s: StandIn) -> None:
    s.deployments = {f"{NAME}-{c}": deployment(f"{NAME}-{c}", NEW, 2, 2) for c in ("predictor", "transformer")}


@pytest.fixture
def stand_ins():
    started = []
    yield lambda before, steps: started.append(StandIn(before, steps)) or started[-1]
    for s in started:
        s.stop()


def test_deploy_waits_for_both_deployments_to_roll_out_though_ready_says_true_throughout(tmp_path, stand_ins):
    before = {**rendered(), "metadata": {**rendered()["metadata"], "generation": 1}, "status": isvc_status(True)}
    steps = [old_version_serving, old_version_serving, transformer_template_changed, transformer_surging,
             predictor_rolling, rolled_out]  # fmt: skip
    s = stand_ins(before, steps)
    proc = deploy(tmp_path, s)
    assert proc.returncode == 0, proc.stderr
    assert s.step == len(steps) - 1, "deploy returned before the controller's rollout was over"
    assert json.loads(proc.stdout.strip().splitlines()[-1])["version"] == "7"


def test_deploy_is_one_server_side_apply_with_a_field_manager_then_reads_only(tmp_path, stand_ins):
    s = stand_ins(None, [rolled_out_and_ready])
    proc = deploy(tmp_path, s)
    assert proc.returncode == 0, proc.stderr
    writes = [r for r in s.requests if r[0] != "GET"]
    assert len(writes) == 1
    method, path, query, content_type, body = writes[0]
    assert (method, path, content_type) == ("PATCH", ISVC_PATH, "application/apply-patch+yaml")
    assert query["fieldManager"] == ["taxi-mlops-deploy"] and query["force"] == ["true"]
    assert yaml.safe_load(body) == rendered(), "the whole render is applied, so what it drops is dropped"


def rolled_out_and_ready(s: StandIn) -> None:
    rolled_out(s)
    s.isvc["status"] = isvc_status(True)


def test_deploy_timeout_is_one_line_naming_what_it_waited_for(tmp_path, stand_ins):
    def stuck(s: StandIn) -> None:
        s.deployments = {f"{NAME}-predictor": deployment(f"{NAME}-predictor", NEW, 2, 2),
                         f"{NAME}-transformer": deployment(f"{NAME}-transformer", NEW, 2, 2, available=0)}  # fmt: skip
        s.isvc["status"] = isvc_status(True)

    s = stand_ins(None, [stuck])
    proc = deploy(tmp_path, s, "--timeout", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line == (f"error: InferenceService {NAMESPACE}/{NAME} (version 7) not rolled out after 1s: "
                    f"deployment {NAME}-transformer: 0 of 1 updated replicas available")  # fmt: skip


def test_an_unreachable_api_server_is_one_line(tmp_path, stand_ins):
    s = stand_ins(None, [rolled_out])
    s.stop()
    proc = deploy(tmp_path, s, "--timeout", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: Kubernetes API at {s.url} unreachable")

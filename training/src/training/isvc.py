"""The InferenceService for a registered version: rendered from the registry, applied with the kubernetes client.

Predictor: KServe's stock sklearn runtime (V2) loading model.pkl from the version's S3 directory.
Transformer: our image, told the model version (the SDK drops it from V2 responses) and where to log.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass
class IsvcSettings:
    """Everything but the model comes from the Job's environment, which kustomize fills."""

    name: str = field(default_factory=lambda: os.environ.get("ISVC_NAME", "trip-duration"))
    namespace: str = field(default_factory=lambda: os.environ.get("POD_NAMESPACE", "taxi-mlops"))
    transformer_image: str = field(default_factory=lambda: os.environ.get("TRANSFORMER_IMAGE", "taxi-mlops/transformer:dev"))
    service_account: str = field(default_factory=lambda: os.environ.get("PREDICTOR_SERVICE_ACCOUNT", "kserve-s3"))
    s3_secret: str = field(default_factory=lambda: os.environ.get("S3_SECRET", "s3-credentials"))
    s3_endpoint: str = field(default_factory=lambda: os.environ.get("S3_ENDPOINT_URL", "http://minio:9000"))
    prediction_log_uri: str = field(default_factory=lambda: os.environ.get("PREDICTION_LOG_URI", "s3://predictions/logs"))


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def render(storage_uri: str, model_version: str, settings: IsvcSettings | None = None) -> dict:
    s = settings or IsvcSettings()
    if not storage_uri.startswith("s3://"):
        raise ValueError(f"storage URI must be s3://…, got {storage_uri!r}")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": s.name,
            "namespace": s.namespace,
            "labels": {
                "app.kubernetes.io/part-of": "taxi-mlops",
                # No Knative or Istio: plain Deployments and Services, reached with port-forward.
                "networking.kserve.io/visibility": "cluster-local",
            },
            "annotations": {
                "serving.kserve.io/deploymentMode": "Standard",
                "taxi-mlops/model-version": str(model_version),
            },
        },
        "spec": {
            "predictor": {
                "serviceAccountName": s.service_account,  # carries the S3 secret KServe's storage initializer reads
                "model": {
                    "modelFormat": {"name": "sklearn"},
                    "protocolVersion": "v2",
                    "runtime": "kserve-sklearnserver",
                    "storageUri": storage_uri,
                    # OpenMP estimators scoring small batches on few cores spin and contend without it.
                    "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "1Gi"},
                    },
                },
            },
            "transformer": {
                # SIGTERM: 10 s to drain requests, 20 s to ship the prediction log, one bounded S3 put (8 s) past
                # that, then exit; the default 30 s would cut it short (transformer/__main__.py).
                "terminationGracePeriodSeconds": 60,
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": s.transformer_image,
                        "imagePullPolicy": "IfNotPresent",
                        # The controller adds --model_name, --predictor_host and --http_port, not the protocol.
                        "args": ["--predictor_protocol", "v2"],
                        "env": [
                            {"name": "MODEL_VERSION", "value": str(model_version)},
                            {"name": "PREDICTION_LOG_URI", "value": s.prediction_log_uri},
                            {"name": "PREDICTION_LOG_SPILL_DIR", "value": "/spill"},
                            {"name": "AWS_ENDPOINT_URL", "value": s.s3_endpoint},
                            _secret_env("AWS_ACCESS_KEY_ID", s.s3_secret, "AWS_ACCESS_KEY_ID"),
                            _secret_env("AWS_SECRET_ACCESS_KEY", s.s3_secret, "AWS_SECRET_ACCESS_KEY"),
                        ],
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "256Mi"},
                            "limits": {"cpu": "1", "memory": "768Mi"},
                        },
                        "securityContext": {**RESTRICTED, "readOnlyRootFilesystem": True},
                        "volumeMounts": [{"name": "spill", "mountPath": "/spill"}, {"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [
                    # Prediction logs wait here while S3 is down; it outlives a container restart, not the pod.
                    {"name": "spill", "emptyDir": {"sizeLimit": "600Mi"}},
                    {"name": "tmp", "emptyDir": {}},
                ],
            },
        },
    }


class DeployError(Exception):
    """The cluster refused or could not be reached; the message says how."""


def ready(isvc: dict) -> tuple[bool, str]:
    conditions = {c["type"]: c for c in isvc.get("status", {}).get("conditions", [])}
    ok = conditions.get("Ready", {})
    return ok.get("status") == "True", ok.get("message") or ok.get("reason") or "no Ready condition yet"


def apply(manifest: dict, timeout: float = 600, poll: float = 5) -> dict:
    """Create or patch the InferenceService, then wait for Ready; raise naming what it waited for."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except config.ConfigException as e:
            raise DeployError(f"no Kubernetes credentials (in-cluster or ~/.kube/config): {e}") from None
    api = client.CustomObjectsApi()
    try:
        return _apply(api, manifest, timeout, poll)
    except ApiException as e:
        raise DeployError(f"Kubernetes API: {e.status} {e.reason}: {(e.body or '')[:300]}") from None


def _apply(api, manifest: dict, timeout: float, poll: float) -> dict:
    from kubernetes.client.rest import ApiException

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, manifest, _content_type="application/merge-patch+json"
        )
    except ApiException as e:
        if e.status != 404:
            raise
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)

    wanted = manifest["metadata"]["annotations"]["taxi-mlops/model-version"]
    attempts = int(timeout // poll) + 1
    message = ""
    for _ in range(attempts):
        current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        serving = current["metadata"].get("annotations", {}).get("taxi-mlops/model-version")
        is_ready, message = ready(current)
        if is_ready and serving == wanted and current.get("status", {}).get("observedGeneration") == current["metadata"]["generation"]:
            return current
        time.sleep(poll)
    raise TimeoutError(f"InferenceService {namespace}/{name} not Ready with version {wanted} after {timeout:.0f}s: {message}")

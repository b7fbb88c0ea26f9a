"""The InferenceService for a registered version: rendered from the registry, applied with the kubernetes client.

Predictor: KServe's stock sklearn runtime (V2) loading model.pkl from the version's S3 directory.
Transformer: our image, told the model version (the SDK drops it from V2 responses) and where to log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from training.settings import IsvcSettings

log = logging.getLogger("training")

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
# Server-side apply owns the fields of the last render: a key a later render drops is removed from the object.
FIELD_MANAGER = "taxi-mlops-deploy"
# KServe copies the InferenceService's annotations onto its Deployments' pod templates: this one tells which
# render a Deployment carries (KServe's own status.observedGeneration is copied from a Deployment, not ours).
RENDER_HASH = "taxi-mlops/render-hash"
# Standard mode: one Deployment per component, named after the InferenceService.
COMPONENTS = ("predictor", "transformer")
REQUEST_TIMEOUT = 30  # seconds for one API call: a stalled connection must not outlast --timeout unnoticed


def container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}


def pod_security(uid: int) -> dict:
    """Non-root as the image's own user (KServe's sklearn runtime and storage initializer: 1000; ours: 10001)."""
    return {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "seccompProfile": {"type": "RuntimeDefault"}}


def _secret_env(name: str, secret: str, key: str) -> dict:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def rendered(settings: IsvcSettings) -> dict:
    """The InferenceService for --storage-uri/--model-version, or for the version the alias holds."""
    if settings.storage_uri:
        if not settings.model_version:
            raise ValueError("--storage-uri needs --model-version")
        return render(settings.storage_uri, settings.model_version, settings)
    from training.registry import client, resolve_alias

    resolved = resolve_alias(client(settings.tracking_uri), settings.model_name, settings.alias, settings.artifacts_destination)
    return render(resolved["source"], resolved["version"], settings)


def deploy(settings: IsvcSettings) -> dict:
    """Render, apply and wait for the rollout; what the training Job's deploy step does."""
    manifest = rendered(settings)
    annotations = manifest["metadata"]["annotations"]
    version, storage_uri = annotations["taxi-mlops/model-version"], manifest["spec"]["predictor"]["model"]["storageUri"]
    log.info("applying InferenceService %s (version %s, %s)", manifest["metadata"]["name"], version, storage_uri)
    current = apply(manifest, timeout=settings.timeout, poll=settings.poll)
    return {"name": manifest["metadata"]["name"], "version": version, "storage_uri": storage_uri,
            "url": current.get("status", {}).get("url"), "ready": True}  # fmt: skip


def render(storage_uri: str, model_version: str, s: IsvcSettings) -> dict:
    if not storage_uri.startswith("s3://"):
        raise ValueError(f"storage URI must be s3://…, got {storage_uri!r}")
    if not s.transformer_image:
        raise ValueError(
            "TRANSFORMER_IMAGE is not set: the tagged transformer image, as the training Job's "
            "environment names it (elsewhere: TRANSFORMER_IMAGE=taxi-mlops/transformer:<TAG>)"
        )
    manifest = _manifest(storage_uri, model_version, s)
    rendered = json.dumps(manifest, sort_keys=True).encode()
    manifest["metadata"]["annotations"][RENDER_HASH] = hashlib.sha256(rendered).hexdigest()[:16]
    return manifest


def _manifest(storage_uri: str, model_version: str, s: IsvcSettings) -> dict:
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
                # KServe's shipped default mounts a token; nothing in this pod calls the Kubernetes API.
                "automountServiceAccountToken": False,
                "securityContext": pod_security(1000),
                "volumes": [{"name": "tmp", "emptyDir": {}}],
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
                    "securityContext": container_security(),
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                },
            },
            "transformer": {
                "automountServiceAccountToken": False,
                "securityContext": pod_security(10001),
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
                            _secret_env("AWS_ACCESS_KEY_ID", s.transformer_secret, "AWS_ACCESS_KEY_ID"),
                            _secret_env("AWS_SECRET_ACCESS_KEY", s.transformer_secret, "AWS_SECRET_ACCESS_KEY"),
                        ],
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "256Mi"},
                            "limits": {"cpu": "1", "memory": "768Mi"},
                        },
                        "securityContext": container_security(),
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
    """Server-side apply the InferenceService, then wait until its Deployments carry this render and have rolled
    out and it is Ready; raise naming what it waited for."""
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except config.ConfigException as e:
            raise DeployError(f"no Kubernetes credentials (in-cluster or ~/.kube/config): {e}") from None
    api = client.ApiClient()
    try:
        return _apply(client.CustomObjectsApi(api), client.AppsV1Api(api), manifest, timeout, poll)
    except ApiException as e:
        raise DeployError(f"Kubernetes API: {e.status} {e.reason}: {(e.body or '')[:300]}") from None
    except HTTPError as e:
        raise DeployError(f"Kubernetes API at {api.configuration.host} unreachable: {e}") from None


def _apply(custom, apps, manifest: dict, timeout: float, poll: float) -> dict:
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, manifest,
        field_manager=FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml",
        _request_timeout=REQUEST_TIMEOUT,
    )  # fmt: skip
    annotations = manifest["metadata"]["annotations"]
    wanted, version = annotations[RENDER_HASH], annotations["taxi-mlops/model-version"]
    deadline = time.monotonic() + timeout
    while True:
        current = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
        )
        waiting = [w for c in COMPONENTS if (w := _rollout(apps, namespace, f"{name}-{c}", wanted))]
        is_ready, message = ready(current)
        if not is_ready:
            waiting.append(f"InferenceService not Ready: {message}")
        if not waiting:
            return current
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"InferenceService {namespace}/{name} (version {version}) not rolled out after {timeout:.0f}s: "
                + "; ".join(waiting)
            )
        time.sleep(poll)


def _rollout(apps, namespace: str, name: str, wanted: str) -> str | None:
    """What deployment `name` still lacks to serve render `wanted` (None: rolled out), as `kubectl rollout status`
    judges it; raise when it can no longer progress."""
    from kubernetes.client.rest import ApiException

    try:
        response = apps.read_namespaced_deployment(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
    except ApiException as e:
        if e.status == 404:
            return f"deployment {name} not created yet"
        raise
    d = json.loads(response.data)
    spec, status = d.get("spec", {}), d.get("status", {})
    if (spec.get("template", {}).get("metadata", {}).get("annotations") or {}).get(RENDER_HASH) != wanted:
        return f"deployment {name} does not have this render yet"
    if status.get("observedGeneration", 0) < d["metadata"].get("generation", 0):
        return f"deployment {name}: new spec not yet observed"
    for c in status.get("conditions", []):
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            raise DeployError(f"deployment {namespace}/{name} exceeded its progress deadline: {c.get('message', '')}")
    replicas, updated = spec.get("replicas", 1), status.get("updatedReplicas", 0)
    if updated < replicas:
        return f"deployment {name}: {updated} of {replicas} replicas updated"
    if status.get("replicas", 0) > updated:
        return f"deployment {name}: {status['replicas'] - updated} old replicas still running"
    if status.get("availableReplicas", 0) < updated:
        return f"deployment {name}: {status.get('availableReplicas', 0)} of {updated} updated replicas available"
    return None

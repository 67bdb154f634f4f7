"""The processes of one end-to-end cluster, all on 127.0.0.1: a real Kubernetes
control plane (tests/k8s: etcd, kube-apiserver, kube-controller-manager), the
test kubelet (tests/kubelet) and ferry-operator replicas, with Ferry installed
as a platform team installs it: the CRDs applied, then the chart with `helm
install`, the operator authenticated as the chart's ServiceAccount, people as
named users with the roles the chart folds into `edit` and `view`.

With FERRY_E2E_KUBECONFIG set, the cluster is the one that kubeconfig names
(an administrator's): no control plane is started, and the kubelet's and the
users' identities are client certificates that the cluster's own signers
issue through CertificateSigningRequests (docs/e2e.md)."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests/k8s"))
from controlplane import ControlPlane, External, stop_process  # noqa: E402

CACHE = pathlib.Path(os.environ.get("FERRY_CACHE", pathlib.Path.home() / ".cache/ferry"))
# Binaries are built for the host's tuple (.cargo/config.toml), as static executables.
HOST = next(
    line.split(": ", 1)[1]
    for line in subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines()
    if line.startswith("host: ")
)
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / HOST / "debug"
KUBECTL = CACHE / "bin/kubectl"
HELM = CACHE / "bin/helm"
OPERATOR = TARGET / "ferry-operator"
RUNNER = TARGET / "job-runner"
# The chart's release: its namespace and the operator's ServiceAccount, and so
# the user the API server authenticates the operator as.
RELEASE_NAMESPACE = "ferry-system"
OPERATOR_ACCOUNT = "ferry-operator"
OPERATOR_USER = f"system:serviceaccount:{RELEASE_NAMESPACE}:{OPERATOR_ACCOUNT}"
RUNNER_IMAGE = "ferry/job-runner:e2e"
# The people: a tenant's editor (the built-in `edit` role in each tenant
# namespace, which folds in `ferry-edit`) and a reader (`view`, with `ferry-view`).
EDITOR = "alice@example.com"
VIEWER = "victor@example.com"
# The tenant's admin (`admin`: also Roles and RoleBindings of the namespace).
TENANT_ADMIN = "ada@example.com"
NODE = "ferry-node"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, every: float = 0.3,
             context: Callable[[], str] = lambda: "") -> Any:
    """`check()` until it returns something truthy; fails naming `what` after `timeout`."""
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})\n{context()}")


class Cluster:
    # KUBECONFIG mode: whether the chart is installed on that cluster now.
    installed_on_external = False

    def __init__(self, workdir: pathlib.Path, tenants: list[str] = (), values: dict | None = None) -> None:
        for binary in (OPERATOR, RUNNER, KUBECTL, HELM):
            assert binary.exists(), f"{binary} is missing: run `make test-e2e` (it builds the binaries)"
        self.dir = workdir
        self.tenants = list(tenants)
        self.procs: dict[str, subprocess.Popen] = {}
        self.metrics: dict[str, int] = {}
        self.pods: list[dict] = []
        self.namespaces: set[str] = set()
        self._stopping = threading.Event()
        external = os.environ.get("FERRY_E2E_KUBECONFIG")
        if external and Cluster.installed_on_external:
            # One installation of the chart at a time on a cluster of one's
            # own: its ClusterRoles and policies are cluster-wide.
            pytest.skip("KUBECONFIG mode: this scenario needs a cluster of its own, and the suite's "
                        "installation is in use (docs/e2e.md)")
        self.external = bool(external)
        self.api = External(pathlib.Path(external), workdir / "k8s") if external else ControlPlane(workdir / "k8s")
        Cluster.installed_on_external = self.external
        try:
            self._setup(values or {})
        except BaseException:
            self.stop()
            raise

    def _setup(self, values: dict) -> None:
        self.url = self.api.url
        self.kubeconfig = self.api.admin
        self.admin_ssl = self.api.admin_ssl()
        self.issuer_public_key = self.api.issuer_public_key
        # The Pods as they change, from the start: scenarios look back at them.
        threading.Thread(target=self._record_pods, daemon=True).start()
        node = self.api.kubeconfig(f"system:node:{NODE}", groups=["system:nodes"], name="node")
        binder = self.api.kubeconfig("system:kube-scheduler", name="binder")
        self._start("kubelet", [sys.executable, str(ROOT / "tests/kubelet/kubelet.py"), "--kubeconfig", str(node),
                                "--binder-kubeconfig", str(binder), "--node", NODE,
                                "--command", f"/job-runner={RUNNER}", "--workdir", str(self.dir / "node"),
                                "--ready-file", str(self.dir / "kubelet.ready")], ready=self.dir / "kubelet.ready")
        self.users = {EDITOR: self.api.kubeconfig(EDITOR, groups=["acme-staff"], name="editor"),
                      VIEWER: self.api.kubeconfig(VIEWER, groups=["acme-staff"], name="viewer"),
                      TENANT_ADMIN: self.api.kubeconfig(TENANT_ADMIN, groups=["acme-staff"], name="tenant-admin")}
        # Ferry as a platform team installs it: the CRDs, then the chart.
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "charts/ferry/crds"))
        def established(crd: str) -> bool:
            conditions = ((self.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}") or {})
                          .get("status") or {}).get("conditions") or []
            return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

        for crd in ("connectors.ferry.dev", "connectorruns.ferry.dev"):
            wait_for(f"the CRD {crd} to be established", lambda: established(crd), 60)
        for ns in [RELEASE_NAMESPACE, *self.tenants]:
            self.namespace(ns)
        self.vault_mount = f"jwt-e2e-{free_port()}"
        chart = {
            "tenantNamespaces": self.tenants,
            "runner": {"image": {"repository": RUNNER_IMAGE.split(":")[0], "tag": RUNNER_IMAGE.split(":")[1]},
                       # moto and Azurite listen on plain http on 127.0.0.1.
                       "allowPlainHttpOnLoopback": True},
            # The platform's Vault: the test OpenBao, with an auth method per cluster.
            "vault": {"address": os.environ.get("FERRY_BAO_ADDR", "http://127.0.0.1:8200"),
                      "authMount": self.vault_mount},
        }
        merge(chart, values)
        self.attribution = chart.get("attribution", {}).get("enabled", True)
        (self.dir / "values.yaml").write_text(yaml.safe_dump(chart))
        out = subprocess.run([str(HELM), "install", "ferry", str(ROOT / "charts/ferry"), "--namespace",
                              RELEASE_NAMESPACE, "--values", str(self.dir / "values.yaml")],
                             capture_output=True, text=True, timeout=120,
                             env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.dir)})
        assert out.returncode == 0, f"helm install: {out.stderr}"
        # The chart's policies are in force once the API server has loaded them:
        # an object they refuse is refused.
        self.wait_for_policies()

    def namespace(self, ns: str, labels: dict | None = None, annotations: dict | None = None,
                  pod_security: str | None = "restricted") -> None:
        """A namespace as the platform team makes one: Pod Security
        `pod_security` enforced, the tenant's people given `edit` and `view`."""
        self.namespaces.add(ns)
        enforce = {"pod-security.kubernetes.io/enforce": pod_security,
                   "pod-security.kubernetes.io/enforce-version": "latest"} if pod_security else {}
        self.apply_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": ns, "labels": {**enforce, **(labels or {})}, "annotations": annotations or {}}}))
        if ns == RELEASE_NAMESPACE:
            return
        docs = [{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": f"people-{role}", "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}
                for role, user in (("edit", EDITOR), ("view", VIEWER), ("admin", TENANT_ADMIN))]
        self.apply_text(yaml.safe_dump_all(docs))

    def wait_for_policies(self) -> None:
        """Until the API server has loaded the chart's admission policies (a
        few seconds after they are created): a run's record written by anyone
        but the operator is refused, a new run is attributed to its creator
        (where attribution is on), and the operator may not create what is not
        a run's."""
        def run(annotations: dict) -> str:
            return json.dumps({"apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
                               "metadata": {"name": "policy-probe", "namespace": RELEASE_NAMESPACE,
                                            "annotations": annotations},
                               "spec": {"connectorRef": {"name": "none"}}})

        def record_refused() -> bool:
            out = self.kubectl("create", "--dry-run=server", "-f", "-", stdin=run({"ferry.dev/run-record": "{}"}),
                               check=False)
            return out.returncode != 0 and "run-record" in out.stderr

        def attributed() -> bool:
            out = self.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=run({}), check=False)
            return out.returncode == 0 and "ferry.dev/created-by" in json.loads(out.stdout)["metadata"].get(
                "annotations", {})

        wait_for("the run-rights and attribution policies to be in force",
                 lambda: record_refused() and (attributed() or not self.attribution), 60)
        if self.tenants:
            token = self.operator_token()
            account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "not-a-run"}}

            def confined() -> bool:
                status, answer = self.request(
                    "POST", f"/api/v1/namespaces/{self.tenants[0]}/serviceaccounts?dryRun=All", account, token=token)
                return status == 403 and "ValidatingAdmissionPolicy" in json.dumps(answer)

            wait_for("the operator's admission policy to be in force", confined, 60)

    # -- processes --

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               ready: pathlib.Path | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                cwd=self.dir, start_new_session=True)
        self.procs[name] = proc
        (self.dir / f"{name}.pid").write_text(str(proc.pid))
        if ready is not None:
            wait_for(f"{name} to start", lambda: ready.exists() or proc.poll() is not None, 30)
            assert proc.poll() is None, f"{name} exited:\n{self.log(name)}"
        return proc

    def start_proxy(self, name: str, seed: int = 0) -> str:
        """A fault-injecting proxy (tests/faults/proxy.py) in front of the API
        server: its URL (plain http on 127.0.0.1; it speaks TLS to the API)."""
        port = free_port()
        self._start(name, [sys.executable, str(ROOT / "tests/faults/proxy.py"), "--upstream", self.url,
                           "--upstream-ca", str(self.api.ca_file),
                           "--port", str(port), "--seed", str(seed),
                           "--ready-file", str(self.dir / f"{name}.ready")], ready=self.dir / f"{name}.ready")
        return f"http://127.0.0.1:{port}"

    def faults(self, proxy: str, rules: list[dict] | None = None) -> list[dict]:
        """Sets the proxy's rules (when given); how often each fired."""
        data = json.dumps(rules).encode() if rules is not None else None
        req = urllib.request.Request(f"{proxy}/__faults", data=data, method="POST" if data else "GET",
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def operator_token(self) -> str:
        """A token of the chart's ServiceAccount for the operator, from
        TokenRequest, as the projected token of its pod would be."""
        out = self.kubectl("create", "token", OPERATOR_ACCOUNT, "-n", RELEASE_NAMESPACE, "--duration=6h")
        return out.stdout.strip()

    def operator_args(self) -> list[str]:
        """The operator's arguments as the chart's Deployment gives them."""
        deployment = self.get(f"/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/deployments/{OPERATOR_ACCOUNT}")
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        return [a for a in container["args"] if not a.startswith("--metrics-addr=")]

    def start_operator(self, name: str, lease_seconds: int = 4, server: str | None = None,
                       wait: bool = True) -> None:
        """A replica of the operator, started with the chart Deployment's
        arguments and authenticated as the chart's ServiceAccount; through
        `server` (a fault proxy) when given."""
        port = free_port()
        self.metrics[name] = port
        kubeconfig = self.api.write_kubeconfig(name, {"token": self.operator_token()}, server)
        self._start(name, [str(OPERATOR), *self.operator_args(), "--metrics-addr", f"127.0.0.1:{port}",
                           "--lease-duration", str(lease_seconds),
                           "--audit-log", str(self.dir / f"{name}.audit")],
                    env={"KUBECONFIG": str(kubeconfig), "POD_NAME": name,
                         "POD_NAMESPACE": RELEASE_NAMESPACE, "RUST_LOG": "info,kube=warn"})
        if wait:
            wait_for(f"{name}'s /healthz", lambda: self.http_ok(f"http://127.0.0.1:{port}/healthz"), 30,
                     context=lambda: self.log(name))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        self._stopping.set()
        for proc in reversed(list(self.procs.values())):
            stop_process(proc, grace=15)
        if hasattr(self, "api"):
            if self.external:
                # Leave the cluster as it was found: the release, its
                # namespaces (the CRDs stay, as Helm leaves them).
                env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.dir)}
                subprocess.run([str(HELM), "uninstall", "ferry", "--namespace", RELEASE_NAMESPACE, "--wait"],
                               capture_output=True, env=env, timeout=120)
                for ns in sorted(self.namespaces):
                    # With the operator gone, nobody would release the runs'
                    # audit finalizers (and the policy guarding them is gone).
                    runs = subprocess.run([str(KUBECTL), "get", "connectorruns", "-n", ns, "-o", "name"],
                                          capture_output=True, text=True, env=env, timeout=60).stdout.split()
                    for run in runs:
                        subprocess.run([str(KUBECTL), "patch", run, "-n", ns, "--type=merge",
                                        "-p", '{"metadata":{"finalizers":null}}'], capture_output=True, env=env,
                                       timeout=60)
                    subprocess.run([str(KUBECTL), "delete", "namespace", ns, "--ignore-not-found", "--wait=false"],
                                   capture_output=True, env=env, timeout=60)
                # The next installation needs them gone, not terminating.
                subprocess.run([str(KUBECTL), "wait", "--for=delete", "--timeout=180s",
                                *[f"namespace/{ns}" for ns in sorted(self.namespaces)]],
                               capture_output=True, env=env, timeout=200)
                Cluster.installed_on_external = False
            self.api.stop()

    def log(self, name: str, lines: int = 60) -> str:
        path = self.dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} log (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(self.log(n, 30) for n in self.procs)

    # -- the API --

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                user: str | None = None) -> subprocess.CompletedProcess:
        """kubectl as the administrator, or as `user` (EDITOR, VIEWER)."""
        kubeconfig = self.users[user] if user else self.kubeconfig
        out = subprocess.run([str(KUBECTL), *args], input=stdin, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(self.dir)})
        if check:
            assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}\n{self.logs()}"
        return out

    def apply_text(self, text: str, user: str | None = None) -> None:
        self.kubectl("apply", "--server-side", "-f", "-", stdin=text, user=user)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                ssl_context: ssl.SSLContext | None = None, token: str | None = None,
                user: str | None = None) -> tuple[int, Any]:
        """One API request (as the administrator, as `user`, or with `token`):
        the status and the answer."""
        headers = {"Content-Type": content_type}
        if user:
            ssl_context = self.api.ssl_context(json.loads(self.users[user].read_text())["users"][0]["name"])
        if token:
            headers["Authorization"] = f"Bearer {token}"
            ssl_context = ssl.create_default_context(cafile=str(self.api.ca_file))
        req = urllib.request.Request(self.url + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=20, context=ssl_context or self.admin_ssl) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                return e.code, json.loads(text)
            except json.JSONDecodeError:
                return e.code, text.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, obj = self.request("GET", path)
        if status == 404:
            return None
        assert status == 200, f"GET {path}: {status} {obj}"
        return obj

    def items(self, path: str) -> list[dict]:
        return (self.get(path) or {}).get("items", [])

    @staticmethod
    def http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def scrape(self, name: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics[name]}/metrics", timeout=5) as r:
            return r.read().decode()

    def _record_pods(self) -> None:
        """Keeps every version of every Pod the API server shows, in order."""
        while not self._stopping.is_set():
            try:
                listed = self.get("/api/v1/pods")
                self.pods.extend(listed["items"])
                rv = listed["metadata"]["resourceVersion"]
                req = urllib.request.Request(f"{self.url}/api/v1/pods?watch=true&resourceVersion={rv}"
                                             "&timeoutSeconds=120")
                with urllib.request.urlopen(req, timeout=150, context=self.admin_ssl) as r:
                    for line in r:
                        event = json.loads(line)
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self.pods.append(event["object"])
                        elif event["type"] == "ERROR":
                            break
            except (OSError, ValueError, AssertionError):
                time.sleep(0.5)

    def watch_pods(self) -> list[dict]:
        """Every Pod version seen so far, oldest first."""
        return list(self.pods)

    def audit(self) -> list[dict]:
        """The API server's audit log: every request it answered."""
        if self.external:
            pytest.skip("KUBECONFIG mode: the API server's audit log is not readable through the API")
        return self.api.audit()


def merge(into: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total

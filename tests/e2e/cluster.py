"""The processes of one end-to-end cluster: the test Kubernetes API (tests/kapi),
the test kubelet (tests/kubelet) and ferry-operator replicas, all on 127.0.0.1,
driven with kubectl as a platform team would."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CACHE = pathlib.Path(os.environ.get("FERRY_CACHE", pathlib.Path.home() / ".cache/ferry"))
# Binaries are built for the host's tuple (.cargo/config.toml), as static executables.
HOST = next(
    line.split(": ", 1)[1]
    for line in subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout.splitlines()
    if line.startswith("host: ")
)
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / HOST / "debug"
KUBECTL = CACHE / "bin/kubectl"
OPERATOR = TARGET / "ferry-operator"
RUNNER = TARGET / "job-runner"
# The operator's user name, as the API server would authenticate its
# ServiceAccount (the chart passes the same with --user-name).
OPERATOR_USER = "system:serviceaccount:ferry-system:ferry-operator"


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
    def __init__(self, workdir: pathlib.Path) -> None:
        for binary in (OPERATOR, RUNNER, KUBECTL):
            assert binary.exists(), f"{binary} is missing: run `make test-e2e` (it builds the binaries)"
        self.dir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.metrics: dict[str, int] = {}
        self.kubeconfig = self._kubeconfig("admin", "admin-token")
        # The JWT auth method of the test OpenBao that trusts this cluster's
        # (the test kubelet's) ServiceAccount tokens; set up by the tests that
        # use it.
        self.vault_mount = f"jwt-e2e-{self.port}"
        self._start("kapi", [sys.executable, str(ROOT / "tests/kapi/kapi.py"), "--port", str(self.port),
                             "--ready-file", str(self.dir / "kapi.ready")], ready=self.dir / "kapi.ready")
        self._start("kubelet", [sys.executable, str(ROOT / "tests/kubelet/kubelet.py"), "--server", self.url,
                                "--command", f"/job-runner={RUNNER}", "--workdir", str(self.dir / "node"),
                                "--ready-file", str(self.dir / "kubelet.ready")], ready=self.dir / "kubelet.ready")
        self.kubectl("apply", "--server-side", "-f", str(ROOT / "charts/ferry/crds"))
        self.apply_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: ferry-system}\n")

    # -- processes --

    def _kubeconfig(self, user: str, token: str, server: str | None = None) -> pathlib.Path:
        path = self.dir / f"kubeconfig-{user}"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "kapi", "cluster": {"server": server or self.url}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "kapi", "user": user}}],
        }))
        return path

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
        """A fault-injecting proxy (tests/faults/proxy.py) in front of the API:
        its URL."""
        port = free_port()
        self._start(name, [sys.executable, str(ROOT / "tests/faults/proxy.py"), "--upstream", self.url,
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

    def start_operator(self, name: str, tenants: list[str], lease_seconds: int = 4,
                       runner_log: str = "info", server: str | None = None, wait: bool = True) -> None:
        """A replica of the operator, acting on the namespaces `tenants` only, as
        the chart's default (tenantNamespaces) starts it; through `server` (a
        fault proxy) when given."""
        port = free_port()
        self.metrics[name] = port
        self._start(name, [str(OPERATOR), "--runner-image", "ferry/job-runner:e2e", "--metrics-addr",
                           f"127.0.0.1:{port}", "--lease-duration", str(lease_seconds),
                           "--tenant-namespaces", ",".join(tenants), "--runner-log", runner_log,
                           # moto and Azurite listen on plain http on 127.0.0.1.
                           "--allow-plain-http-loopback",
                           "--audit-log", str(self.dir / f"{name}.audit"),
                           # As the chart starts it with its attribution policies.
                           "--record-requesters", "--user-name", OPERATOR_USER,
                           # The platform's Vault: the test OpenBao.
                           "--vault-addr", os.environ.get("FERRY_BAO_ADDR", "http://127.0.0.1:8200"),
                           "--vault-auth-mount", self.vault_mount],
                    env={"KUBECONFIG": str(self._kubeconfig(name, f"{name}-token", server)), "POD_NAME": name,
                         "POD_NAMESPACE": "ferry-system", "RUST_LOG": "info,kube=warn"})
        if wait:
            wait_for(f"{name}'s /healthz", lambda: self.http_ok(f"http://127.0.0.1:{port}/healthz"), 30,
                     context=lambda: self.log(name))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()

    def log(self, name: str, lines: int = 60) -> str:
        path = self.dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} log (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def logs(self) -> str:
        return "\n".join(self.log(n, 30) for n in self.procs)

    # -- the API --

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        # No OpenAPI documents here: apply leaves validation to the server.
        extra = ["--validate=false"] if args and args[0] in ("apply", "create") else []
        out = subprocess.run([str(KUBECTL), *args[:1], *extra, *args[1:]], input=stdin, capture_output=True,
                             text=True, timeout=60,
                             env={**os.environ, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.dir)})
        if check:
            assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stderr}\n{self.logs()}"
        return out

    def apply_text(self, text: str) -> None:
        self.kubectl("apply", "--server-side", "-f", "-", stdin=text)

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

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

    def watch_pods(self) -> list[dict]:
        """Every Pod version seen so far, from the API's watch history (resourceVersion 1)."""
        req = urllib.request.Request(f"{self.url}/api/v1/pods?watch=true&resourceVersion=1&timeoutSeconds=0.2")
        with urllib.request.urlopen(req, timeout=10) as r:
            return [json.loads(line)["object"] for line in r.read().splitlines() if line.strip()]


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

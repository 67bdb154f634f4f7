"""A Kubernetes control plane for the end-to-end tests, on 127.0.0.1 only: etcd,
kube-apiserver and kube-controller-manager built from their Go modules by
tests/k8s/build.sh, with fresh certificates for each start.

What it enforces is what a cluster enforces: client certificates and
ServiceAccount tokens (TokenRequest, bound to pods, signed by this control
plane's own issuer key), `--authorization-mode=Node,RBAC`, the default
admission plugins with NodeRestriction and PodSecurity, ValidatingAdmissionPolicy
v1 and MutatingAdmissionPolicy v1beta1 (its API and feature gate on), CRD
structural schemas and CEL rules. The controller manager runs the controllers
Ferry relies on: garbage collection, namespace deletion, ServiceAccounts and
their tokens, the cluster CA in every namespace, aggregated ClusterRoles. It
runs no scheduler and no workload controllers: the test kubelet
(tests/kubelet) binds and runs the pods.

Every request is written to an audit log (JSON lines, metadata level), so a
test can ask what the API server refused and to whom.

    cp = ControlPlane(workdir)      # starts, waits until ready
    cp.kubeconfig("alice", groups=["acme-editors"])  # a user's kubeconfig
    cp.stop()

Run by hand: python tests/k8s/controlplane.py --dir DIR (prints the admin
kubeconfig's path; Ctrl-C stops it).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = pathlib.Path(__file__).resolve().parent
# The issuer of the cluster's ServiceAccount tokens, and so their `iss`.
ISSUER = "https://kubernetes.default.svc"
SERVICE_RANGE = "10.96.0.0/16"
# The address the `kubernetes` Service's EndpointSlice names. This API server
# listens on loopback alone, which an endpoint may not name, so its endpoint
# reconciler is off and the slice is written here with an address of the
# documentation range (RFC 5737), as a routable API server would advertise
# its own: what the operator reads to open a run's NetworkPolicy to the API
# server and nowhere else. Nothing dials it.
API_SERVER_ADDRESS = "192.0.2.10"
# What the API server adds to its default admission plugins (which include
# NamespaceLifecycle, ServiceAccount, PodSecurity, ValidatingAdmissionPolicy).
ADMISSION_PLUGINS = "NodeRestriction,MutatingAdmissionPolicy"
FEATURE_GATES = "MutatingAdmissionPolicy=true"
RUNTIME_CONFIG = "admissionregistration.k8s.io/v1beta1=true"
CONTROLLERS = ",".join([
    "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    # Type-checks each ValidatingAdmissionPolicy into its status.
    "validatingadmissionpolicy-status-controller",
    # Signs approved CertificateSigningRequests with the cluster CA: what the
    # suite's KUBECONFIG mode uses, tested against this control plane.
    "certificatesigningrequest-signing-controller",
])
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """Stops a process started in a session of its own, and its children:
    TERM, then KILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def binaries() -> pathlib.Path:
    """The folder of the built binaries (builds them the first time)."""
    out = subprocess.run(["bash", str(HERE / "build.sh")], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise RuntimeError("tests/k8s/build.sh failed: the control plane could not be built")
    return pathlib.Path(out.stdout.strip().splitlines()[-1])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    """The cluster's CA: it signs the API server's serving certificate and every
    client certificate (users, the node, the controller manager)."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry-e2e-ca")])
        now = datetime.datetime.now(tz=datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        (folder / "ca.crt").write_bytes(self.pem)
        (folder / "ca.key").write_bytes(_pem_key(self.key))
        (folder / "ca.key").chmod(0o600)

    def issue(self, name: str, cn: str, orgs: list[str] = (), server: bool = False) -> tuple[pathlib.Path, pathlib.Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        now = datetime.datetime.now(tz=datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"),
            ]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        crt, pem = self.folder / f"{name}.crt", self.folder / f"{name}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(_pem_key(key))
        pem.chmod(0o600)
        return crt, pem


def wait_for(what: str, check, timeout: float, context=lambda: "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not happen within {timeout}s\n{context()}")


class ControlPlane:
    def __init__(self, workdir: pathlib.Path, bin_dir: pathlib.Path | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = self.dir / "pki"
        self.pki.mkdir(exist_ok=True)
        self.bin = bin_dir or binaries()
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = Authority(self.pki)
        self.ca_file = self.pki / "ca.crt"
        # The ServiceAccount issuer's key: tokens are ES256 JWTs.
        sa_key = ec.generate_private_key(ec.SECP256R1())
        (self.pki / "sa.key").write_bytes(_pem_key(sa_key))
        self.issuer_public_key = sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        (self.pki / "sa.pub").write_text(self.issuer_public_key)
        self.audit_log = self.dir / "audit.log"
        self.admin = self.kubeconfig("kubernetes-admin", groups=["system:masters"])
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    # -- identities --

    def kubeconfig(self, user: str, groups: list[str] = (), name: str | None = None) -> pathlib.Path:
        """A kubeconfig for `user` (in `groups`), authenticated by a client
        certificate of this cluster's CA."""
        name = name or user.replace(":", "-")
        crt, key = self.ca.issue(name, user, list(groups))
        return self.write_kubeconfig(name, {"client-certificate": str(crt), "client-key": str(key)})

    def write_kubeconfig(self, name: str, user: dict, server: str | None = None) -> pathlib.Path:
        """A kubeconfig for this cluster with the given user entry (a token, a
        token file or a client certificate); `server` for a proxy in front."""
        path = self.dir / f"kubeconfig-{name}"
        cluster = {"server": server or self.url}
        if (server or self.url).startswith("https://"):
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_file.read_bytes()).decode()
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": name}}],
        }))
        path.chmod(0o600)
        return path

    def admin_ssl(self) -> ssl.SSLContext:
        return self.ssl_context("kubernetes-admin")

    def ssl_context(self, name: str) -> ssl.SSLContext:
        """A TLS context that trusts this cluster and presents the client
        certificate issued as `name` (see `kubeconfig`)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(self.pki / f"{name}.crt", self.pki / f"{name}.key")
        return ctx

    # -- processes --

    def _run(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.dir, start_new_session=True)
        log.close()
        self.procs[name] = proc
        (self.dir / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def log(self, name: str, lines: int = 40) -> str:
        path = self.dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return f"--- {name} log (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.log(name)}")

    def _start(self) -> None:
        etcd_port, peer_port = free_port(), free_port()
        etcd = f"http://127.0.0.1:{etcd_port}"
        self._run("etcd", [
            str(self.bin / "etcd"), "--name", "e2e", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"e2e=http://127.0.0.1:{peer_port}",
            # A test cluster's data dies with it: no fsync on every write.
            "--unsafe-no-fsync", "--log-level", "warn"])

        def etcd_healthy() -> bool:
            self._alive("etcd")
            try:
                with urllib.request.urlopen(f"{etcd}/health", timeout=2) as r:
                    return json.loads(r.read()).get("health") == "true"
            except OSError:
                return False

        wait_for("etcd to be healthy", etcd_healthy, 60, lambda: self.log("etcd"))

        serving_crt, serving_key = self.ca.issue("apiserver", "kube-apiserver", server=True)
        (self.dir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self._run("kube-apiserver", [
            str(self.bin / "kube-apiserver"), "--etcd-servers", etcd,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.port), "--cert-dir", str(self.dir / "apiserver-certs"),
            "--tls-cert-file", str(serving_crt), "--tls-private-key-file", str(serving_key),
            "--client-ca-file", str(self.ca_file), "--anonymous-auth=false",
            "--service-account-issuer", ISSUER,
            "--service-account-key-file", str(self.pki / "sa.pub"),
            "--service-account-signing-key-file", str(self.pki / "sa.key"),
            "--service-cluster-ip-range", SERVICE_RANGE,
            # The `kubernetes` Service's endpoints are written below: an
            # address on loopback is not a valid endpoint.
            "--endpoint-reconciler-type", "none",
            "--authorization-mode", "Node,RBAC",
            "--enable-admission-plugins", ADMISSION_PLUGINS,
            "--feature-gates", FEATURE_GATES, "--runtime-config", RUNTIME_CONFIG,
            "--allow-privileged=false", "--profiling=false",
            "--audit-policy-file", str(self.dir / "audit-policy.yaml"),
            "--audit-log-path", str(self.audit_log), "--audit-log-format", "json",
            "--audit-log-mode", "blocking",
            "--v", "1"])
        ctx = self.ssl_context("kubernetes-admin")

        def ready() -> bool:
            self._alive("kube-apiserver")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=5, context=ctx) as r:
                    return r.status == 200
            except (OSError, urllib.error.HTTPError):
                return False

        wait_for("kube-apiserver to be ready", ready, 180, lambda: self.log("kube-apiserver"))
        self._api_server_endpoints(ctx)

        kcm = self.kubeconfig("system:kube-controller-manager", name="kube-controller-manager")
        self._run("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), "--kubeconfig", str(kcm),
            "--authentication-kubeconfig", str(kcm), "--authorization-kubeconfig", str(kcm),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--controllers", CONTROLLERS, "--leader-elect=false",
            "--use-service-account-credentials=true",
            "--service-account-private-key-file", str(self.pki / "sa.key"),
            "--root-ca-file", str(self.ca_file),
            "--cluster-signing-cert-file", str(self.ca_file),
            "--cluster-signing-key-file", str(self.pki / "ca.key"),
            # Deletions are collected at once, as the tests wait for them.
            "--concurrent-gc-syncs", "10", "--v", "1"])

        def ca_published() -> bool:
            self._alive("kube-controller-manager")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
                                            timeout=5, context=ctx) as r:
                    return r.status == 200
            except (OSError, urllib.error.HTTPError):
                return False

        wait_for("the controller manager to publish the cluster CA", ca_published, 120,
                 lambda: self.log("kube-controller-manager"))

    def _api_server_endpoints(self, ctx: ssl.SSLContext) -> None:
        """The `kubernetes` Service's EndpointSlice, as the endpoint reconciler
        of an API server with a routable address keeps it."""
        body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [API_SERVER_ADDRESS], "conditions": {"ready": True}}],
                "ports": [{"name": "https", "port": self.port, "protocol": "TCP"}]}
        request = urllib.request.Request(
            f"{self.url}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10, context=ctx) as r:
            assert r.status == 201, r.status

    def version(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/version", timeout=5,
                                    context=self.ssl_context("kubernetes-admin")) as r:
            return json.loads(r.read())

    def audit(self) -> list[dict]:
        """Every request the API server has answered so far."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        # The cluster's data dies with it: no graceful drain (kube-apiserver
        # would wait on its open watches for a long while).
        for proc in reversed(list(self.procs.values())):
            stop_process(proc, grace=2)


class External:
    """A cluster that an administrator's kubeconfig names (the suite's
    KUBECONFIG mode): nothing is started. Identities are client certificates
    the cluster's own signers issue: a CertificateSigningRequest per identity
    (`kubernetes.io/kube-apiserver-client-kubelet` for the node,
    `kubernetes.io/kube-apiserver-client` for the others), approved by the
    administrator. The API server's audit log is not readable from here."""

    def __init__(self, kubeconfig: pathlib.Path, workdir: pathlib.Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = self.dir / "pki"
        self.pki.mkdir(exist_ok=True)
        self.admin = kubeconfig
        raw = json.loads(self._kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json"))
        cluster, user = raw["clusters"][0]["cluster"], raw["users"][0]["user"]
        self.url = cluster["server"].rstrip("/")
        self.ca_file = self.pki / "ca.crt"
        self.ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        self._admin_user = user
        if "client-certificate-data" in user:
            (self.pki / "admin.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
            (self.pki / "admin.key").write_bytes(base64.b64decode(user["client-key-data"]))
        jwks = json.loads(self._kubectl("get", "--raw", "/openid/v1/jwks"))
        self.issuer_public_key = jwk_to_pem(jwks["keys"][0])

    def _kubectl(self, *args: str, stdin: str | None = None) -> str:
        kubectl = pathlib.Path(os.environ.get("FERRY_CACHE", pathlib.Path.home() / ".cache/ferry")) / "bin/kubectl"
        out = subprocess.run([str(kubectl), *args], input=stdin, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "KUBECONFIG": str(self.admin)})
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr}")
        return out.stdout

    def admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if (self.pki / "admin.crt").exists():
            ctx.load_cert_chain(self.pki / "admin.crt", self.pki / "admin.key")
        else:
            raise RuntimeError("KUBECONFIG mode needs an administrator's kubeconfig with a client certificate")
        return ctx

    def kubeconfig(self, user: str, groups: list[str] = (), name: str | None = None) -> pathlib.Path:
        name = name or user.replace(":", "-")
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in groups]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, user))
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(key, hashes.SHA256())
        node = user.startswith("system:node:")
        request = f"ferry-e2e-{name}-{os.getpid()}-{int(time.time())}"
        self._kubectl("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": request},
            "spec": {"request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
                     "signerName": "kubernetes.io/kube-apiserver-client-kubelet" if node
                     else "kubernetes.io/kube-apiserver-client",
                     "expirationSeconds": 86400,
                     "usages": ["digital signature", "client auth"] if node else ["client auth"]}}))
        self._kubectl("certificate", "approve", request)
        cert = ""
        end = time.monotonic() + 60
        while not cert and time.monotonic() < end:
            cert = self._kubectl("get", "csr", request, "-o", "jsonpath={.status.certificate}").strip()
            time.sleep(0.5)
        if not cert:
            raise RuntimeError(f"the cluster signed no certificate for {user} (CSR {request})")
        crt, pem = self.pki / f"{name}.crt", self.pki / f"{name}.key"
        crt.write_bytes(base64.b64decode(cert))
        pem.write_bytes(_pem_key(key))
        pem.chmod(0o600)
        return ControlPlane.write_kubeconfig(self, name, {"client-certificate": str(crt), "client-key": str(pem)})

    def write_kubeconfig(self, name: str, user: dict, server: str | None = None) -> pathlib.Path:
        return ControlPlane.write_kubeconfig(self, name, user, server)

    def ssl_context(self, name: str) -> ssl.SSLContext:
        return ControlPlane.ssl_context(self, name)

    def audit(self) -> list[dict]:
        raise RuntimeError("the API server's audit log is not readable in KUBECONFIG mode")

    def stop(self) -> None:
        pass


def jwk_to_pem(jwk: dict) -> str:
    """A JSON Web Key (the cluster's issuer key, from /openid/v1/jwks) as PEM."""
    def number(field: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(jwk[field] + "=" * (-len(jwk[field]) % 4)), "big")
    if jwk["kty"] == "RSA":
        from cryptography.hazmat.primitives.asymmetric import rsa
        key = rsa.RSAPublicNumbers(number("e"), number("n")).public_key()
    else:
        curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[jwk["crv"]]
        key = ec.EllipticCurvePublicNumbers(number("x"), number("y"), curve).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def main() -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    # Held until sigwait takes them, so that Ctrl-C or a TERM stops the
    # processes (each in its own session) before this one goes.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    cp = ControlPlane(pathlib.Path(args.dir))
    print(json.dumps({"kubeconfig": str(cp.admin), "version": cp.version()["gitVersion"]}), flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cp.stop()


if __name__ == "__main__":
    main()

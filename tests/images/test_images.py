"""Ferry's container images, tested as images: each is unpacked from the OCI
archive images/build.sh made, and its entrypoint runs from the unpacked root as
the image's user (tests/images/oci.py), with nothing from the host. The runner
image performs the demo's encrypted transfer; the operator image reconciles a
run against the test Kubernetes API. Also: two builds give one digest, and each
SBOM names every crate its binary links."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "e2e"))
from cluster import HOST, ROOT, Cluster, free_port, wait_for  # noqa: E402
from oci import Image, chown_tree, unpack  # noqa: E402

CACHE = pathlib.Path(os.environ.get("FERRY_CACHE", pathlib.Path.home() / ".cache/ferry"))
IMAGES = pathlib.Path(os.environ.get("FERRY_IMAGES", CACHE / "images/test"))
VERSION = re.search(r'^version = "(.*)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
RUNNER_FILES = ["etc/ssl/certs/ca-certificates.crt", "job-runner"]
OPERATOR_FILES = ["etc/ssl/certs/ca-certificates.crt", "ferry-operator"]


@pytest.fixture(scope="module")
def work():
    with tempfile.TemporaryDirectory(prefix="ferry-images-") as tmp:
        yield pathlib.Path(tmp)


def image(name: str, work: pathlib.Path) -> Image:
    archive = IMAGES / f"{name}.oci.tar"
    assert archive.exists(), f"{archive} is missing: run `bash images/build.sh --profile test`"
    into = work / name
    if (into / "bundle/config.json").exists():
        return Image(into / "bundle/rootfs", json.loads((into / "bundle/config.json").read_text()))
    return unpack(archive, VERSION, into)


@pytest.fixture(scope="module")
def runner(work):
    return image("job-runner", work)


@pytest.fixture(scope="module")
def operator(work):
    return image("ferry-operator", work)


def test_the_images_hold_their_binary_and_ca_certificates_and_nothing_else(runner, operator):
    assert runner.files() == RUNNER_FILES
    assert operator.files() == OPERATOR_FILES
    for img in (runner, operator):
        assert img.user == "65532:65532", "a numeric non-root user"
        assert img.env.get("SSL_CERT_FILE") == "/etc/ssl/certs/ca-certificates.crt"
        certs = (img.rootfs / "etc/ssl/certs/ca-certificates.crt").read_text()
        assert certs.count("BEGIN CERTIFICATE") > 100, "Mozilla's roots"


def test_the_runner_image_tells_its_version(runner):
    out = runner.run(["--version"])
    assert VERSION in out.stdout


def test_the_runner_image_performs_the_demo_transfer(runner, work):
    """The demo's encrypted transfer, local folder to local folder, every step
    from the image: keygen, run, verify, decrypt."""
    base = work / "demo"
    source = base / "demo/source"
    (source / "customers").mkdir(parents=True)
    (source / "scratch").mkdir()
    rows = "".join(f"{i},Customer {i},customer{i}@example.com,FR\n" for i in range(5000))
    (source / "customers/2026-11-01.csv").write_text("id,name,email,country\n" + rows)
    (source / "events.json").write_bytes(os.urandom(3 << 20).hex().encode())
    (source / "scratch/tmp.csv").write_text("excluded\n")
    chown_tree(base, runner.user)
    binds = {"/work": (base, "rw"), "/examples": (ROOT / "examples", "ro")}

    runner.run(["keygen", "--out", "/work/secrets/demo-kek/kek"], binds=binds)
    runner.run(["run", "--connector", "/examples/local-to-local/connector.yaml",
                "--secrets-dir", "/work/secrets", "--base-dir", "/work", "--audit-log", "/work/audit.jsonl"],
               binds=binds)
    landed = sorted(str(p.relative_to(base / "demo/destination")) for p in (base / "demo/destination").rglob("*")
                    if p.is_file())
    assert "customers/2026-11-01.csv" in landed and "events.json" in landed
    assert not any("scratch" in p for p in landed)
    assert b"Customer 1" not in (base / "demo/destination/customers/2026-11-01.csv").read_bytes(), "encrypted"
    runner.run(["verify", "--kek", "/work/secrets/demo-kek/kek", "--dir", "/work/demo/destination", "--deep"],
               binds=binds)
    runner.run(["decrypt", "--kek", "/work/secrets/demo-kek/kek", "--dir", "/work/demo/destination",
                "--out", "/work/decrypted"], binds=binds)
    for f in ("customers/2026-11-01.csv", "events.json"):
        assert (base / "decrypted" / f).read_bytes() == (source / f).read_bytes(), f
    audit = [json.loads(line) for line in (base / "audit.jsonl").read_text().splitlines()]
    assert audit, "the run left an audit trail"


def test_the_operator_image_reconciles_on_the_api_server(operator, work):
    """The operator from its image, with the chart's arguments and its
    ServiceAccount's token: ready on /healthz, then it reconciles a run on the
    end-to-end suite's API server (one naming a Connector that does not exist,
    so the run's status says so)."""
    (work / "cluster").mkdir()
    c = Cluster(work / "cluster", tenants=["acme"])
    try:
        port = free_port()
        kubeconfig = c.api.write_kubeconfig("operator-image", {"token": c.operator_token()})
        # Readable by the image's user alone, as a projected token would be.
        uid, gid = (int(x) for x in operator.user.split(":"))
        os.chown(kubeconfig, uid, gid)
        argv = operator.command(
            [*c.operator_args(), "--metrics-addr", f"127.0.0.1:{port}", "--no-leader-election"],
            binds={"/var/run/ferry/kubeconfig": (kubeconfig, "ro")},
            env={"KUBECONFIG": "/var/run/ferry/kubeconfig", "POD_NAMESPACE": "ferry-system",
                 "RUST_LOG": "info,kube=warn"})
        log = open(work / "operator-image.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        c.procs["operator-image"] = proc

        def logs() -> str:
            return (work / "operator-image.log").read_text(errors="replace")[-4000:]

        wait_for("the operator image's /healthz", lambda: c.http_ok(f"http://127.0.0.1:{port}/healthz"), 60,
                 context=logs)
        c.apply_text("apiVersion: ferry.dev/v1alpha1\nkind: ConnectorRun\n"
                     "metadata: {name: lonely, namespace: acme}\nspec: {connectorRef: {name: absent}}\n")
        path = "/apis/ferry.dev/v1alpha1/namespaces/acme/connectorruns/lonely"
        wait_for("the run's status", lambda: (c.get(path) or {}).get("status", {}).get("reason"), 60,
                 context=logs)
        status = c.get(path)["status"]
        assert (status["phase"], status["reason"]) == ("Pending", "ConnectorNotFound"), status
        assert proc.poll() is None, logs()
    finally:
        c.stop()


def test_two_builds_of_one_commit_give_one_digest(work):
    out = work / "rebuild"
    subprocess.run(["bash", str(ROOT / "images/build.sh"), "--profile", "test", "--out", str(out)], check=True,
                   capture_output=True)
    assert (out / "digests").read_text() == (IMAGES / "digests").read_text()


def linked_crates(package: str) -> set[tuple[str, str]]:
    """Every crate the binary links, from Cargo.lock: normal dependencies for
    this target, without proc-macros (which run in the compiler)."""
    out = subprocess.run(["cargo", "tree", "--locked", "--offline", "-p", package, "-e", "normal,no-proc-macro",
                          "--target", HOST, "--prefix", "none", "--format", "{p}"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    crates = set()
    for line in out.splitlines():
        name, version = line.split()[:2]
        crates.add((name, version.lstrip("v")))
    return crates


@pytest.mark.parametrize("name,package", [("job-runner", "ferry-job-runner"), ("ferry-operator", "ferry-operator")])
def test_each_sbom_names_every_crate_the_binary_links(name, package):
    sbom = json.loads((IMAGES / f"{name}.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    named = {(c["name"], c["version"]) for c in sbom.get("components", [])}
    root = sbom["metadata"]["component"]
    named.add((root["name"], root["version"]))
    missing = linked_crates(package) - named
    assert not missing, f"{name}'s SBOM misses {sorted(missing)[:10]}"
    hashes = [c for c in sbom["components"] if c.get("hashes")]
    assert hashes, "registry crates carry their Cargo.lock checksum"


def test_the_images_are_the_digests_recorded():
    for line in (IMAGES / "digests").read_text().splitlines():
        name, digest = line.split()
        manifest = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{IMAGES / f'{name}.oci.tar'}"],
                                  check=True, capture_output=True).stdout
        assert "sha256:" + hashlib.sha256(manifest).hexdigest() == digest

"""Ferry end to end: the real ferry-operator and job-runner binaries, installed
with the chart on a real Kubernetes API server (tests/k8s), driven by named
users applying files from examples/ with kubectl, with the test kubelet running
each run's pod as a process under its own ServiceAccount token, against the
real S3 (moto) and Azure Blob (Azurite) test servers on 127.0.0.1."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import pathlib
import secrets
import signal
import subprocess
import tempfile
import time

import boto3
import pytest
import yaml
from azure.storage.blob import BlobServiceClient
from cluster import EDITOR, OPERATOR_USER, ROOT, RUNNER, Cluster, metric, wait_for

S3 = os.environ.get("FERRY_S3_ENDPOINT", "")
AZURITE = os.environ.get("FERRY_AZURITE_ENDPOINT", "")
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
KEK = secrets.token_bytes(32)
# The S3 and Azure test servers outlive a test run: names are unique per run.
RUN_ID = secrets.token_hex(3)
RUN = "/apis/ferry.dev/v1alpha1/namespaces/{ns}/connectorruns"
CONN = "/apis/ferry.dev/v1alpha1/namespaces/{ns}/connectors"
def s3():
    return boto3.client("s3", endpoint_url=S3, region_name="eu-west-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def azure():
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};"
            f"BlobEndpoint={AZURITE};")
    return BlobServiceClient.from_connection_string(conn)


def blobs(container: str) -> dict[str, int]:
    return {b.name: b.size for b in azure().get_container_client(container).list_blobs()}


def tenant(cluster: Cluster, ns: str, region: str = "eu-west-1", allowed: str | None = "pii") -> None:
    """The platform team's settings of a namespace: its region, what it may move."""
    annotations = {"ferry.dev/allowed-sensitivity": allowed} if allowed else {}
    cluster.namespace(ns, labels={"ferry.dev/region": region}, annotations=annotations)


def example(cluster: Cluster, ns: str, bucket: str, container: str, **changes) -> dict:
    """examples/s3-to-azure with its endpoints pointed at the test servers, its
    Secrets filled in, applied with kubectl to namespace `ns` by its editor."""
    conn = yaml.safe_load((ROOT / "examples/s3-to-azure/connector.yaml").read_text())
    conn["metadata"]["namespace"] = ns
    spec = conn["spec"]
    spec["source"]["s3"].update(bucket=bucket, endpoint=S3, forcePathStyle=True, insecurePlainHttpOnLoopback=True)
    spec["destination"]["azureBlob"].update(account="devstoreaccount1", container=container,
                                            endpoint=AZURITE, insecurePlainHttpOnLoopback=True)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    values = {"accessKeyId": "testing", "secretAccessKey": "testing", "accountKey": DEV_KEY,
              "kek": base64.b64encode(KEK).decode()}
    docs = []
    for doc in yaml.safe_load_all((ROOT / "examples/s3-to-azure/secrets.yaml").read_text()):
        doc["metadata"]["namespace"] = ns
        doc["stringData"] = {k: values[k] for k in doc["stringData"]}
        docs.append(doc)
    cluster.apply_text(yaml.safe_dump_all([*docs, conn]), user=EDITOR)
    return conn


def data(bucket: str, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    client = s3()
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    objects = {
        "daily/customers/2026-11-01.csv": b"id,email,country\n1,a@example.com,FR\n2,\"b,c\"@example.com,DE\n",
        "daily/orders/2026-11-01.csv": b"order,amount\n7,12.50\n8,3.10\n",
        "daily/orders/notes.txt": b"not included\n",
        **(extra or {}),
    }
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return objects


# The user who asks for the manual runs: the tenant's editor. The chart's
# MutatingAdmissionPolicy writes their name into each run they create.
KUBECTL_USER = EDITOR


def manual_run(cluster: Cluster, ns: str) -> str:
    """kubectl create -f examples/runs/manual-run.yaml, in `ns`, as its editor: the run's name."""
    text = (ROOT / "examples/runs/manual-run.yaml").read_text().replace("namespace: acme", f"namespace: {ns}")
    out = cluster.kubectl("create", "-f", "-", "-o", "name", stdin=text, user=EDITOR)
    return out.stdout.strip().split("/")[-1]


def run_phase(cluster: Cluster, ns: str, name: str) -> str | None:
    run = cluster.get(f"{RUN.format(ns=ns)}/{name}")
    return ((run or {}).get("status") or {}).get("phase")


def wait_phase(cluster: Cluster, ns: str, name: str, phases: tuple[str, ...], timeout: float = 120) -> dict:
    wait_for(f"run {ns}/{name} to reach {phases}", lambda: run_phase(cluster, ns, name) in phases, timeout,
             context=lambda: json.dumps(cluster.get(f"{RUN.format(ns=ns)}/{name}"), indent=1) + cluster.logs())
    return cluster.get(f"{RUN.format(ns=ns)}/{name}")


def local_copy(cluster: Cluster, conn: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """The Connector and its Secrets as files, for `job-runner verify/decrypt`."""
    d = cluster.dir / f"verify-{conn['metadata']['namespace']}"
    (d / "secrets/bronze-writer").mkdir(parents=True, exist_ok=True)
    (d / "secrets/bronze-writer/accountKey").write_text(DEV_KEY)
    (d / "kek").write_bytes(KEK)
    (d / "connector.yaml").write_text(yaml.safe_dump(conn))
    return d / "connector.yaml", d


def test_s3_to_azure_manual_run(cluster: Cluster):
    ns, bucket, container = "acme", f"acme-exports-{RUN_ID}", f"bronze-{RUN_ID}"
    tenant(cluster, ns)
    data(bucket)
    azure().create_container(container)
    conn = example(cluster, ns, bucket, container)
    name = manual_run(cluster, ns)
    run = wait_phase(cluster, ns, name, ("Succeeded", "Failed", "Rejected"))
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1) + cluster.logs()

    # The pod ran with the restricted security context, under the run's own identity.
    pods = [p for p in cluster.watch_pods() if p["metadata"]["labels"].get("ferry.dev/run") == name]
    assert pods, "no pod was created for the run"
    spec = pods[0]["spec"]
    sc = spec["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] != "default"
    assert pods[-1]["status"]["phase"] == "Succeeded"

    # The data: the three included objects, encrypted, customers minimised to two columns.
    there = blobs(container)
    copied = sorted(k for k in there if not k.startswith("sales/.ferry/"))
    assert copied == ["sales/customers/2026-11-01.csv", "sales/orders/2026-11-01.csv"], there
    stored = azure().get_blob_client(container, "sales/orders/2026-11-01.csv").download_blob().readall()
    assert b"order,amount" not in stored, "the object is stored in plain text"
    path, d = local_copy(cluster, conn)
    verified = subprocess.run([str(RUNNER), "verify", "--kek", str(d / "kek"), "--connector", str(path),
                               "--secrets-dir", str(d / "secrets"), "--deep"], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    out = d / "plain"
    decrypted = subprocess.run([str(RUNNER), "decrypt", "--kek", str(d / "kek"), "--connector", str(path),
                                "--secrets-dir", str(d / "secrets"), "--out", str(out)],
                               capture_output=True, text=True)
    assert decrypted.returncode == 0, decrypted.stderr
    assert (out / "customers/2026-11-01.csv").read_bytes() == b"id,country\n1,FR\n2,DE\n"
    assert (out / "orders/2026-11-01.csv").read_bytes() == b"order,amount\n7,12.50\n8,3.10\n"
    # The runner's audit lines outlive its pod: stored encrypted next to the
    # manifest, listed in it, and decrypted with the data; they form a chain.
    assert any(k.startswith("sales/.ferry/audit/") for k in there), there
    [copy] = list((out / ".ferry/audit").glob("*.jsonl"))
    checked = subprocess.run([str(RUNNER), "audit", "verify", str(copy)], capture_output=True, text=True)
    assert checked.returncode == 0 and "0 audit line(s)" not in checked.stdout, checked.stdout + checked.stderr
    stored = [json.loads(line) for line in copy.read_text().splitlines()]
    assert {line["run"] for line in stored} == {name} and stored[0]["action"] == "run.started", stored[:2]

    # The Connector's status: last run, cursor.
    status = cluster.get(f"{CONN.format(ns=ns)}/sales-exports")["status"]
    assert status["lastRun"]["name"] == name, status
    assert status["cursor"], status
    # The audit trails of the operator and of the run's pod form unbroken chains,
    # and every line about the run names the kubectl user who asked for it.
    # (The Connector was applied by the same editor: the chart's
    # MutatingAdmissionPolicy wrote that down as well.)
    assert run["status"]["attribution"] == {"requestedBy": KUBECTL_USER, "connectorChangedBy": EDITOR}, \
        run["status"]
    for trail in (cluster.dir / "operator-a.audit", cluster.dir / "node/logs" / f"{ns}_{name}-1.log"):
        checked = subprocess.run([str(RUNNER), "audit", "verify", str(trail)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        assert "0 audit line(s)" not in checked.stdout, checked.stdout
        about = [json.loads(line) for line in trail.read_text().splitlines()
                 if line.startswith("{") and '"run":"' + name + '"' in line]
        assert about and all(line.get("requestedBy") == KUBECTL_USER for line in about), about
    # The metrics count the run and its bytes.
    text = cluster.scrape("operator-a")
    assert metric(text, "ferry_runs_total", namespace=ns, result="succeeded") == 1, text
    assert metric(text, "ferry_bytes_transferred_total", namespace=ns) > 0, text

    # The pod and the run's identity are cleaned up.
    run_objects = [
        f"/api/v1/namespaces/{ns}/pods", f"/api/v1/namespaces/{ns}/serviceaccounts",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    ]
    wait_for("the run's pod and identity to go", lambda: not any(
        i["metadata"].get("labels", {}).get("ferry.dev/run") == name
        for p in run_objects for i in cluster.items(p)), 30,
        context=lambda: json.dumps([[i["metadata"]["name"] for i in cluster.items(p)] for p in run_objects]))

    # An editor deletes the finished run: it goes, and not unseen. The
    # operator's finalizer held it until the audit line was written.
    assert run["metadata"]["finalizers"] == ["ferry.dev/audit-trail"], run["metadata"]
    cluster.kubectl("delete", "connectorrun", name, "-n", ns, "--wait=false", user=EDITOR)
    wait_for("the deleted run to go", lambda: cluster.get(f"{RUN.format(ns=ns)}/{name}") is None, 30,
             context=cluster.logs)
    lines = [json.loads(line) for line in (cluster.dir / "operator-a.audit").read_text().splitlines()]
    deleted = [line for line in lines if line["action"] == "run.deleted" and line["run"] == name]
    assert len(deleted) == 1, lines[-5:]
    assert deleted[0]["reason"] == "Succeeded" and deleted[0]["requestedBy"] == KUBECTL_USER, deleted


def test_a_namespace_that_is_not_a_tenant_cannot_steer_the_operator(cluster: Cluster):
    """Attack: a namespace the platform team did not opt in creates a Connector
    and a run, hoping the operator (which could read its Secrets and create
    pods and Roles there) acts on them. It is never looked at: no status, no
    pod, no Role, while a tenant's run in the same time is carried out."""
    ns, bucket, container = "outsider", f"outsider-exports-{RUN_ID}", f"outsider-bronze-{RUN_ID}"
    tenant(cluster, ns)
    example(cluster, ns, bucket, container)
    name = manual_run(cluster, ns)
    # The control: a tenant's run (acme's Connector, from the first scenario),
    # created after the outsider's, is carried out to its end meanwhile.
    assert cluster.get(f"{CONN.format(ns='acme')}/sales-exports"), "the first scenario made acme's Connector"
    control = manual_run(cluster, "acme")
    wait_phase(cluster, "acme", control, ("Succeeded",))
    run = cluster.get(f"{RUN.format(ns=ns)}/{name}")
    assert not run.get("status"), run
    assert not cluster.get(f"{CONN.format(ns=ns)}/sales-exports").get("status")
    assert not [p for p in cluster.watch_pods() if p["metadata"]["namespace"] == ns], "a pod was created"
    assert not cluster.items(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles")
    accounts = [a["metadata"]["name"] for a in cluster.items(f"/api/v1/namespaces/{ns}/serviceaccounts")]
    assert accounts == ["default"], accounts


def warnings_about(cluster: Cluster, ns: str, name: str) -> list[dict]:
    events = cluster.items(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
    return [e for e in events if e.get("type") == "Warning" and (e.get("regarding") or {}).get("name") == name]


@pytest.mark.parametrize("case", ["sensitivity", "residency"])
def test_a_run_refused_by_policy_gets_no_pod_and_a_warning(cluster: Cluster, case: str):
    ns = f"refused-{case}"
    if case == "sensitivity":
        # No ferry.dev/allowed-sensitivity annotation: the pii stream may not move.
        tenant(cluster, ns, allowed=None)
        example(cluster, ns, "unused", "unused")
    else:
        tenant(cluster, ns)
        example(cluster, ns, "unused", "unused", compliance={"allowedSensitivity": ["pii"],
                                                             "dataResidency": "in-region-only"})
    name = manual_run(cluster, ns)
    run = wait_phase(cluster, ns, name, ("Rejected", "Succeeded", "Failed"), 60)
    assert run["status"]["phase"] == "Rejected", run["status"]
    words = "pii" if case == "sensitivity" else "outside the tenant's region"
    messages = " ".join(c.get("message", "") for c in run["status"]["conditions"])
    assert words in messages, run["status"]["conditions"]
    warnings = wait_for("a Warning Event about the run", lambda: warnings_about(cluster, ns, name), 30)
    assert any(words in (w.get("note") or "") for w in warnings), warnings
    assert not [p for p in cluster.watch_pods() if p["metadata"]["namespace"] == ns], "a pod was created"
    text = cluster.scrape("operator-a")
    reason = "SensitivityNotAllowed" if case == "sensitivity" else "ResidencyViolation"
    assert metric(text, "ferry_policy_denials_total", reason=reason) >= 1, text


def test_a_runner_killed_mid_transfer_is_retried_without_duplicates(cluster: Cluster):
    ns, bucket, container = "retry", f"retry-exports-{RUN_ID}", f"retry-bronze-{RUN_ID}"
    tenant(cluster, ns)
    big = os.urandom(192 << 20)
    objects = data(bucket, {"daily/orders/big.csv": big})
    azure().create_container(container)
    conn = example(cluster, ns, bucket, container)
    name = manual_run(cluster, ns)
    pod = f"{name}-1"
    pidfile = cluster.dir / "node/pids" / f"{ns}_{pod}.pid"

    def first_pod_running():
        pods = cluster.items(f"/api/v1/namespaces/{ns}/pods")
        return pidfile.exists() and any(
            p["metadata"]["labels"].get("ferry.dev/attempt") == "1" and (p.get("status") or {}).get("phase") == "Running"
            for p in pods)

    wait_for("the first attempt's pod to run", first_pod_running, 60, every=0.05, context=cluster.logs)
    time.sleep(1.5)  # in the middle of the big object
    assert run_phase(cluster, ns, name) not in ("Succeeded", "Failed"), "the run ended before it could be killed"
    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    run = wait_phase(cluster, ns, name, ("Succeeded", "Failed"), 240)
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1) + cluster.logs()
    attempts = {p["metadata"]["labels"]["ferry.dev/attempt"] for p in cluster.watch_pods()
                if p["metadata"]["labels"].get("ferry.dev/run") == name}
    assert attempts == {"1", "2"}, attempts
    killed = [p for p in cluster.watch_pods() if p["metadata"]["name"] == pod and
              (p.get("status") or {}).get("phase") == "Failed"]
    assert killed and killed[-1]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137

    # Exactly the included objects, whole, one manifest; nothing half-written.
    there = blobs(container)
    included = sorted("sales/" + k[len("daily/"):] for k in objects if k.endswith(".csv"))
    assert sorted(k for k in there if not k.startswith("sales/.ferry/")) == included, there
    manifests = [k for k in there if k.startswith("sales/.ferry/manifests/")]
    assert len(manifests) == 1, manifests
    path, d = local_copy(cluster, conn)
    verified = subprocess.run([str(RUNNER), "verify", "--kek", str(d / "kek"), "--connector", str(path),
                               "--secrets-dir", str(d / "secrets"), "--deep"], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr


def shard_of(key: str, shards: int) -> int:
    """The shard that owns a source key (relative to the source prefix), as the runner decides."""
    digest = hashlib.sha256(b"ferry-shard\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def test_a_run_over_three_shards_with_one_killed_is_retried_alone_and_verifies_as_one_record(cluster: Cluster):
    ns, bucket, container = "sharded", f"sharded-exports-{RUN_ID}", f"sharded-bronze-{RUN_ID}"
    tenant(cluster, ns)
    victim = 1
    # One large object per shard, the victim's the largest, and small ones.
    big: dict[int, str] = {}
    i = 0
    while len(big) < 3:
        big.setdefault(shard_of(f"orders/big-{i}.csv", 3), f"orders/big-{i}.csv")
        i += 1
    extra = {f"daily/{key}": os.urandom((128 if shard == victim else 24) << 20) for shard, key in big.items()}
    extra.update({f"daily/orders/small-{i:02}.csv": f"id\n{i}\n".encode() for i in range(30)})
    objects = data(bucket, extra)
    azure().create_container(container)
    base = yaml.safe_load((ROOT / "examples/s3-to-azure/connector.yaml").read_text())["spec"]["run"]
    conn = example(cluster, ns, bucket, container, run={**base, "parallelism": 3})
    name = manual_run(cluster, ns)
    pods = [f"{name}-1-s{s}" for s in range(3)]
    pidfile = cluster.dir / "node/pids" / f"{ns}_{pods[victim]}.pid"

    def phases() -> dict[str, str]:
        return {p["metadata"]["name"]: (p.get("status") or {}).get("phase", "")
                for p in cluster.items(f"/api/v1/namespaces/{ns}/pods")}

    def shards_running():
        now = phases()
        return pidfile.exists() and all(now.get(p) == "Running" for p in pods)

    wait_for("the three shard pods to run", shards_running, 60, every=0.05, context=cluster.logs)
    time.sleep(1.0)  # in the middle of the victim's large object
    assert phases().get(pods[victim]) == "Running", "the shard ended before it could be killed"
    os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    run = wait_phase(cluster, ns, name, ("Succeeded", "Failed"), 300)
    status = run["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1) + cluster.logs()
    assert status["shards"] == "3/3"
    assert [s["attempts"] for s in status["shardStatuses"]] == [2 if s == victim else 1 for s in range(3)]
    seen = {p["metadata"]["name"] for p in cluster.watch_pods() if p["metadata"]["labels"].get("ferry.dev/run") == name}
    assert seen == {*pods, f"{name}-2-s{victim}", f"{name}-1"}, seen
    killed = [p for p in cluster.watch_pods() if p["metadata"]["name"] == pods[victim] and
              (p.get("status") or {}).get("phase") == "Failed"]
    assert killed and killed[-1]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert not [p for p in cluster.items(f"/api/v1/namespaces/{ns}/pods")], "pods left behind"

    # Each included object once, one manifest, no shard part left; it verifies.
    there = blobs(container)
    included = sorted("sales/" + k[len("daily/"):] for k in objects if k.endswith(".csv"))
    assert sorted(k for k in there if not k.startswith("sales/.ferry/")) == included, there
    assert len([k for k in there if k.startswith("sales/.ferry/manifests/")]) == 1, there
    assert not [k for k in there if k.startswith("sales/.ferry/shards/")], there
    assert status["result"]["objectsCopied"] == len(included)
    path, d = local_copy(cluster, conn)
    verified = subprocess.run([str(RUNNER), "verify", "--kek", str(d / "kek"), "--connector", str(path),
                               "--secrets-dir", str(d / "secrets"), "--deep"], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr
    text = cluster.scrape("operator-a")
    assert metric(text, "ferry_shard_attempts_total", namespace=ns, result="failed") >= 1, text
    assert metric(text, "ferry_shard_attempts_total", namespace=ns, result="succeeded") == 3, text


def test_a_destination_rolled_back_is_refused_by_the_next_run(cluster: Cluster):
    """The attack: someone who can write to the destination (no key) deletes
    the newest manifest, rolling the record back. The operator handed the next
    run the place of the manifest the last run wrote; the run refuses."""
    ns, bucket, container = "rollback", f"rollback-{RUN_ID}", f"rollback-bronze-{RUN_ID}"
    tenant(cluster, ns)
    data(bucket)
    azure().create_container(container)
    conn = example(cluster, ns, bucket, container)
    connector = f"{CONN.format(ns=ns)}/sales-exports"

    def cursor_anchor(sequence: int) -> str:
        def anchor():
            a = ((cluster.get(connector).get("status") or {}).get("cursor") or {}).get("anchor") or ""
            return a if a.startswith(f"{sequence}:") else None
        return wait_for(f"the cursor at manifest {sequence}", anchor, 30,
                        context=lambda: json.dumps(cluster.get(connector).get("status"), indent=1))

    first = manual_run(cluster, ns)
    assert wait_phase(cluster, ns, first, ("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
    anchor1 = cursor_anchor(1)
    second = manual_run(cluster, ns)
    run = wait_phase(cluster, ns, second, ("Succeeded", "Failed"))
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1)
    assert run["status"]["manifestAnchor"] == anchor1, "pinned with the spec"
    env = {e["name"]: e.get("value") for p in cluster.watch_pods()
           if p["metadata"]["labels"].get("ferry.dev/run") == second for e in p["spec"]["containers"][0]["env"]}
    assert env["FERRY_MANIFEST_ANCHOR"] == anchor1, env
    anchor2 = cursor_anchor(2)
    assert run["status"]["result"]["manifestAnchor"] == anchor2

    # The attacker deletes the newest manifest.
    manifests = sorted(k for k in blobs(container) if k.startswith("sales/.ferry/manifests/"))
    assert len(manifests) == 2, manifests
    azure().get_container_client(container).delete_blob(manifests[-1])

    third = manual_run(cluster, ns)
    run = wait_phase(cluster, ns, third, ("Succeeded", "Failed"))
    status = run["status"]
    assert status["phase"] == "Failed", json.dumps(status, indent=1)
    assert status["result"]["error"]["reason"] == "IntegrityFailure", status
    assert "rolled back" in status["result"]["error"]["message"], status
    path, d = local_copy(cluster, conn)
    verified = subprocess.run([str(RUNNER), "verify", "--kek", str(d / "kek"), "--connector", str(path),
                               "--secrets-dir", str(d / "secrets"), "--anchor", anchor2],
                              capture_output=True, text=True)
    assert verified.returncode != 0 and "rolled back" in verified.stderr, verified.stderr


def test_a_run_past_its_deadline_is_stopped_and_fails(cluster: Cluster):
    ns, bucket, container = "deadline", f"deadline-exports-{RUN_ID}", f"deadline-bronze-{RUN_ID}"
    tenant(cluster, ns)
    data(bucket, {"daily/orders/big.csv": os.urandom(192 << 20)})
    azure().create_container(container)
    conn = yaml.safe_load((ROOT / "examples/s3-to-azure/connector.yaml").read_text())
    example(cluster, ns, bucket, container, run={**conn["spec"]["run"], "activeDeadlineSeconds": 1})
    name = manual_run(cluster, ns)
    run = wait_phase(cluster, ns, name, ("Succeeded", "Failed"), 120)
    assert run["status"]["phase"] == "Failed" and run["status"]["reason"] == "DeadlineExceeded", run["status"]
    pods = [p for p in cluster.watch_pods() if p["metadata"]["labels"].get("ferry.dev/run") == name]
    assert {p["metadata"]["labels"]["ferry.dev/attempt"] for p in pods} == {"1"}, "a deadline is not retried"
    last = pods[-1]["status"]
    assert last["phase"] == "Failed" and last["reason"] == "DeadlineExceeded", last
    assert last["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    manifests = [k for k in blobs(container) if k.startswith("sales/.ferry/manifests/")]
    assert manifests == [], "a stopped run wrote a manifest"


def test_a_schedule_produces_runs_and_prunes_history(cluster: Cluster):
    ns, bucket, container = "scheduled", f"scheduled-exports-{RUN_ID}", f"scheduled-bronze-{RUN_ID}"
    tenant(cluster, ns)
    data(bucket)
    azure().create_container(container)
    example(cluster, ns, bucket, container, schedule="* * * * *", timeZone=None,
            successfulRunsHistoryLimit=1)
    seen: set[str] = set()

    def two_runs_succeeded():
        for r in cluster.items(RUN.format(ns=ns)):
            if (r.get("status") or {}).get("phase") == "Succeeded":
                seen.add(r["metadata"]["name"])
        return len(seen) >= 2

    wait_for("two scheduled runs to succeed", two_runs_succeeded, 150, every=1, context=cluster.logs)
    wait_for("the older run to be pruned",
             lambda: len([r for r in cluster.items(RUN.format(ns=ns))
                          if (r.get("status") or {}).get("phase") == "Succeeded"]) == 1, 30)
    status = cluster.get(f"{CONN.format(ns=ns)}/sales-exports")["status"]
    assert status.get("lastScheduleTime") and status.get("nextScheduleTime"), status
    assert status["lastRun"]["name"] in seen
    # The schedule's runs are the operator's requests, and say so.
    kept = cluster.get(f"{RUN.format(ns=ns)}/{status['lastRun']['name']}")
    assert kept["metadata"]["annotations"]["ferry.dev/created-by"] == OPERATOR_USER, kept["metadata"]
    assert kept["status"]["attribution"] == {"requestedBy": OPERATOR_USER, "connectorChangedBy": EDITOR}, \
        kept["status"]
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_runner_at_trace_level_leaks_no_secret_in_cluster_mode(cluster: Cluster):
    """Canary, cluster mode: the runner fetches its Secrets through the API with
    RUST_LOG=trace (set by the operator for every run); the planted values, raw
    or base64 as the API returns them, are in no log of the runner, the
    operator, the API or the kubelet, nor in any run status or Event."""
    with tempfile.TemporaryDirectory(prefix="ferry-e2e-canary-") as tmp:
        ns = "canary"
        c = Cluster(pathlib.Path(tmp), tenants=[ns], values={"runner": {"logLevel": "trace"}})
        try:
            bucket, container = f"canary-exports-{RUN_ID}", f"canary-bronze-{RUN_ID}"
            c.start_operator("operator-trace")
            tenant(c, ns)
            data(bucket)
            azure().create_container(container)
            example(c, ns, bucket, container)
            key_id, secret = "AKIACANARYE2E0000001", f"canary/e2e+secret-{RUN_ID}"
            c.apply_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "s3-reader", "namespace": ns, "labels": {"ferry.dev/usable": "true"}},
                "stringData": {"accessKeyId": key_id, "secretAccessKey": secret}}), user=EDITOR)
            name = manual_run(c, ns)
            run = wait_phase(c, ns, name, ("Succeeded", "Failed", "Rejected"))
            assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1) + c.logs()
            pod_logs = list(pathlib.Path(tmp, "node", "logs").glob(f"{ns}_*.log"))
            assert pod_logs and any('"TRACE"' in p.read_text(errors="replace") for p in pod_logs), \
                "the runner did not log at trace level"
            texts = [p.read_text(errors="replace") for p in pathlib.Path(tmp).rglob("*")
                     if p.is_file() and p.suffix in (".log", ".audit")]
            texts.append(json.dumps(c.items(RUN.format(ns=ns))))
            texts.append(json.dumps(c.items(f"/apis/events.k8s.io/v1/namespaces/{ns}/events")))
            everything = "\n".join(texts)
            planted = [key_id, secret, DEV_KEY, base64.b64encode(KEK).decode()]
            for value in planted + [base64.b64encode(v.encode()).decode() for v in planted]:
                assert value not in everything, f"a planted secret value leaked: {value[:6]}..."
            # The run's own API token (projected by the kubelet through
            # TokenRequest) is in no output of the runner.
            tokens = [pathlib.Path(yaml.safe_load(p.read_text())["users"][0]["user"]["tokenFile"]).read_text()
                      for p in pathlib.Path(tmp, "node", "kubeconfigs").glob(f"{ns}_*")]
            assert tokens and all(t.count(".") == 2 for t in tokens), "the kubelet gave the run a token"
            runner_output = "\n".join(p.read_text(errors="replace") for p in pod_logs)
            for token in tokens:
                assert token not in runner_output, "the run's API token is in the runner's output"
        finally:
            c.stop()


def test_a_run_that_cannot_be_read_does_not_stall_the_operator(cluster: Cluster):
    """A ConnectorRun whose status no longer reads as one (written under a newer
    Ferry's looser schema) is reported with a Warning Event and skipped; an
    operator started after it (listing every run) carries out the tenant's next
    run as usual. The API server checks status writes against the CRD's schema,
    so the status is written while the CRD is swapped for one whose status takes
    anything, as a newer release's might, and the CRD is put back after: stored
    objects are not checked again."""
    ns = "acme"
    text = (ROOT / "examples/runs/manual-run.yaml").read_text().replace("namespace: acme", f"namespace: {ns}")
    bad = yaml.safe_load(text)
    bad["metadata"] = {"name": f"unreadable-{RUN_ID}", "namespace": ns}
    # Made unreadable while the operator is down, so that no status write of
    # the operator's (it rewrites its fields from its record) can make it
    # readable again before the operator has seen it; a restart lists every run
    # anew, the unreadable one with them.
    cluster.kill("operator-a", signal.SIGTERM)
    cluster.apply_text(yaml.safe_dump(bad))
    crd_file = ROOT / "charts/ferry/crds/connectorruns.ferry.dev.yaml"
    looser = yaml.safe_load(crd_file.read_text())
    for version in looser["spec"]["versions"]:
        version["schema"]["openAPIV3Schema"]["properties"]["status"] = {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=yaml.safe_dump(looser))
    try:
        wait_for("the looser schema to be served", lambda: cluster.kubectl(
            "patch", "connectorrun", bad["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": {"phase": "Bogus", "attempts": "many"}}), check=False).returncode == 0, 30)
    finally:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_file))
    cluster.start_operator("operator-a")
    name = manual_run(cluster, ns)
    run = wait_phase(cluster, ns, name, ("Succeeded", "Failed", "Rejected"), 120)
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1) + cluster.logs()
    warnings = wait_for("a Warning Event about the unreadable run",
                        lambda: [w for w in warnings_about(cluster, ns, bad["metadata"]["name"])
                                 if w.get("reason") == "InvalidObject"], 30,
                        context=lambda: cluster.log("operator-a", 200) + json.dumps(cluster.items(f"/apis/events.k8s.io/v1/namespaces/{ns}/events"))[-3000:])
    assert "cannot read" in warnings[0]["note"], warnings
    cluster.kubectl("delete", "connectorrun", bad["metadata"]["name"], "-n", ns)


def test_only_the_leader_reconciles_and_another_replica_takes_over(cluster: Cluster):
    lease = "/apis/coordination.k8s.io/v1/namespaces/ferry-system/leases/ferry-operator"
    assert cluster.get(lease)["spec"]["holderIdentity"] == "operator-a"
    cluster.start_operator("operator-b")
    ns = "acme"
    before = metric(cluster.scrape("operator-a"), "ferry_reconcile_total")
    name = manual_run(cluster, ns)
    wait_phase(cluster, ns, name, ("Succeeded",), 120)
    assert metric(cluster.scrape("operator-a"), "ferry_reconcile_total") > before
    assert metric(cluster.scrape("operator-b"), "ferry_reconcile_total") == 0, "a follower reconciled"
    assert cluster.get(lease)["spec"]["holderIdentity"] == "operator-a"

    cluster.kill("operator-a")
    wait_for("operator-b to take the lease", lambda: cluster.get(lease)["spec"].get("holderIdentity") == "operator-b",
             60, context=lambda: cluster.log("operator-b"))
    name = manual_run(cluster, ns)
    wait_phase(cluster, ns, name, ("Succeeded",), 120)
    assert metric(cluster.scrape("operator-b"), "ferry_reconcile_total") > 0


def bao(method: str, path: str, body: dict | None = None) -> dict:
    """The test OpenBao's API, as the platform team (root token)."""
    import urllib.request
    req = urllib.request.Request(f"{os.environ['FERRY_BAO_ADDR']}/v1/{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"X-Vault-Token": os.environ["FERRY_BAO_ROOT_TOKEN"]})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text else {}


def test_s3_to_azure_with_the_azure_key_in_openbao_and_the_kek_in_transit(cluster: Cluster):
    """The destination's account key lives in OpenBao KV and the KEK in OpenBao
    Transit, neither in a Secret: the run's pod logs in once with its own
    projected token (minted by the API server through the kubelet's
    TokenRequest for audience `vault`, signed by the cluster's issuer key that
    OpenBao's JWT auth method trusts) as the role
    of its namespace, reads the key, asks Transit for one data key, and moves
    the data. OpenBao's audit log shows exactly the run's reads; a reader with
    only Transit decrypt rights decrypts the data."""
    ns, bucket, container = "vaulted", f"vaulted-exports-{RUN_ID}", f"vaulted-bronze-{RUN_ID}"
    tenant(cluster, ns)
    data(bucket)
    azure().create_container(container)
    mount = cluster.vault_mount
    # The cluster's ServiceAccount issuer key: what the platform hands Vault.
    issuer = cluster.issuer_public_key
    bao("POST", f"sys/auth/{mount}", {"type": "jwt"})
    bao("POST", f"auth/{mount}/config", {"jwt_validation_pubkeys": [issuer],
                                         "bound_issuer": "https://kubernetes.default.svc"})
    transit = f"transit-{ns}-{RUN_ID}"
    bao("POST", f"sys/mounts/{transit}", {"type": "transit"})
    bao("POST", f"{transit}/keys/sales", {})
    bao("PUT", f"sys/policies/acl/ferry-{ns}-{RUN_ID}",
        {"policy": f'path "secret/data/{ns}-{RUN_ID}/*" {{ capabilities = ["read"] }}\n'
                   f'path "{transit}/datakey/plaintext/sales" {{ capabilities = ["update"] }}\n'
                   f'path "{transit}/decrypt/sales" {{ capabilities = ["update"] }}'})
    bao("PUT", f"sys/policies/acl/auditor-{ns}-{RUN_ID}",
        {"policy": f'path "{transit}/decrypt/sales" {{ capabilities = ["update"] }}'})
    bao("POST", f"auth/{mount}/role/ferry-{ns}", {
        "role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub",
        "bound_claims_type": "glob", "bound_claims": {"sub": f"system:serviceaccount:{ns}:ferry-run-*"},
        "token_policies": [f"ferry-{ns}-{RUN_ID}"], "token_ttl": "10m"})
    bao("POST", f"secret/data/{ns}-{RUN_ID}/bronze-writer", {"data": {"accountKey": DEV_KEY}})
    conn = example(cluster, ns, bucket, container)
    conn["spec"]["destination"]["azureBlob"]["credentials"] = {"vault": {"path": f"{ns}-{RUN_ID}/bronze-writer"}}
    conn["spec"]["encryption"] = {"kms": {"vaultTransit": {"mount": transit, "key": "sales"}}}
    cluster.apply_text(yaml.safe_dump(conn))
    name = manual_run(cluster, ns)
    run = wait_phase(cluster, ns, name, ("Succeeded", "Failed", "Rejected"))
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1) + cluster.logs()
    there = blobs(container)
    assert sorted(k for k in there if not k.startswith("sales/.ferry/")) == [
        "sales/customers/2026-11-01.csv", "sales/orders/2026-11-01.csv"], there

    # The pod asked for a token for Vault and read no Secret for the key.
    pods = [p for p in cluster.watch_pods() if p["metadata"]["labels"].get("ferry.dev/run") == name]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["FERRY_VAULT_ROLE"] == f"ferry-{ns}" and env["FERRY_VAULT_AUTH_MOUNT"] == mount, env
    role = cluster.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/ferry-run-{name}")
    assert role is None or ("bronze-writer" not in json.dumps(role) and "kek" not in json.dumps(role)), role

    # OpenBao's audit log: the run logged in once and read exactly its secret.
    entries = [json.loads(line) for line in pathlib.Path(os.environ["FERRY_BAO_AUDIT_LOG"]).read_text().splitlines()]
    # (The tokens this cluster's JWT auth method issued are named after it.)
    by_run = [e for e in entries if e["type"] == "response"
              and (e.get("auth") or {}).get("display_name", "").startswith(f"{mount}-")]
    reads = [(e["request"]["operation"], e["request"]["path"]) for e in by_run
             if not e["request"]["path"].startswith("auth/")]
    assert reads == [("read", f"secret/data/{ns}-{RUN_ID}/bronze-writer"),
                     ("update", f"{transit}/datakey/plaintext/sales")], reads
    logins = [e for e in entries if e["type"] == "response" and e["request"]["path"] == f"auth/{mount}/login"]
    assert len(logins) == 1, logins
    assert logins[0]["auth"]["metadata"]["role"] == f"ferry-{ns}", logins[0]["auth"]
    # And Ferry's own trail names the path and version it read.
    log = (cluster.dir / "node/logs" / f"{ns}_{name}-1.log").read_text()
    assert f'"object":"vault:secret/{ns}-{RUN_ID}/bronze-writer@v1"' in log, log[-2000:]
    assert f'"action":"kms.datakey","outcome":"success"' in log, log[-2000:]
    assert f'"object":"vault-transit:{transit}/sales@v1"' in log, log[-2000:]
    assert DEV_KEY not in log

    # An auditor with storage read access and only Transit decrypt rights
    # verifies and decrypts the data; no KEK exists outside Transit.
    token = bao("POST", "auth/token/create", {"policies": [f"auditor-{ns}-{RUN_ID}"],
                                              "no_default_policy": True, "ttl": "10m"})["auth"]["client_token"]
    conn["spec"]["destination"]["azureBlob"]["credentials"] = {"secretRef": {"name": "bronze-writer"}}
    path, d = local_copy(cluster, conn)
    env = {**os.environ, "VAULT_ADDR": os.environ["FERRY_BAO_ADDR"], "VAULT_TOKEN": token}
    kms = f"vault-transit:{transit}/sales"
    verified = subprocess.run([str(RUNNER), "verify", "--kms", kms, "--connector", str(path),
                               "--secrets-dir", str(d / "secrets"), "--deep"], capture_output=True, text=True, env=env)
    assert verified.returncode == 0, verified.stderr
    decrypted = subprocess.run([str(RUNNER), "decrypt", "--kms", kms, "--connector", str(path),
                                "--secrets-dir", str(d / "secrets"), "--out", str(d / "plain")],
                               capture_output=True, text=True, env=env)
    assert decrypted.returncode == 0, decrypted.stderr
    assert (d / "plain/orders/2026-11-01.csv").read_bytes() == b"order,amount\n7,12.50\n8,3.10\n"
    without = subprocess.run([str(RUNNER), "decrypt", "--kek", str(d / "kek"), "--connector", str(path),
                              "--secrets-dir", str(d / "secrets"), "--out", str(d / "stolen")],
                             capture_output=True, text=True)
    assert without.returncode != 0 and "no KMS was given" in without.stderr, without.stderr


def test_the_operator_and_the_runs_were_never_refused_by_the_api_server(cluster: Cluster):
    """Every request the operator and the runs' pods made in the scenarios
    above was within their RBAC and admission rules: a refusal is a right the
    chart or the operator's Role forgot, or an object the admission policies
    do not admit. (The attack tests' requests with those tokens, made by the
    test itself, are set apart by their user agent.)"""
    events = cluster.audit()
    assert events, "the API server's audit log is empty"
    ours = [e for e in events if e["stage"] == "ResponseComplete"
            and (e["user"]["username"] == OPERATOR_USER
                 or e["user"]["username"].startswith("system:serviceaccount:") and ":ferry-run-" in e["user"]["username"])
            and not e.get("userAgent", "").startswith("Python-urllib")]
    assert any(e["user"]["username"] == OPERATOR_USER for e in ours), "no request of the operator was audited"
    assert any(":ferry-run-" in e["user"]["username"] for e in ours), "no request of a run was audited"
    # A tenant namespace that was deleted (the schedule scenario deletes its
    # own) takes the operator's RoleBinding with it before the operator has
    # let go of it: refusals there are the namespace going, not a missing right.
    gone = {ns for ns in {(e.get("objectRef") or {}).get("namespace") for e in ours} - {None}
            if (cluster.get(f"/api/v1/namespaces/{ns}") or {"metadata": {"deletionTimestamp": "gone"}})
            ["metadata"].get("deletionTimestamp")}
    assert gone <= {"scheduled"}, gone
    refused = [(e["user"]["username"], e["verb"], e["requestURI"], e["responseStatus"].get("message", "")[:300])
               for e in ours if e["responseStatus"]["code"] == 403
               and (e.get("objectRef") or {}).get("namespace") not in gone]
    assert not refused, json.dumps(refused, indent=1)

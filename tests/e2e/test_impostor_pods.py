"""A tenant's editor passes a pod of their own off as a run's attempt, on the
real API server with the chart installed.

The editor (the `edit` role of the namespace) can read a run's UID, delete
its pod and create pods; the chart's run-identity policy keeps Ferry's labels
and the run's ServiceAccount from their pods, but not the attempt's name, nor
an owner reference to the run. The operator records the UID of each pod it
creates and judges that pod alone: a pod standing under the attempt's name
with another UID is deleted, the attempt failed and retried with a pod of the
operator's, and the tampering said (Warning Event) and audited."""

from __future__ import annotations

import json
import os

from cluster import EDITOR, Cluster, wait_for
from test_e2e import RUN, RUN_ID, azure, data, example, manual_run, wait_phase

NS = "impostors"
PODS = f"/api/v1/namespaces/{NS}/pods"


def operators(cluster: Cluster) -> list[str]:
    """The operator processes running (an earlier scenario may have handed
    the lease from one to another)."""
    return [n for n, p in cluster.procs.items() if n.startswith("operator") and p.poll() is None]


def impostor(run: dict, name: str) -> dict:
    """The editor's pod, under the attempt's name, owned (as it claims) by the
    run: the runner's executable, which exits 0 at once (`--version`)."""
    owner = {"apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun", "name": run["metadata"]["name"],
             "uid": run["metadata"]["uid"], "controller": True}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "ownerReferences": [owner],
                         "labels": {"ferry.dev/run": run["metadata"]["name"]}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "runner", "image": "registry.example/not-ferry:1",
                                     "command": ["/job-runner"], "args": ["--version"],
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}]}}


def test_a_tenant_editors_pod_is_never_taken_for_a_runs_attempt(cluster: Cluster):
    """Attack: while the operator is away (a restart, a slow watch), the
    editor deletes the run's pod and creates their own under its name, owned
    by the run, which runs another image and exits 0 after the real runner
    reported its result. The operator once judged the pod by its name and
    took its exit for the attempt's: the run ended Succeeded on the
    impostor's word. Now the impostor is deleted, the attempt fails as
    ForeignPod, and the next attempt (the control: the operator's own pod) is
    admitted and ends the run."""
    if not operators(cluster):
        cluster.start_operator("operator-a")
    cluster.namespace(NS, labels={"ferry.dev/region": "eu-west-1"},
                      annotations={"ferry.dev/allowed-sensitivity": "pii"})
    bucket, container = f"impostors-exports-{RUN_ID}", f"impostors-bronze-{RUN_ID}"
    # Large enough that the operator is stopped while the attempt runs.
    data(bucket, {"daily/orders/big.csv": os.urandom(48 << 20)})
    azure().create_container(container)
    example(cluster, NS, bucket, container)
    name = manual_run(cluster, NS)
    pod = f"{name}-1"

    def run_status() -> dict:
        return (cluster.get(f"{RUN.format(ns=NS)}/{name}") or {}).get("status") or {}

    wait_for("the operator to record the attempt's pod", lambda: run_status().get("podUid"), 90,
             every=0.05, context=cluster.logs)
    recorded = run_status()["podUid"]
    for name_ in operators(cluster):
        cluster.kill(name_)
    try:
        # The runner finishes and reports; then the editor swaps the pod.
        wait_for("the run's pod to end", lambda: ((cluster.get(f"{PODS}/{pod}") or {}).get("status") or {})
                 .get("phase") in ("Succeeded", "Failed"), 120,
                 context=lambda: json.dumps(cluster.get(f"{PODS}/{pod}"), indent=1)[-3000:]
                 + cluster.log("kubelet", 80))
        cluster.kubectl("delete", "pod", pod, "-n", NS, "--wait=true", user=EDITOR)
        run = cluster.get(f"{RUN.format(ns=NS)}/{name}")
        status, answer = cluster.request("POST", PODS, impostor(run, pod), user=EDITOR)
        assert status == 201, answer
        forged = answer["metadata"]["uid"]
        assert forged != recorded
        wait_for("the impostor to exit 0", lambda: ((cluster.get(f"{PODS}/{pod}") or {}).get("status") or {})
                 .get("phase") == "Succeeded", 60, context=cluster.logs)
    finally:
        cluster.start_operator("operator-a")
    run = wait_phase(cluster, NS, name, ("Succeeded", "Failed"), 240)
    st = run["status"]
    assert st["phase"] == "Succeeded", json.dumps(st, indent=1)
    # The impostor's exit did not end the run: the operator's second attempt did.
    assert st["attempts"] == 2, json.dumps(st, indent=1)
    assert st["podName"] == f"{name}-2" and st["podUid"] not in (recorded, forged)
    gone = cluster.get(f"{PODS}/{pod}")
    assert not gone or gone["metadata"]["uid"] != forged or gone["metadata"].get("deletionTimestamp"), \
        "the impostor was left standing"
    events = cluster.items(f"/apis/events.k8s.io/v1/namespaces/{NS}/events")
    said = [e for e in events if e.get("reason") == "ForeignPod"
            and (e.get("regarding") or {}).get("name") == name]
    assert said and all(e.get("type") == "Warning" for e in said), json.dumps(events, indent=1)[:4000]

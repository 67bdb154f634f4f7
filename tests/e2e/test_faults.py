"""Ferry end to end when the API misbehaves: the operator talks to the API server
through a fault-injecting proxy (tests/faults/proxy.py) that fails chosen
requests, or is killed at a step of a run and started again. Each scenario ends
with the invariants a run must keep whatever happened: one terminal phase, a
succeeded run never started again, each object once and one manifest at the
destination, each run counted and audited once, nothing of the run left behind."""

from __future__ import annotations

import json
import pathlib
import tempfile

import pytest
from cluster import Cluster, metric, wait_for
from test_e2e import CONN, RUN, RUN_ID, S3, AZURITE, azure, blobs, data, example, manual_run, tenant, wait_phase

# The namespaces of the scenarios below: each runs in a cluster of its own,
# whose chart names them all as tenants.
FAULT_TENANTS = ["faults-final", "faults-random", "faults-kill"]
RUN_OBJECTS = [
    "/api/v1/namespaces/{ns}/pods", "/api/v1/namespaces/{ns}/serviceaccounts",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
]


@pytest.fixture()
def faulty():
    """A cluster whose operator reaches the API through a fault proxy."""
    assert S3 and AZURITE, "the test services are not running: source ~/.cache/ferry/services/env"
    with tempfile.TemporaryDirectory(prefix="ferry-e2e-faults-") as tmp:
        c = Cluster(pathlib.Path(tmp), tenants=FAULT_TENANTS)
        try:
            c.proxy = c.start_proxy("proxy", seed=20261204)
            yield c
        finally:
            c.stop()


def audit_lines(c: Cluster) -> list[dict]:
    lines = []
    for path in c.dir.glob("*.audit"):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def assert_run_kept_its_invariants(c: Cluster, ns: str, name: str, container: str) -> None:
    run = wait_phase(c, ns, name, ("Succeeded", "Failed", "Rejected"), 240)
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1) + c.logs()
    attempts = {p["metadata"]["labels"].get("ferry.dev/attempt") for p in c.watch_pods()
                if p["metadata"]["labels"].get("ferry.dev/run") == name}
    assert attempts == {"1"}, f"a succeeded run was started again: attempts {attempts}\n{c.logs()}"
    there = blobs(container)
    manifests = [k for k in there if k.startswith("sales/.ferry/manifests/")]
    assert len(manifests) == 1, manifests
    copied = sorted(k for k in there if not k.startswith("sales/.ferry/"))
    assert copied == ["sales/customers/2026-11-01.csv", "sales/orders/2026-11-01.csv"], there
    mine = [line for line in audit_lines(c) if line.get("run") == name]
    for action in ("run.started", "run.finished"):
        assert len([line for line in mine if line["action"] == action]) == 1, (action, mine)
    wait_for("the run's objects to go", lambda: not any(
        i["metadata"].get("labels", {}).get("ferry.dev/run") == name
        for p in RUN_OBJECTS for i in c.items(p.format(ns=ns))), 60, context=c.logs)
    def connector_caught_up():
        status = c.get(f"{CONN.format(ns=ns)}/sales-exports").get("status") or {}
        last = status.get("lastRun") or {}
        return last.get("name") == name and last.get("phase") == "Succeeded" and status.get("cursor")

    wait_for("the Connector's status to show the run and its cursor", connector_caught_up, 90,
             context=lambda: json.dumps(c.get(f"{CONN.format(ns=ns)}/sales-exports").get("status")))


def prepare(c: Cluster, ns: str) -> str:
    bucket, container = f"{ns}-exports-{RUN_ID}", f"{ns}-bronze-{RUN_ID}"
    tenant(c, ns)
    data(bucket)
    azure().create_container(container)
    example(c, ns, bucket, container)
    return container


def test_a_run_whose_final_writes_fail_is_finished_once(faulty: Cluster):
    """The operator's writes of a finished run's record and status fail (500):
    the next reconcile must not take the cleaned-up pod for a lost one."""
    c, ns = faulty, "faults-final"
    c.start_operator("operator", server=c.proxy)
    container = prepare(c, ns)
    runs = rf"/namespaces/{ns}/connectorruns/[^/?]+"
    c.faults(c.proxy, [
        {"method": "PATCH", "path": runs + r"(\?|$)", "body": "Succeeded", "action": 500, "times": 1},
        {"method": "PATCH", "path": runs + r"/status", "body": "Succeeded", "action": 503, "times": 1},
    ])
    name = manual_run(c, ns)
    assert_run_kept_its_invariants(c, ns, name, container)
    fired = c.faults(c.proxy)
    assert [f["fired"] for f in fired] == [1, 1], fired
    text = c.scrape("operator")
    assert metric(text, "ferry_runs_total", namespace=ns, result="succeeded") == 1, text


def test_a_run_survives_random_api_faults(faulty: Cluster):
    """About one in fourteen of the operator's requests fails at random
    (seeded): 500, 503, 429, 409 on writes, a reset connection, a slow answer;
    one watch in ten is cut short. A reconcile makes a dozen requests, so about
    four in ten fail somewhere and are retried.
    Leases are left alone (an operator that cannot renew its Lease steps down
    and exits, which the kill scenario covers)."""
    c, ns = faulty, "faults-random"
    c.start_operator("operator", server=c.proxy)
    container = prepare(c, ns)
    anything = r"^/(api|apis)/(?!coordination)"
    c.faults(c.proxy, [
        {"path": anything, "action": 500, "probability": 0.015},
        {"path": anything, "action": 503, "probability": 0.01},
        {"path": anything, "action": 429, "probability": 0.01},
        {"method": "PATCH", "path": anything, "action": 409, "probability": 0.015},
        {"method": "POST", "path": anything, "action": 409, "probability": 0.015},
        {"path": anything, "action": "reset", "probability": 0.01},
        {"path": anything, "action": "slow", "seconds": 1.5, "probability": 0.01},
        {"path": r"watch=(1|true)", "action": "cut", "probability": 0.1},
    ])
    name = manual_run(c, ns)
    assert_run_kept_its_invariants(c, ns, name, container)
    assert sum(f["fired"] for f in c.faults(c.proxy)) > 0, "no fault was injected"
    c.faults(c.proxy, [])
    text = c.scrape("operator")
    assert metric(text, "ferry_runs_total", namespace=ns, result="succeeded") == 1, text


def test_the_operator_killed_at_each_step_of_a_run_finishes_it_once(faulty: Cluster):
    """The operator is killed as it is about to: create the run's pod (after
    pinning the spec), record the attempt (after the pod exists), and record the
    success (after the runner finished, before any status says so). Each time
    it is started again; the run still ends once, from one attempt."""
    c, ns = faulty, "faults-kill"
    pidfile = str(c.dir / "operator.pid")
    runs = rf"/namespaces/{ns}/connectorruns/[^/?]+(\?|$)"
    steps = [
        {"method": "POST", "path": rf"/namespaces/{ns}/pods", "action": "kill", "pidfile": pidfile, "times": 1},
        {"method": "PATCH", "path": runs, "body": r"podName", "action": "kill", "pidfile": pidfile, "times": 1},
        {"method": "PATCH", "path": runs, "body": "Succeeded", "action": "kill", "pidfile": pidfile, "times": 1},
    ]
    container = prepare(c, ns)
    name = None
    for n, step in enumerate(steps, start=1):
        # One step armed at a time: the replica started after a kill dies at the next one.
        c.faults(c.proxy, [step])
        c.start_operator("operator", server=c.proxy, wait=False)
        if name is None:
            name = manual_run(c, ns)
        wait_for(f"the operator to be killed at step {n}",
                 lambda: c.procs["operator"].poll() is not None, 120, context=c.logs)
        assert c.faults(c.proxy)[0]["fired"] == 1
    c.faults(c.proxy, [])
    c.start_operator("operator", server=c.proxy)
    assert_run_kept_its_invariants(c, ns, name, container)

"""Attacks on the API server's rules, played on the real API server with the
chart installed: a hijacked operator (its ServiceAccount's token), a tenant's
editor (`edit` in the tenant's namespace) and code in a run's pod (the run's
own projected token). Each attack is refused by the API server (RBAC, the
chart's admission policies, the CRD's status subresource), and each has a
control: the legitimate request, made the same way, admitted.

The run's objects are taken from a real run of the `attacks` tenant, whose
namespace the platform has not labelled for Pod Security (so that the
operator's admission policy alone judges its pods), and replayed as the
operator with one thing changed; replays are dry runs (`dryRun=All`), which
pass through authorization and admission as a real write does."""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import signal
import time

import pytest
from cluster import EDITOR, OPERATOR_USER, TENANT_ADMIN, Cluster, wait_for
from test_e2e import RUN, RUN_ID, azure, data, example, manual_run, wait_phase

NS = "attacks"
POLICY = "ferry-operator-run-objects"
ATTRIBUTION = "ferry-operator-attribution"
IDENTITY = "ferry-operator-run-identity"
RIGHTS = "ferry-operator-run-rights"
PRIORITY = "e2e-above-everyone"
PATHS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
}


def clean(obj: dict) -> dict:
    """An object as its creator sent it: without what the API server added."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    for field in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation",
                  "deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(field, None)
    obj.pop("status", None)
    if obj["kind"] == "Pod":
        obj["spec"].pop("nodeName", None)
    return obj


@pytest.fixture(scope="module")
def captured(cluster: Cluster) -> dict:
    """A run of the `attacks` tenant, caught while its pod runs: the run, the
    objects the operator made for it, and its pod's API token."""
    cluster.namespace(NS, labels={"ferry.dev/region": "eu-west-1"},
                      annotations={"ferry.dev/allowed-sensitivity": "pii"}, pod_security=None)
    # A priority class that exists (the API server refuses unknown ones itself).
    cluster.apply_text(json.dumps({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                                   "metadata": {"name": PRIORITY}, "value": 1000000}))
    bucket, container = f"attacks-exports-{RUN_ID}", f"attacks-bronze-{RUN_ID}"
    data(bucket, {"daily/orders/big.csv": os.urandom(160 << 20)})
    azure().create_container(container)
    example(cluster, NS, bucket, container)
    name = manual_run(cluster, NS)
    pod = f"{name}-1"
    token_file = cluster.dir / "node/volumes" / f"{NS}_{pod}" / "kube-api-access" / "token"

    def running() -> bool:
        p = cluster.get(f"{PATHS['Pod'].format(ns=NS)}/{pod}")
        return bool(p and (p.get("status") or {}).get("phase") == "Running" and token_file.exists())

    wait_for("the run's pod to run", running, 90, every=0.1, context=cluster.logs)
    objects = {kind: clean(cluster.get(f"{path.format(ns=NS)}/{pod if kind == 'Pod' else 'ferry-run-' + name}"))
               for kind, path in PATHS.items()}
    run = cluster.get(f"{RUN.format(ns=NS)}/{name}")
    return {"name": name, "run": run, "objects": objects, "token": token_file.read_text()}


@pytest.fixture(scope="module")
def finished(cluster: Cluster, captured: dict):
    """The captured run, ended and cleaned up (its objects' names are free
    again), then its ServiceAccount made again by the operator, as for a run
    in flight: the pods replayed below run as it, and a tenant tries to pass
    for it. Deleted at the end."""
    name = captured["name"]
    run = wait_phase(cluster, NS, name, ("Succeeded", "Failed"), 240)
    assert run["status"]["phase"] == "Succeeded", json.dumps(run["status"], indent=1) + cluster.logs()
    wait_for("the run's objects to go", lambda: not any(
        i["metadata"].get("labels", {}).get("ferry.dev/run") == name
        for p in PATHS.values() for i in cluster.items(p.format(ns=NS))), 60)
    # The operator would clean up what it finds of a finished run: it is
    # stopped while the run's objects stand again.
    cluster.kill("operator-a", signal.SIGTERM)
    made = []
    for kind in ("ServiceAccount", "Role"):
        status, answer = as_operator(cluster, "POST", kind, captured["objects"][kind], dry_run=False)
        assert status == 201, (kind, status, answer)
        made.append(kind)
    yield captured
    for kind in made:
        as_operator(cluster, "DELETE", kind, name=captured["objects"][kind]["metadata"]["name"], dry_run=False)
    operator_running(cluster)


def operator_running(cluster: Cluster) -> None:
    if cluster.procs["operator-a"].poll() is not None:
        cluster.start_operator("operator-a")


def as_operator(cluster: Cluster, method: str, kind: str, obj: dict | None = None, name: str = "",
                dry_run: bool = True) -> tuple[int, str]:
    token = getattr(cluster, "_attack_operator_token", None) or cluster.operator_token()
    cluster._attack_operator_token = token
    path = PATHS[kind].format(ns=NS) + (f"/{name}" if name else "")
    if dry_run:
        path += "?dryRun=All"
    status, answer = cluster.request(method, path, obj, token=token)
    return status, json.dumps(answer)


def refused_by(status: int, answer: str, rule: str) -> bool:
    return status == 403 and rule in answer


# -- code in a run's pod: the run's own token --

def test_a_runs_token_cannot_rewrite_its_runs_metadata_through_status(cluster: Cluster, captured: dict):
    """Attack: code in the run's pod patches its run through the status
    subresource (the one write its Role grants) with metadata: the operator's
    record, the attribution, the finalizer, the labels. The API server keeps
    everything but the status of such a write."""
    name, token = captured["name"], captured["token"]
    path = f"{RUN.format(ns=NS)}/{name}"
    before = cluster.get(path)["metadata"]
    forged = {"metadata": {"annotations": {"ferry.dev/run-record": '{"phase":"Succeeded"}',
                                           "ferry.dev/created-by": OPERATOR_USER},
                           "labels": {"forged": "yes"}, "finalizers": None},
              "spec": {"connectorRef": {"name": "another"}}}
    status, answer = cluster.request("PATCH", f"{path}/status", forged, "application/merge-patch+json",
                                     token=token)
    after = cluster.get(path)
    for field in ("annotations", "labels", "finalizers"):
        assert after["metadata"].get(field) == before.get(field), (status, field, after["metadata"])
    assert after["spec"]["connectorRef"]["name"] == "sales-exports", after["spec"]
    # Nor through the run itself: the Role grants patch on its status alone.
    status, answer = cluster.request("PATCH", path, forged, "application/merge-patch+json", token=token)
    assert status == 403, (status, answer)
    # Control: the run's own status write is admitted.
    status, answer = cluster.request("PATCH", f"{path}/status?dryRun=All",
                                     {"status": {"progress": {"objects": 1, "bytes": 1}}},
                                     "application/merge-patch+json", token=token)
    assert status == 200, (status, answer)


def test_a_runs_token_reads_only_the_secrets_its_run_needs(cluster: Cluster, captured: dict):
    """Attack: the run's token lists the namespace's Secrets and reads one its
    run does not name. Control: it reads a Secret its run names."""
    token = captured["token"]
    cluster.apply_text(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "unrelated", "namespace": NS, "labels": {"ferry.dev/usable": "true"}},
        "stringData": {"password": "not-for-runs"}}), user=EDITOR)
    assert cluster.request("GET", f"/api/v1/namespaces/{NS}/secrets", token=token)[0] == 403
    assert cluster.request("GET", f"/api/v1/namespaces/{NS}/secrets/unrelated", token=token)[0] == 403
    assert cluster.request("GET", f"/api/v1/namespaces/{NS}/secrets/s3-reader", token=token)[0] == 200


# -- a hijacked operator: its ServiceAccount's token --

def test_the_operator_may_create_each_object_of_a_run_as_it_made_it(cluster: Cluster, finished: dict):
    """The control of the attacks below: every object the operator made for
    the run, sent again as the operator, is admitted (the ServiceAccount and
    the Role were, for real, by the fixture)."""
    for kind, obj in finished["objects"].items():
        if kind in ("ServiceAccount", "Role"):
            continue
        status, answer = as_operator(cluster, "POST", kind, obj)
        assert status == 201, (kind, status, answer)


def pod_with(finished: dict, change) -> dict:
    pod = copy.deepcopy(finished["objects"]["Pod"])
    change(pod["spec"])
    return pod


@pytest.mark.parametrize("attack", ["another-image", "host-path", "env-from-secret", "another-service-account",
                                    "automounted-token", "another-command", "a-priority-class",
                                    "unconfined-apparmor", "a-toleration-of-every-taint", "a-control-plane-node"])
def test_a_hijacked_operator_cannot_create_a_pod_unlike_a_runs(cluster: Cluster, finished: dict, attack: str):
    container = lambda spec: spec["containers"][0]  # noqa: E731
    changes = {
        "another-image": lambda spec: container(spec).update(image="registry.example/miner:latest"),
        "host-path": lambda spec: (spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
                                   container(spec)["volumeMounts"].append({"name": "host", "mountPath": "/host"})),
        "env-from-secret": lambda spec: container(spec).setdefault("env", []).append(
            {"name": "STOLEN", "valueFrom": {"secretKeyRef": {"name": "unrelated", "key": "password"}}}),
        "another-service-account": lambda spec: spec.update(serviceAccountName="default"),
        "automounted-token": lambda spec: spec.update(automountServiceAccountToken=True),
        "another-command": lambda spec: container(spec).update(command=["/bin/sh", "-c", "env"]),
        # (`priority` is the Priority plugin's to fill from the class.)
        "a-priority-class": lambda spec: (spec.pop("priority", None), spec.update(priorityClassName=PRIORITY)),
        "unconfined-apparmor": lambda spec: container(spec)["securityContext"].update(
            appArmorProfile={"type": "Unconfined"}),
        "a-toleration-of-every-taint": lambda spec: spec.setdefault("tolerations", []).append({"operator": "Exists"}),
        "a-control-plane-node": lambda spec: spec.update(
            nodeSelector={"node-role.kubernetes.io/control-plane": ""}),
    }
    pod = pod_with(finished, changes[attack])
    status, answer = as_operator(cluster, "POST", "Pod", pod)
    assert refused_by(status, answer, POLICY), (attack, status, answer)


def test_a_hijacked_operator_cannot_grant_a_run_more_than_named_secrets(cluster: Cluster, finished: dict):
    """Attack: a Role that reads every Secret of the namespace (which the
    operator itself may, so RBAC's escalation check lets it through)."""
    own = finished["objects"]["Role"]
    # The run's Role stands again (see `finished`): out of the way meanwhile.
    assert as_operator(cluster, "DELETE", "Role", name=own["metadata"]["name"], dry_run=False)[0] == 200
    try:
        role = copy.deepcopy(own)
        role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
        status, answer = as_operator(cluster, "POST", "Role", role)
        assert refused_by(status, answer, POLICY), (status, answer)
        # Nor a verb it does not hold: RBAC refuses the escalation itself.
        role = copy.deepcopy(own)
        role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]})
        status, answer = as_operator(cluster, "POST", "Role", role)
        assert status == 403 and "not currently held" in answer, (status, answer)
        # Control: the Role as the operator made it.
        status, answer = as_operator(cluster, "POST", "Role", own)
        assert status == 201, (status, answer)
    finally:
        assert as_operator(cluster, "POST", "Role", own, dry_run=False)[0] == 201


def test_a_hijacked_operator_cannot_bind_a_runs_role_to_another_subject(cluster: Cluster, finished: dict):
    binding = copy.deepcopy(finished["objects"]["RoleBinding"])
    binding["subjects"] = [{"kind": "ServiceAccount", "name": "default", "namespace": NS}]
    status, answer = as_operator(cluster, "POST", "RoleBinding", binding)
    assert refused_by(status, answer, POLICY), (status, answer)
    binding["subjects"] = [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}]
    status, answer = as_operator(cluster, "POST", "RoleBinding", binding)
    assert refused_by(status, answer, POLICY), (status, answer)


def test_a_hijacked_operator_cannot_delete_a_tenants_own_network_policy(cluster: Cluster, finished: dict):
    """Attack: the operator deletes the tenant's own NetworkPolicy (a default
    deny). Control: it deletes a run's NetworkPolicy it created."""
    cluster.apply_text(json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": "default-deny", "namespace": NS},
                                   "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}), user=EDITOR)
    status, answer = as_operator(cluster, "DELETE", "NetworkPolicy", name="default-deny")
    assert refused_by(status, answer, POLICY), (status, answer)
    assert cluster.get(f"{PATHS['NetworkPolicy'].format(ns=NS)}/default-deny") is not None
    policy = finished["objects"]["NetworkPolicy"]
    status, answer = as_operator(cluster, "POST", "NetworkPolicy", policy, dry_run=False)
    assert status == 201, (status, answer)
    status, answer = as_operator(cluster, "DELETE", "NetworkPolicy", name=policy["metadata"]["name"], dry_run=False)
    assert status == 200, (status, answer)


# -- a tenant's editor --

def test_a_tenant_editor_cannot_rewrite_the_operators_record_of_a_run(cluster: Cluster, finished: dict):
    name = finished["name"]
    out = cluster.kubectl("annotate", "connectorrun", name, "-n", NS, "--overwrite",
                          'ferry.dev/run-record={"phase":"Pending"}', user=EDITOR, check=False)
    assert out.returncode != 0 and RIGHTS in out.stderr and "run-record" in out.stderr, out.stderr
    # Control: an annotation of the editor's own is admitted.
    cluster.kubectl("annotate", "connectorrun", name, "-n", NS, "--overwrite", "example.com/ticket=OPS-1",
                    user=EDITOR)


def test_a_tenant_editor_cannot_forge_who_asked_for_a_run(cluster: Cluster, finished: dict):
    """Attack: the editor creates a run in someone else's name, and rewrites
    the name on an existing run. The first is attributed to the editor (the
    MutatingAdmissionPolicy writes the name the API server authenticated), the
    second is refused."""
    out = cluster.kubectl("create", "-o", "json", "-f", "-", user=EDITOR, stdin=json.dumps({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
        "metadata": {"generateName": "forged-", "namespace": NS,
                     "annotations": {"ferry.dev/created-by": "the-ceo@example.com"}},
        "spec": {"connectorRef": {"name": "sales-exports"}, "mode": "plan"}}))
    created = json.loads(out.stdout)
    assert created["metadata"]["annotations"]["ferry.dev/created-by"] == EDITOR, created["metadata"]
    out = cluster.kubectl("annotate", "connectorrun", finished["name"], "-n", NS, "--overwrite",
                          "ferry.dev/created-by=the-ceo@example.com", user=EDITOR, check=False)
    assert out.returncode != 0 and ATTRIBUTION in out.stderr and "created-by" in out.stderr, out.stderr
    assert cluster.get(f"{RUN.format(ns=NS)}/{finished['name']}")["metadata"]["annotations"][
        "ferry.dev/created-by"] == EDITOR


def test_the_chart_policies_type_check_on_the_api_server(cluster: Cluster):
    """The API server type-checks each ValidatingAdmissionPolicy against every
    kind it matches. The chart's policies match several kinds each, so an
    expression about pods reads fields a Role does not have ("undefined
    field" for the kinds it is guarded against); any other error (a wrong
    type, an unknown function, a misspelt variable) fails here."""
    deadline = time.monotonic() + 60
    for name in (POLICY, ATTRIBUTION, IDENTITY, RIGHTS):
        while True:
            policy = cluster.get(f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{name}")
            checked = (policy.get("status") or {}).get("typeChecking")
            if checked is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert checked is not None, f"{name} was not type-checked"
        errors = [line for w in checked.get("expressionWarnings") or [] for line in w["warning"].splitlines()
                  if "ERROR:" in line]
        other = [e for e in errors if "undefined field" not in e]
        assert not other, f"{name}: {other}"


# -- where a run may connect --

def lets_through(policy: dict, address: str, port: int) -> bool:
    """Whether the NetworkPolicy `policy` lets its pods open a TCP connection
    to `address`:`port` outside the cluster's pods (NetworkPolicy's rules and
    peers are ORed; an ipBlock lets through its CIDR but its exceptions; a
    rule with no peers lets through every address, one with no ports every
    port). Namespace and pod selectors match pods, not such addresses."""
    ip = ipaddress.ip_address(address)
    for rule in policy["spec"].get("egress") or []:
        ports = rule.get("ports")
        if ports and not any(p.get("protocol", "TCP") == "TCP" and p.get("port") == port for p in ports):
            continue
        peers = rule.get("to")
        if not peers:
            return True
        for peer in peers:
            block = peer.get("ipBlock")
            if not block:
                continue
            cidr = ipaddress.ip_network(block["cidr"])
            if ip.version == cidr.version and ip in cidr and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except") or []
                    if ipaddress.ip_network(e).version == ip.version):
                return True
    return False


def test_a_run_cannot_reach_metadata_or_cluster_addresses_under_the_default_chart(cluster: Cluster, captured: dict):
    """Attack: a Connector names the cloud metadata service, a service or pod
    of the cluster, or a node, on one of the ports its run may use (the
    API server's, its endpoints'). Under the default chart (no network
    setting at all) a run's NetworkPolicy, as the real API server keeps it,
    lets none of it through: private, CGNAT, link-local, ULA and metadata
    addresses are closed, and the API server's ports are open at the API
    server's own address (read from the `kubernetes` EndpointSlice) only."""
    policy = captured["objects"]["NetworkPolicy"]
    slices = cluster.items("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                           "?labelSelector=kubernetes.io/service-name%3Dkubernetes")
    api_server = [a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]]
    assert api_server, "the kubernetes Service has no EndpointSlice"
    api_ports = (443, 6443)
    endpoint_ports = (5000, 10000)  # moto's and Azurite's, the run's endpoints
    for address in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "10.96.0.1", "10.244.1.7",
                    "172.17.0.1", "192.168.1.1", "100.64.0.1", "fd12::1"):
        for port in api_ports + endpoint_ports:
            assert not lets_through(policy, address, port), (address, port, policy["spec"]["egress"])
    # Control: the API server where it is, and the endpoints' ports on any
    # public address (loopback included, a pod's own), are let through.
    for address in api_server:
        assert lets_through(policy, address, 6443) or lets_through(policy, address, 443), address
    for address in ("52.95.110.1", "2600:1f18::1", "127.0.0.1"):
        for port in endpoint_ports:
            assert lets_through(policy, address, port), (address, port)
    assert not lets_through(policy, "52.95.110.1", 22), "a port no endpoint uses"
    assert not any(lets_through(policy, "198.51.100.7", port) for port in api_ports), \
        "the API server's ports elsewhere than at the API server"


# -- a tenant passing for a run --
#
# The platform's Vault role, KMS and cloud trust policies trust the tokens of
# ServiceAccounts named ferry-run-* (docs/security.md). Inside the tenant's
# namespace only the operator may make, wear or get tokens for such an identity.

@pytest.fixture(scope="module")
def run_account(finished: dict) -> str:
    """The run's ServiceAccount, there again (see `finished`)."""
    return finished["objects"]["ServiceAccount"]["metadata"]["name"]


def tenant_pod(name: str, account: str, labels: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "spec": {"serviceAccountName": account, "restartPolicy": "Never",
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "app", "image": "registry.example/app:1", "securityContext": {
                         "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
                     "volumes": [{"name": "vault", "projected": {"sources": [{"serviceAccountToken": {
                         "audience": "vault", "path": "token", "expirationSeconds": 3600}}]}}]}}


def as_tenant(cluster: Cluster, user: str, path: str, body: dict) -> tuple[int, str]:
    url = path if path.startswith("/") else f"/api/v1/namespaces/{NS}/{path}"
    status, answer = cluster.request("POST", f"{url}?dryRun=All", body, user=user)
    return status, json.dumps(answer)


RBAC = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}"
MANAGED = {"app.kubernetes.io/managed-by": "ferry"}
TOKEN_FOR_VAULT = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": ["vault"], "expirationSeconds": 3600}}


def attacks(account: str) -> dict:
    """What a tenant would send to pass for a run: (user, path, body)."""
    return {
        "a ServiceAccount named as a run's": (EDITOR, "serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ferry-run-evil"}}),
        "a ServiceAccount labelled as Ferry's": (EDITOR, "serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "helper", "labels": MANAGED}}),
        "a pod running as a live run's ServiceAccount": (EDITOR, "pods", tenant_pod("sneaky", account)),
        "a pod labelled as a run's": (EDITOR, "pods", tenant_pod("sneaky", "default", MANAGED)),
        "a token of a live run's ServiceAccount for Vault": (EDITOR, f"serviceaccounts/{account}/token",
                                                              TOKEN_FOR_VAULT),
        "a Role named as a run's": (TENANT_ADMIN, f"{RBAC}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "ferry-run-evil"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        "a RoleBinding that widens a run's ServiceAccount": (TENANT_ADMIN, f"{RBAC}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "more"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NS}]}),
    }


@pytest.mark.parametrize("attack", list(attacks("x")))
def test_a_tenant_cannot_pass_for_a_run(cluster: Cluster, run_account: str, attack: str):
    user, path, body = attacks(run_account)[attack]
    status, answer = as_tenant(cluster, user, path, body)
    assert refused_by(status, answer, IDENTITY), (attack, status, answer)


def test_a_tenant_still_runs_its_own_workloads(cluster: Cluster, run_account: str):
    """The control: the same requests for the tenant's own identity are admitted."""
    cluster.apply_text(json.dumps({"apiVersion": "v1", "kind": "ServiceAccount",
                                   "metadata": {"name": "app", "namespace": NS}}), user=EDITOR)
    allowed = {
        "a ServiceAccount": (EDITOR, "serviceaccounts", {
            "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app-2"}}),
        "a pod with a projected token for Vault": (EDITOR, "pods", tenant_pod("app", "app")),
        "a token for Vault": (EDITOR, "serviceaccounts/app/token", TOKEN_FOR_VAULT),
        "a Role": (TENANT_ADMIN, f"{RBAC}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "app-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        "a RoleBinding": (TENANT_ADMIN, f"{RBAC}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "app"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": NS}]}),
    }
    for what, (user, path, body) in allowed.items():
        status, answer = as_tenant(cluster, user, path, body)
        assert status == 201, (what, status, answer)


# -- erasure is a right of its own --

def erase_run(connector: str) -> str:
    return json.dumps({"apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
                       "metadata": {"generateName": "erase-", "namespace": NS},
                       "spec": {"connectorRef": {"name": connector}, "mode": "erase",
                                "erase": {"keys": ["customers/2026-11-01.csv"]}}})


def test_a_tenant_editor_cannot_erase_without_the_erase_right(cluster: Cluster, finished: dict):
    """Attack: the editor (who may create runs) creates an erase run, which
    deletes data at the destination. Control: the tenant's admin, whom
    `ferry-admin` grants the verb `erase` on Connectors, creates it."""
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=erase_run("sales-exports"), user=EDITOR,
                          check=False)
    assert out.returncode != 0 and RIGHTS in out.stderr and "needs the verb erase" in out.stderr, out.stderr
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=erase_run("sales-exports"),
                          user=TENANT_ADMIN, check=False)
    assert out.returncode == 0, out.stderr
    # A copy is still the editor's to ask for.
    out = cluster.kubectl("create", "--dry-run=server", "-f", "-", user=EDITOR, check=False,
                          stdin=erase_run("sales-exports").replace('"erase"', '"sync"', 1).replace(
                              ', "erase": {"keys": ["customers/2026-11-01.csv"]}', ""))
    assert out.returncode == 0, out.stderr


def test_the_run_record_and_finalizer_are_guarded_without_attribution(tmp_path):
    """Attack: on a cluster whose chart turns attribution off, an editor seeds
    a run with a forged record, and strips a run's audit finalizer. Both
    refused all the same (run-rights, not the attribution policy). Controls:
    a plain run, an annotation of the editor's own."""
    ns = "no-attribution"
    c = Cluster(tmp_path, tenants=[ns], values={"attribution": {"enabled": False}})
    try:
        assert c.get("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/ferry-operator-attribution") \
            is None, "attribution is off"
        run = {"apiVersion": "ferry.dev/v1alpha1", "kind": "ConnectorRun",
               "metadata": {"name": "seeded", "namespace": ns,
                            "annotations": {"ferry.dev/run-record": '{"phase":"Succeeded"}'}},
               "spec": {"connectorRef": {"name": "sales-exports"}}}
        out = c.kubectl("create", "-f", "-", stdin=json.dumps(run), user=EDITOR, check=False)
        assert out.returncode != 0 and RIGHTS in out.stderr and "run-record" in out.stderr, out.stderr
        del run["metadata"]["annotations"]
        c.kubectl("create", "-f", "-", stdin=json.dumps(run), user=EDITOR)
        # As the operator does when it admits a run.
        c.kubectl("patch", "connectorrun", "seeded", "-n", ns, "--type=merge",
                  "-p", '{"metadata": {"finalizers": ["ferry.dev/audit-trail"]}}')
        out = c.kubectl("patch", "connectorrun", "seeded", "-n", ns, "--type=json",
                        "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', user=EDITOR, check=False)
        assert out.returncode != 0 and RIGHTS in out.stderr and "finalizer" in out.stderr, out.stderr
        c.kubectl("annotate", "connectorrun", "seeded", "-n", ns, "example.com/ticket=OPS-2", user=EDITOR)
    finally:
        c.stop()


# Last: it deletes the captured run.
def test_a_tenant_editor_cannot_remove_the_audit_finalizer(cluster: Cluster, finished: dict):
    """Attack: the editor removes `ferry.dev/audit-trail` so that a run goes
    without the operator's `run.deleted` line. Control: the editor deletes the
    run, which goes once the operator has audited it."""
    name = finished["name"]
    operator_running(cluster)  # it audits the deletion and lets the run go
    out = cluster.kubectl("patch", "connectorrun", name, "-n", NS, "--type=json",
                          "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', user=EDITOR, check=False)
    assert out.returncode != 0 and RIGHTS in out.stderr and "finalizer" in out.stderr, out.stderr
    cluster.kubectl("delete", "connectorrun", name, "-n", NS, "--wait=false", user=EDITOR)
    wait_for("the run to go", lambda: cluster.get(f"{RUN.format(ns=NS)}/{name}") is None, 60, context=cluster.logs)
    lines = [json.loads(line) for line in (cluster.dir / "operator-a.audit").read_text().splitlines()]
    assert [line["action"] for line in lines if line.get("run") == name].count("run.deleted") == 1
